"""A guest's serial console: the process on a pty, its log, panic detection and a command protocol.

The console owns the process it reads (QEMU, spawned with pexpect in its own session).  A
reader thread drains the pty all the time, so the guest never blocks on a full console; every
byte goes to the log file as it arrives and every complete line goes through a
:class:`~harness.transport.panic.ConsoleScanner`, so a kernel panic is known the moment its line
is printed.  :meth:`Console.wait_for` waits for a pattern and fails fast on a panic, on the end
of the process, on silence and on its deadline.

:meth:`Console.run` runs a shell command on the console's shell.  Every line the command prints
goes through a shell ``read`` loop (``sed`` would hold back the last line) and gets a prefix with
a random token; the exit status follows an end marker.  Lines without the prefix are the shell's
echo and prompts or kernel messages printed while the command ran, and are left out of the
result.  The token is passed in a shell variable, so the echo of the typed line never contains a
marker.

Why one module of this size: the console process and its expect stream share one reader thread and buffer;
the shell protocol on top is ``console_shell.py``.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import select
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pexpect

from ..errors import BootError, InfrastructureError
from .panic import ConsoleScanner, seconds, summarize

log = logging.getLogger(__name__)

Pattern = Union[str, "re.Pattern[str]"]
LineListener = Callable[[str], None]

# How long to keep collecting a panic's lines (up to its "end Kernel panic" line) before failing.
PANIC_SETTLE_S = 3.0
# Keep at most this much console text in memory behind the read position.
_KEEP_CHARS = 1 << 20


def _exited(pid: int) -> bool:
    """True once our child ``pid`` has ended; it is left unreaped (``WNOWAIT``)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


class ConsoleClosed(InfrastructureError):
    """The process behind the console ended."""


