"""A guest booted in QEMU: console on a pty, commands and files over SSH through a host port forward.

``QemuTarget(arch, options).start()`` builds (or finds) the guest image, picks KVM or TCG, starts
QEMU in its own session with ``-no-reboot`` (a panic ends QEMU), waits for the guest's
``KVMH-READY`` line while watching the console for panics and silence, and connects over SSH
with the image's pinned host key.  QEMU never outlives the harness: ``close()`` is registered
with ``atexit``, a SIGTERM handler kills it before the previous handler runs, and (when started
from the main thread) the kernel kills it if the Python process dies (``PR_SET_PDEATHSIG``).  Every
QEMU is also recorded in the cache (:mod:`harness.targets.qemu_registry`), so a QEMU that outlived a
killed harness anyway is ended when the next one starts.  Commands run in a private working directory
in the guest (``workdir()``), where relative paths of ``put``/``get`` land.

Why one module of this size: one job, the life of one local QEMU guest (start, accelerator fallback, wait,
guard, close, reaping after a killed run); its command line is ``qemu_argv.py``, its console ``transport/``.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from ..accel import AccelChoice, choose_accelerator
from ..arch import ArchSpec, get_arch
from ..errors import BootError, HarnessError, InfrastructureError, UsageError
from ..transport.console_shell import prepare_shell, run_command
from ..transport.console import Console, ConsoleClosed
from ..transport.panic import KernelPanic
from ..transport.ssh import SshClient, SshConnectionLost
from . import qemu_registry
from .base import CommandResult, OutputCallback, Target, TargetFacts
from .qemu_argv import qemu_argv
from .spec import TargetOptions

log = logging.getLogger(__name__)

READY = re.compile(r"KVMH-READY|KVMH-ERROR[^\r\n]*")
SHELL_PROMPT = "kvmh# "
# The first sign that the kernel runs (a timestamped printk line or the banner), or that KVM failed.
KERNEL_OUTPUT = re.compile(
    r"^\[\s*\d+\.\d+\]|Linux version|KVMH-READY|kvmh-init:|KVM internal error|kvm run failed", re.M
)
HOSTFWD_FAILED = "host forwarding rule"
DEFAULT_SILENCE_S = 60.0
DEFAULT_KVM_PROBE_S = 15.0
STOP_GRACE_S = 5.0

_live: "weakref.WeakSet[QemuTarget]" = weakref.WeakSet()
_handlers_installed = False


class QemuTarget(Target):
    """A QEMU guest of ``arch`` (``s390x`` or ``x86_64``) configured by ``options``.

    ``image`` skips building (a prepared ``guest_images.GuestImage``); ``silence_timeout`` is how
    long the booting guest may print nothing; ``kvm_probe_timeout`` is how long KVM gets to show
    kernel output before the harness falls back to TCG (``accel="auto"`` only).
    """

    kind = "qemu"

    def __init__(
        self,
        arch: str,
        options: Optional[TargetOptions] = None,
        *,
        image: Any = None,
        silence_timeout: float = DEFAULT_SILENCE_S,
        kvm_probe_timeout: float = DEFAULT_KVM_PROBE_S,
    ) -> None:
        self.arch_spec: ArchSpec = get_arch(arch)
        self.arch = self.arch_spec.name
        self.spec = f"qemu:{self.arch}"
        self.options = options or TargetOptions()
        self.image = image
        self.silence_timeout = silence_timeout
        self.kvm_probe_timeout = kvm_probe_timeout
        self.accelerator = ""
        self.accelerator_note = ""
        self.port = 0
        self.argv: list[str] = []
        self.artifacts_dir: Optional[Path] = None
        self.console: Optional[Console] = None
        self.ssh: Optional[SshClient] = None
        self.timings: dict[str, float] = {}
        self._qemu_version = ""
        self._shell_ready = False
        self._shell_lock = threading.Lock()
        self._closed = False
        self._registration: Optional[qemu_registry.Registration] = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the guest and connect over SSH; on any failure (or Ctrl-C) QEMU is stopped first."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        started = time.monotonic()
        binary = self._check_binary()
        self._check_kernel()
        if self.image is None:
            from guest_images import build_image

            self.image = build_image(self.arch, kernel=self.options.kernel, modules_dir=self.options.modules_dir)
        self.timings["image"] = time.monotonic() - started
        self.artifacts_dir = self._artifacts_dir()
        choice = choose_accelerator(self.options.accel, self.arch)
        log.info("%s: accelerator %s (%s)", self.spec, choice.name, choice.reason)
        boot_started = time.monotonic()
        deadline = boot_started + self.options.boot_timeout
        self._boot(binary, choice, deadline)
        self.timings["ready"] = time.monotonic() - boot_started
        self._connect(deadline)
        self.timings["ssh"] = time.monotonic() - boot_started
        log.info("%s up: SSH on 127.0.0.1:%d after %.1f s (%s); artifacts in %s", self.spec, self.port,
                 self.timings["ssh"], self.accelerator_description, self.artifacts_dir)

    def dry_run_command(self) -> str:
        """The QEMU command ``start()`` would run first (the image is built if needed; nothing boots)."""
        binary = self._check_binary()
        self._check_kernel()
        if self.image is None:
            from guest_images import build_image

            self.image = build_image(self.arch, kernel=self.options.kernel, modules_dir=self.options.modules_dir)
        choice = choose_accelerator(self.options.accel, self.arch)
        return shlex.join(self.qemu_argv(binary, choice.name, _free_port()))

    def close(self) -> None:
        """Disconnect and stop QEMU (SIGTERM, then SIGKILL of its process group); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.ssh is not None:
            self.ssh.close()
        if self.console is not None:
            self.console.terminate(STOP_GRACE_S)
            log.info("%s: QEMU (pid %s) stopped: %s", self.spec, self.console.pid, self.console.exit_description())
        self._unregister()
        _live.discard(self)

    # -- checks --------------------------------------------------------------------------------

    def _check_binary(self) -> str:
        binary = shutil.which(self.arch_spec.qemu_binary)
        if binary is None:
            raise InfrastructureError(
                f"{self.arch_spec.qemu_binary} not found: install the Debian package {self.arch_spec.qemu_package}"
            )
        return binary

    def _check_kernel(self) -> None:
        kernel = self.options.kernel
        if kernel is None:
            return
        from guest_images import kernel_arch_of, looks_like_kernel

        path = Path(kernel)
        if not path.exists():
            raise UsageError(f"kernel image {path} does not exist: pass the path of a built bzImage/image")
        if not looks_like_kernel(path, self.arch):
            other = kernel_arch_of(path)
            what = f"an {other} kernel" if other else "not a kernel image"
            raise UsageError(f"kernel image {path} is {what}, not a {self.arch} kernel: pass the {self.arch} "
                             f"image a kernel build leaves in {self.arch_spec.kernel_image}")

    def _artifacts_dir(self) -> Path:
        if self.options.artifacts_dir is not None:
            path = Path(self.options.artifacts_dir)
            path.mkdir(parents=True, exist_ok=True)
            return path
        return Path(tempfile.mkdtemp(prefix=f"kvmh-qemu-{self.arch}-"))

    # -- booting -------------------------------------------------------------------------------

    def qemu_argv(self, binary: str, accelerator: str, port: int) -> list[str]:
        """The QEMU command line for ``accelerator`` with SSH forwarded from 127.0.0.1:``port``."""
        return qemu_argv(self.arch_spec, binary=binary, accelerator=accelerator, kernel=self.image.kernel,
                         initrd=self.image.initrd, port=port, host_cpus=self.options.guest_cpus_of(os.cpu_count() or 1),
                         memory_mb=self.options.memory_mb, smp=self.options.smp,
                         extra_cmdline=self.options.extra_cmdline)

    def _boot(self, binary: str, choice: AccelChoice, deadline: float) -> None:
        """Start QEMU and wait for the guest's init; fall back from KVM, retry a port clash."""
        accelerator = choice.name
        for attempt in range(3):
            self._spawn(binary, accelerator, _free_port())
            try:
                if accelerator == "kvm" and choice.may_fall_back:
                    reason = self._probe_kvm()
                    if reason:
                        log.warning("%s: KVM cannot boot this guest (%s; last console lines: %s): falling back to TCG",
                                    self.spec, reason, self.console.tail() if self.console else "")
                        self._discard_console("kvm-attempt")
                        accelerator = "tcg"
                        self.accelerator_note = f"kvm fell back: {reason}"
                        self._spawn(binary, accelerator, _free_port())
                self._wait_ready(deadline)
                return
            except ConsoleClosed:
                text = "\n".join(self.console.last_lines(20)) if self.console else ""
                if HOSTFWD_FAILED not in text or attempt == 2:
                    raise
                log.info("port %d was taken before QEMU bound it; retrying with another", self.port)
                self._discard_console("port-clash")

    def _spawn(self, binary: str, accelerator: str, port: int) -> None:
        assert self.artifacts_dir is not None
        self.accelerator = accelerator
        self.port = port
        self.argv = self.qemu_argv(binary, accelerator, port)
        command = shlex.join(self.argv)
        (self.artifacts_dir / "qemu-cmdline.txt").write_text(command + "\n")
        log.info("starting QEMU: %s", command)
        for pid in qemu_registry.reap_leftovers():
            log.warning("ended QEMU pid %d that a killed harness left running", pid)
        token = qemu_registry.new_token()
        console = Console(self.argv, self.artifacts_dir / "console.log", name=f"{self.arch} guest",
                          process_label="QEMU", preexec_fn=_child_setup(os.getpid()),
                          env=dict(os.environ, **{qemu_registry.ENV: token}))
        self.console = console
        _register(self)
        console.start()
        assert console.pid is not None
        self._registration = qemu_registry.Registration(console.pid, token)
        (self.artifacts_dir / "qemu.pid").write_text(f"{console.pid}\n")

    def _unregister(self) -> None:
        if self._registration is not None:
            self._registration.release()
            self._registration = None

    def _probe_kvm(self) -> str:
        """Return why KVM cannot boot the guest ("" when the kernel prints under KVM)."""
        assert self.console is not None
        try:
            match = self.console.wait_for(KERNEL_OUTPUT, time.monotonic() + self.kvm_probe_timeout,
                                          what="kernel output under KVM")
        except KernelPanic:
            raise
        except ConsoleClosed:
            return f"QEMU exited ({self.console.exit_description()}) before kernel output"
        except BootError:
            return f"no console output in {self.kvm_probe_timeout:.0f} s"
        if "KVM internal error" in match.group(0) or "kvm run failed" in match.group(0):
            return "KVM internal error"
        return ""

    def _discard_console(self, suffix: str) -> None:
        if self.console is None:
            return
        self.console.terminate(STOP_GRACE_S)
        log_path = self.console.log_path
        if log_path.exists():
            log_path.rename(log_path.with_name(f"console-{suffix}.log"))
        cmdline = log_path.with_name("qemu-cmdline.txt")
        if cmdline.exists():
            cmdline.rename(log_path.with_name(f"qemu-cmdline-{suffix}.txt"))
        self._unregister()
        _live.discard(self)
        self.console = None

    def _wait_ready(self, deadline: float) -> None:
        assert self.console is not None
        match = self.console.wait_for(READY, deadline, what="KVMH-READY from the guest's init",
                                      silence=self.silence_timeout, panic_when="during boot")
        if match.group(0).startswith("KVMH-ERROR"):
            raise BootError(f"guest init failed: {match.group(0).strip()} (console log: {self.console.log_path})",
                            details="\n".join(self.console.last_lines(50)))

    def _connect(self, deadline: float) -> None:
        assert self.console is not None
        console = self.console
        self.ssh = SshClient(
            "127.0.0.1", self.port, "root",
            key_file=self.image.ssh_key,
            host_keys=[self.image.host_key_pub],
            liveness=lambda: console.alive() and not console.scanner.panicked,
        )
        self.ssh.connect(deadline, check=lambda: console.check("before SSH came up"),
                         context=lambda: f"last console lines: {console.tail()}")

    # -- commands ------------------------------------------------------------------------------

    def _require_up(self, what: str) -> tuple[SshClient, Console]:
        if self.ssh is None or self.console is None or self._closed:
            raise InfrastructureError(f"{self.spec} is not started: cannot run {what}")
        self.console.check(f"before {what}")
        return self.ssh, self.console

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        """Run an SSH action; when the guest died meanwhile, say so instead of a broken-pipe error."""
        ssh, console = self._require_up(what)
        try:
            return action()
        except (SshConnectionLost, InfrastructureError, OSError, EOFError) as err:
            console.wait_exit(3.0)
            try:
                console.check(f"during {what}")
            except HarnessError as died:
                raise type(died)(str(died), details=died.details) from err
            if isinstance(err, HarnessError):
                raise
            raise SshConnectionLost(f"SSH to {self.spec} failed during {what}: {err}") from err

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        return self._guard(f"command {command!r}",
                           lambda: self.ssh.run(command, timeout, stdin=stdin, on_output=on_output))

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        self._guard(f"copying {local} to {remote}", lambda: self.ssh.put(local, remote, mode))

    def get(self, remote: str, local: Path) -> None:
        self._guard(f"copying {remote} from the guest", lambda: self.ssh.get(remote, local))

    def workdir(self) -> str:
        """The private working directory of this connection in the guest."""
        return str(self._guard("making the working directory", lambda: self.ssh.workdir))

    def interact(self) -> None:
        """Attach the terminal to the guest's serial console until Ctrl-] (or the guest ends)."""
        from ..transport.interactive import attach

        if self.console is None:
            raise InfrastructureError(f"{self.spec} has no console: start it first")
        attach(self.console)

    def console_run(self, command: str, timeout: float = 60.0) -> CommandResult:
        """Run ``command`` on the serial console's root shell (stdout and stderr merged)."""
        _, console = self._require_up(f"console command {command!r}")
        with self._shell_lock:
            if not self._shell_ready:
                prepare_shell(console, SHELL_PROMPT, time.monotonic() + 60)
                self._shell_ready = True
        return run_command(console, command, timeout)

    # -- facts ---------------------------------------------------------------------------------

    @property
    def accelerator_description(self) -> str:
        """``kvm``, ``tcg``, or ``tcg (kvm fell back: ...)``."""
        if self.accelerator_note:
            return f"{self.accelerator} ({self.accelerator_note})"
        return self.accelerator

    def qemu_version(self) -> str:
        """QEMU's version as it reports it (``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)``)."""
        if not self._qemu_version:
            self._qemu_version = qemu_version(self.arch_spec.qemu_binary)
        return self._qemu_version

    def facts(self) -> TargetFacts:
        release = self.image.kernel_release if self.image is not None else ""
        if self.ssh is not None and not self._closed:
            try:
                release = self.run("uname -r", timeout=30).stdout.strip() or release
            except HarnessError as err:
                log.warning("cannot ask %s for its kernel release: %s", self.spec, err)
        extra = {"qemu_cpu": self.arch_spec.cpu(self.accelerator)} if self.accelerator else {}
        if self.artifacts_dir is not None:
            extra["console_log"] = str(self.artifacts_dir / "console.log")
        return TargetFacts(
            target=self.spec,
            kind=self.kind,
            arch=self.arch,
            kernel_release=release,
            accelerator=self.accelerator_description,
            qemu_version=self.qemu_version(),
            image_hash=getattr(self.image, "image_hash", ""),
            extra=extra,
        )


def qemu_version(binary: str) -> str:
    """Run ``binary --version`` and return the version text, or "" when it cannot run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"version\s+(.+)", out)
    return match.group(1).strip() if match else out.strip().splitlines()[0] if out.strip() else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_setup(parent: int) -> Optional[Callable[[], None]]:
    """A preexec function that makes the kernel SIGKILL QEMU when the harness dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only used when QEMU is
    started from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the harness died before prctl took effect
            os._exit(1)

    return setup


def _register(target: QemuTarget) -> None:
    _live.add(target)
    _install_handlers()


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return

    def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
        for target in list(_live):
            if target.console is not None:
                target.console.kill_now()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _close_all() -> None:
    for target in list(_live):
        try:
            target.close()
        except Exception:  # at exit, keep closing the others
            log.exception("closing %s at exit failed", target.spec)
