"""Booting the installed kernel: kexec/zipl commands, waiting for the host, checking what came back."""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path
from typing import Optional

from ..errors import HarnessError, InfrastructureError
from ..targets.base import Target
from ..transport.cmdshell import ENV_MARK
from ..transport.session import SESSION_ENV
from .probe import HostProbe
from .shell import HostShell

log = logging.getLogger(__name__)

TOKEN_PARAM = "kvmh.boot"
# Parameters of the running command line that must not be carried over to the new kernel.
_DROPPED = ("BOOT_IMAGE=", "initrd=", f"{TOKEN_PARAM}=")
# How long a host may keep answering with its old boot id before the boot is declared failed.
# One kernel parameter: runs of non-blanks where double-quoted parts may hold blanks (the kernel's rule).
_PARAM = re.compile(r'(?:[^\s"]+|"[^"]*")+')
SAME_BOOT_GRACE_S = {"kexec-e": 90.0, "systemctl": 240.0, "reboot": 600.0}
FIRST_WAIT_S = 2.0  # let the old kernel go down before the first reconnect attempt
POLL_S = 3.0  # between checks while the old kernel still answers
_BANNER = re.compile(rb"(\d+\.\d+(?:\.\d+)?[^\s\x00()]*) \([^()\x00\s]*@[^()\x00]*\)[^\x00\n]*?(#\d+[^\x00\n]*)")


def compose_cmdline(base: str, token: str, extra: str = "") -> str:
    """``base`` without BOOT_IMAGE/initrd/old tokens, plus ``extra`` and ``kvmh.boot=<token>``."""
    words = [w for w in _PARAM.findall(base) if not w.startswith(_DROPPED)]
    if extra.strip():
        words.append(extra.strip())
    words.append(f"{TOKEN_PARAM}={token}")
    return " ".join(words)


def image_uts_version(image: Path) -> Optional[str]:
    """The ``#<n> SMP ...`` part (``uname -v``) of the version banner stored in a kernel image."""
    data = Path(image).read_bytes()
    match = _BANNER.search(data)
    return match.group(2).decode("ascii", "replace").strip() if match else None


def kexec_load_command(image: str, initrd: Optional[str], cmdline: str) -> str:
    parts = ["kexec", "-l", shlex.quote(image)]
    if initrd:
        parts.append(shlex.quote(f"--initrd={initrd}"))
    parts.append(shlex.quote(f"--command-line={cmdline}"))
    return " ".join(parts)


def detached(command: str, probe: HostProbe) -> str:
    """Run ``command`` one second from now in its own session, so the SSH command returns first.

    It drops the SSH session's environment marks: it must outlive the session, whose keeper ends
    every process carrying them when the connection closes.
    """
    inner = shlex.quote(f"sleep 1; {command}")
    launcher = "setsid" if probe.has("setsid") else "nohup"
    return f"(env -u {SESSION_ENV} -u {ENV_MARK} {launcher} sh -c {inner} </dev/null >/dev/null 2>&1 &)"


def kexec_exec_command(probe: HostProbe) -> tuple[str, str]:
    """(command, style): ``systemctl kexec`` under systemd (clean shutdown), else ``sync; kexec -e``."""
    if probe.systemd and probe.has("systemctl"):
        return detached("systemctl kexec", probe), "systemctl"
    return detached("sync; kexec -e", probe), "kexec-e"


def reboot_command(probe: HostProbe) -> str:
    return detached("systemctl reboot" if probe.systemd and probe.has("systemctl") else "sync; reboot", probe)


def read_boot_state(target: Target) -> tuple[str, str, str, str]:
    """(release, uts version, cmdline, boot id) of the running kernel."""
    result = target.run("uname -r; uname -v; cat /proc/cmdline; cat /proc/sys/kernel/random/boot_id", timeout=60)
    lines = result.stdout.splitlines() + ["", "", "", ""]
    return lines[0].strip(), lines[1].strip(), lines[2].strip(), lines[3].strip()


def wait_for_new_boot(target: Target, old_boot_id: str, deadline: float, style: str) -> None:
    """Reconnect until the host answers with a new boot id; raise InfrastructureError at the deadline.

    ``target`` must offer ``reconnect(deadline)`` (SshHostTarget does). A host that keeps answering
    with the old boot id for longer than the grace of ``style`` did not reboot at all.
    """
    reconnect = getattr(target, "reconnect", None)
    if reconnect is None:
        raise InfrastructureError(f"{target.spec} cannot reconnect after a reboot: use an ssh:// target")
    grace_end = time.monotonic() + SAME_BOOT_GRACE_S.get(style, 120.0)
    time.sleep(FIRST_WAIT_S)
    last_error = "no answer"
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise _NotBack(last_error)
        try:
            reconnect(deadline)
            boot_id = read_boot_state(target)[3]
        except HarnessError as err:
            last_error = str(err)
            if time.monotonic() >= deadline:
                raise _NotBack(last_error) from None
            continue
        if boot_id and boot_id != old_boot_id:
            return
        if time.monotonic() >= grace_end:
            raise _SameBoot(f"{target.spec} still runs the old kernel (boot id unchanged) "
                            f"{SAME_BOOT_GRACE_S.get(style, 120.0):.0f} s after the reboot was started")
        log.debug("%s still answers with the old boot id; waiting", target.spec)
        time.sleep(POLL_S)


class _NotBack(InfrastructureError):
    """The host did not answer SSH by the deadline."""


class _SameBoot(InfrastructureError):
    """The host answers but never rebooted."""


def start_boot(shell: HostShell, probe: HostProbe, method: str) -> str:
    """Start the switch to the installed kernel; return the style used for waiting."""
    if method == "kexec":
        command, style = kexec_exec_command(probe)
    else:
        command, style = reboot_command(probe), "reboot"
    shell.check(command, "starting the reboot")
    log.info("%s: reboot started (%s)", shell.target.spec, style)
    return style