class Console:
    """Spawn ``argv`` on a pty and follow its output; see the module docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        name: str = "guest",
        process_label: str = "",
        env: Optional[dict[str, str]] = None,
        preexec_fn: Optional[Callable[[], None]] = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.name = name
        self.process_label = process_label or os.path.basename(self.argv[0] if self.argv else name)
        self._env = env
        self._preexec_fn = preexec_fn
        self.scanner = ConsoleScanner()
        self._child: Optional[pexpect.spawn] = None
        self._cond = threading.Condition()
        self._proc_lock = threading.Lock()
        self.command_lock = threading.Lock()
        self._text = ""
        self._base = 0  # characters dropped from the front of _text
        self._cursor = 0
        self._partial = ""
        self._eof = False
        self._panic_at: Optional[float] = None
        self._listeners: list[LineListener] = []
        self._raw_listeners: list[Callable[[bytes], None]] = []
        self._reader: Optional[threading.Thread] = None
        self._log_file = None
        self.started_at = 0.0
        self.first_output_at: Optional[float] = None
        self.last_output_at = 0.0
        self._last_match_base = 0
        self._exit: Optional[tuple[Optional[int], Optional[int]]] = None

    # -- process -------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the process in its own session and start draining its output."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in terminate()
        self.started_at = self.last_output_at = time.monotonic()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns on every fork in a process with threads (the progress heartbeat, an SSH
                # transport). Between fork and exec the child runs only ``preexec_fn``, which must take no
                # lock (QEMU's calls prctl and getppid), so the deadlock warned of cannot happen here.
                warnings.filterwarnings("ignore", message=r".*use of forkpty\(\) may lead to deadlocks",
                                        category=DeprecationWarning)
                self._child = pexpect.spawn(
                    self.argv[0], self.argv[1:], env=self._env, echo=False, encoding=None,
                    preexec_fn=self._preexec_fn, dimensions=(50, 200),
                )
        except (pexpect.ExceptionPexpect, OSError) as err:
            self._log_file.close()
            raise InfrastructureError(f"cannot start {self.argv[0]}: {err}") from err
        log.debug("%s console: pid %d, log %s", self.name, self._child.pid, self.log_path)
        self._reader = threading.Thread(target=self._read_loop, name=f"console-{self.name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> Optional[int]:
        return self._child.pid if self._child is not None else None

    def alive(self) -> bool:
        """True while the process runs.

        Once it has ended, whatever is left of its process group is killed *before* it is reaped:
        until then its pid (the group's id) cannot be reused, so the signal reaches no stranger.
        """
        if self._child is None or self._exit is not None:
            return False
        with self._proc_lock:
            if self._exit is not None:
                return False
            if not _exited(self._child.pid):
                return True
            self._signal_group(signal.SIGKILL)
            self._child.isalive()  # reaps it
            self._record_exit()
            return False

    def exit_description(self) -> str:
        """``"status N"`` or ``"signal N (SIGX)"`` once the process ended, else ``"running"``."""
        if self.alive() or self._exit is None:
            return "running"
        status, sig = self._exit
        if sig is not None:
            try:
                return f"signal {sig} ({signal.Signals(sig).name})"
            except ValueError:
                return f"signal {sig}"
        return f"status {status}"

    def _record_exit(self) -> None:
        child = self._child
        if child is not None and self._exit is None:
            self._exit = (child.exitstatus, child.signalstatus)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to end; True when it has."""
        end = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)
        return True

    def terminate(self, grace: float = 5.0) -> None:
        """End the process group (SIGTERM, then SIGKILL after ``grace``), reap it, close the log."""
        child = self._child
        if child is not None:
            if self.alive():
                self._signal_group(signal.SIGTERM)
                if not self.wait_exit(grace):
                    log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", self.name, child.pid, grace)
                    self._signal_group(signal.SIGKILL)
                    self.wait_exit(10.0)
            if self._reader is not None:
                self._reader.join(timeout=5)
            with self._proc_lock:
                try:
                    child.close(force=True)
                except (pexpect.ExceptionPexpect, OSError):
                    pass
                self._record_exit()
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()

    def kill_now(self) -> None:
        """SIGKILL the process group at once (safe to call from a signal handler)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        """Signal the process group, only while its leader is unreaped (its pid cannot be reused)."""
        if self._child is None or self._exit is not None:
            return
        try:
            os.killpg(self._child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- output --------------------------------------------------------------------------------

    def add_listener(self, listener: LineListener) -> None:
        """Call ``listener(line)`` from the reader thread for every complete console line."""
        self._listeners.append(listener)

    def add_raw_listener(self, listener: Callable[[bytes], None]) -> None:
        """Call ``listener(data)`` from the reader thread with every chunk the console prints."""
        self._raw_listeners.append(listener)

    def remove_raw_listener(self, listener: Callable[[bytes], None]) -> None:
        if listener in self._raw_listeners:
            self._raw_listeners.remove(listener)

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes (keystrokes) to the console."""
        if self._child is None:
            raise ConsoleClosed(f"{self.name} console is not running")
        self._child.send(data)

    @property
    def closed(self) -> bool:
        return self._eof

    def _read_loop(self) -> None:
        assert self._child is not None
        fd = self._child.child_fd
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    continue
                data = os.read(fd, 65536)
            except (OSError, ValueError):
                data = b""
            if not data:
                break
            if self._log_file is not None and not self._log_file.closed:
                self._log_file.write(data)
                self._log_file.flush()
            for raw_listener in list(self._raw_listeners):
                raw_listener(data)
            self._take(decoder.decode(data))
        self._take(decoder.decode(b"", final=True), final=True)
        # The pty closes while the process exits; wait until it can be reaped so its status is known.
        self.wait_exit(5.0)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _take(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        lines: list[str] = []
        with self._cond:
            if text:
                self.last_output_at = now
                if self.first_output_at is None:
                    self.first_output_at = now
                self._text += text
                self._partial += text
            parts = self._partial.split("\n")
            self._partial = parts.pop()
            if final and self._partial:
                parts.append(self._partial)
                self._partial = ""
            lines = [part.rstrip("\r") for part in parts]
            for line in lines:
                if self.scanner.feed(line) == "panic" and self._panic_at is None:
                    self._panic_at = now
            if self._cursor > _KEEP_CHARS * 2:
                drop = self._cursor - _KEEP_CHARS
                self._text = self._text[drop:]
                self._cursor -= drop
                self._base += drop
            self._cond.notify_all()
        for line in lines:
            for listener in self._listeners:
                try:
                    listener(line)
                except Exception:  # a listener must not stop the reader
                    log.exception("console line listener failed")

    def last_lines(self, count: int = 20) -> list[str]:
        """The last ``count`` complete lines (plus the line being printed)."""
        with self._cond:
            lines = self.scanner.last_lines(count)
            if self._partial.strip():
                lines = (lines + [self._partial.rstrip("\r")])[-count:]
            return lines

    def tail(self, count: int = 3) -> str:
        """The last lines as one line for error messages."""
        return summarize(self.last_lines(max(count, 20)), count)

    @property
    def output_seen(self) -> bool:
        return self.first_output_at is not None

    # -- waiting -------------------------------------------------------------------------------

    def mark(self) -> int:
        """Return the position of the end of the output so far (for ``since`` and :meth:`text_since`)."""
        with self._cond:
            return self._base + len(self._text)

    def text_since(self, position: int, end: Optional[int] = None) -> str:
        """Return the console text from ``position`` (a :meth:`mark`) to ``end`` or the end."""
        with self._cond:
            start = max(0, position - self._base)
            stop = len(self._text) if end is None else max(start, end - self._base)
            return self._text[start:stop]

    def wait_for(
        self,
        pattern: Pattern,
        deadline: float,
        *,
        what: str = "",
        silence: Optional[float] = None,
        since: Optional[int] = None,
        panic_when: str = "",
    ) -> "re.Match[str]":
        """Wait until ``pattern`` appears on the console after the read position (or ``since``).

        ``deadline`` is a ``time.monotonic()`` value.  Raises :class:`KernelPanic` as soon as a
        panic is complete, :class:`ConsoleClosed` when the process ends, and :class:`BootError`
        when nothing is printed for ``silence`` seconds or the deadline passes.  On success the read
        position moves past the match.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        what = what or f"{regex.pattern!r} on the {self.name} console"
        called = time.monotonic()
        with self._cond:
            if since is not None:
                self._cursor = max(0, min(since - self._base, len(self._text)))
            while True:
                match = regex.search(self._text, self._cursor)
                if match:
                    self._cursor = match.end()
                    self._last_match_base = self._base
                    return match
                now = time.monotonic()
                self._raise_if_panicked(now, panic_when or f"while waiting for {what}")
                if self._eof:
                    if self.scanner.panicked:
                        raise self.scanner.panic_error(panic_when or f"while waiting for {what}", self.log_path)
                    seen = (f"last console lines: {summarize(self.scanner.last_lines(20))}" if self.output_seen
                            else "the guest printed nothing (is the kernel bootable on this machine?)")
                    raise ConsoleClosed(
                        f"{self.process_label} exited ({self._exit_text()}) before {what}; {seen}",
                        details="\n".join(self.scanner.last_lines(50)),
                    )
                if silence is not None and now - self.last_output_at >= silence:
                    raise BootError(self._silence_message(silence, what),
                                    details="\n".join(self.scanner.last_lines(50)))
                if now >= deadline:
                    raise BootError(
                        f"{what} not seen within {seconds(now - called)}; "
                        f"last console lines: {summarize(self.scanner.last_lines(20))}",
                        details="\n".join(self.scanner.last_lines(50)),
                    )
                self._cond.wait(min(0.25, max(0.01, deadline - now)))

    def _raise_if_panicked(self, now: float, when: str) -> None:
        if self._panic_at is None:
            return
        if self.scanner.panic_complete or self._eof or now - self._panic_at >= PANIC_SETTLE_S:
            raise self.scanner.panic_error(when, self.log_path)

    def _silence_message(self, silence: float, what: str) -> str:
        if self.first_output_at is None:
            return (f"guest printed nothing for {seconds(silence)} (waiting for {what}): "
                    f"the kernel did not start or has no console on this machine")
        return (f"guest printed nothing for {seconds(silence)} (waiting for {what}); "
                f"last console lines: {summarize(self.scanner.last_lines(20))}")

    def _exit_text(self) -> str:
        self.alive()
        return self.exit_description()

    def check(self, when: str) -> None:
        """Raise if the kernel panicked or the process ended (use between other operations)."""
        with self._cond:
            if self._panic_at is not None:
                raise self.scanner.panic_error(when, self.log_path)
        if not self.alive():
            raise ConsoleClosed(
                f"{self.process_label} exited ({self.exit_description()}) {when}; "
                f"last console lines: {self.tail()}",
                details="\n".join(self.last_lines(50)),
            )

    # -- input ---------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Type ``text`` on the console."""
        if self._child is None:
            raise ConsoleClosed(f"{self.name} console is not started")
        data = text.encode()
        # The SCLP console takes input in buffers of a few KiB: feed long input in pieces.
        for offset in range(0, len(data), 1024):
            self._child.send(data[offset:offset + 1024])
            if len(data) > 1024:
                time.sleep(0.05)

    def sendline(self, text: str) -> None:
        """Type ``text`` and Enter (carriage return, as a terminal sends it)."""
        self.send(text + "\r")


    def match_start(self, match: "re.Match[str]") -> int:
        """The position in the console's text where the last ``wait_for`` match begins."""
        return self._last_match_base + match.start()
