"""The machine the harness runs on, as a target: commands run as local processes.

Commands run in a private working directory (``mkdtemp``, mode 0700) made on first use and removed
at ``close()`` (or when the target is garbage collected): relative paths given to ``put``/``get``
name files there, as on remote targets.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Optional

from .base import CommandResult, OutputCallback, Target, TargetFacts

log = logging.getLogger(__name__)


class LocalTarget(Target):
    """Run commands on this machine, each in its own process group so a timeout kills all of it."""

    kind = "local"

    def __init__(self, spec: str = "local") -> None:
        self.spec = spec
        self.arch = platform.machine()
        self._started = False
        self._workdir: Optional[Path] = None
        self._cleanup: Optional[weakref.finalize] = None

    def start(self) -> None:
        self._started = True

    def workdir(self) -> str:
        """The private working directory of this target (made on first use)."""
        if self._workdir is None:
            path = Path(tempfile.mkdtemp(prefix="kvmh-local-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(path), True)
            self._workdir = path
        return str(self._workdir)

    def _path(self, remote: str) -> Path:
        return Path(self.workdir()) / remote

    def run(
        self,
        command: str,
        timeout: float = 60.0,
        *,
        stdin: Optional[bytes] = None,
        on_output: Optional[OutputCallback] = None,
    ) -> CommandResult:
        start = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=self.workdir(),
        )
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, "stdout", chunks["stdout"], on_output), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "stderr", chunks["stderr"], on_output), daemon=True),
        ]
        for reader in readers:
            reader.start()
        if stdin is not None and proc.stdin is not None:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:
            _kill_group(proc)
            raise
        for reader in readers:
            reader.join(timeout=5)
        return CommandResult(
            command=command,
            exit_status=proc.returncode if proc.returncode is not None else -9,
            stdout=b"".join(chunks["stdout"]).decode("utf-8", "replace"),
            stderr=b"".join(chunks["stderr"]).decode("utf-8", "replace"),
            duration_s=time.monotonic() - start,
            timed_out=timed_out,
        )

    def put(self, local: Path, remote: str, mode: Optional[int] = None) -> None:
        path = self._path(remote)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, path)
        if mode is not None:
            os.chmod(path, mode)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(self._path(remote), local)

    def close(self) -> None:
        self._started = False
        if self._cleanup is not None:
            self._cleanup()
        self._workdir = None
        self._cleanup = None

    def facts(self) -> TargetFacts:
        return TargetFacts(
            target=self.spec,
            kind=self.kind,
            arch=self.arch,
            kernel_release=platform.release(),
            accelerator="none (host kernel)",
        )


def _pump(stream: IO[bytes] | None, name: str, sink: list[bytes], on_output: Optional[OutputCallback]) -> None:
    if stream is None:
        return
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        sink.append(chunk)
        if on_output is not None:
            on_output(name, chunk.decode("utf-8", "replace"))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
