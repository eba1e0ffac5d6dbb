"""Run built KVM selftest programs on a target: deploy, time out, capture output and dmesg, parse.

Each program runs as ``cd DIR && exec ./PROG 2>&1`` (line-buffered through ``stdbuf`` when the
target has it, so a program killed at its timeout still shows its last lines), with the suite's
``settings`` timeout times a factor: 1 on real hardware and KVM, ``TCG_TIMEOUT_FACTOR`` under
QEMU TCG. Its kernel log window (``dmesg_cursor``/``dmesg_since``) is kept with the result.

Programs are copied into the target's private working directory (``target.workdir()``: made with
``mktemp -d``, mode 0700, owner checked, removed when the target closes), never into a shared path,
and the build's cache entry is held for the run so a concurrent prune cannot remove it.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import HarnessError
from ..targets.base import CommandResult, Target
from .build import SelftestBuild, hold_build
from .ktap import Outcome, TestResult
from .verdict import program_result

log = logging.getLogger(__name__)

REMOTE_SUBDIR = "selftests"
"""Where the programs go, relative to the target's private working directory."""
TIMEOUT_MARK = "kvmh-supervisor: timeout after"
KILL_GRACE_S = 30.0
"""Extra seconds the target's own timeout allows on top of the supervisor's."""

# Runs a program in a new session, enforces its timeout, and afterwards kills whatever is left of
# the session: kselftest_harness moves each test into its own process group (setpgrp), so killing
# the program's process group would leave a test child spinning in KVM_RUN forever.
_SUPERVISOR = r"""
import os, signal, sys, time
limit = float(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(1, 2)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as err:
        sys.stdout.write('kvmh-supervisor: cannot run %s: %s\n' % (sys.argv[2], err))
        sys.stdout.flush()
        os._exit(127)
def sweep():
    for name in os.listdir('/proc'):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pid:
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
deadline = time.monotonic() + limit
status = None
while status is None:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
    elif time.monotonic() > deadline:
        sweep()
        os.waitpid(pid, 0)
        sweep()
        sys.stdout.write('\nkvmh-supervisor: timeout after %g s\n' % limit)
        sys.stdout.flush()
        os._exit(124)
    else:
        time.sleep(0.05)
sweep()
if os.WIFSIGNALED(status):
    os._exit(128 + os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status))
"""
TCG_TIMEOUT_FACTOR = 4.0
HARNESS_SKIP_PREFIX = "not run by the harness: "


@dataclass
class RunOptions:
    """How to run the programs of a build."""

    timeout_factor: Optional[float] = None
    """Multiplies the suite's timeout; None picks 1, or TCG_TIMEOUT_FACTOR on a TCG target."""
    budget_s: Optional[float] = None
    """Total seconds for all programs; once used up, the remaining ones are skipped (a started one runs on)."""
    include: Sequence[str] = ()
    """Glob patterns of program names to run (all when empty)."""
    exclude: Sequence[str] = ()
    """Glob patterns of program names never to run."""
    remote_dir: Optional[str] = None
    """Directory on the target for the programs; None (the default): the target's private working directory."""
    capture_dmesg: bool = True


@dataclass
class ProgramRun:
    """One program's run: the parsed result and the raw evidence."""

    program: str
    result: TestResult
    timeout_s: float
    duration_s: float = 0.0
    exit_status: Optional[int] = None
    output: str = ""
    dmesg: str = ""
    harness_skip: bool = False
    command: str = ""

    @property
    def outcome(self) -> Outcome:
        return self.result.outcome


def _strip_timeout_mark(output: str, exit_status: int) -> tuple[str, bool]:
    """Remove the supervisor's timeout line; True when it timed the program out."""
    if exit_status != 124:
        return output, False
    head, sep, _ = output.rpartition("\n" + TIMEOUT_MARK)
    if not sep:
        return output, False
    return head + "\n", True


def select_programs(programs: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Programs matching any ``include`` glob (all when none) and no ``exclude`` glob, in build order.

    A pattern matches the full name (``s390x/memop``) or its base name (``memop``).
    """

    def matches(name: str, patterns: Sequence[str]) -> bool:
        base = posixpath.basename(name)
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in patterns)

    return [p for p in programs if (not include or matches(p, include)) and not matches(p, exclude)]


def is_tcg(target: Target) -> bool:
    """Whether the target's CPU is emulated by QEMU TCG (its facts say so)."""
    try:
        accel = target.facts().accelerator
    except HarnessError as err:
        log.warning("cannot read the facts of %s: %s", target.spec, err)
        return False
    return "tcg" in (accel or "").lower()


def default_timeout_factor(target: Target) -> float:
    return TCG_TIMEOUT_FACTOR if is_tcg(target) else 1.0


class SelftestRunner:
    """Runs the programs of one build on one started target."""

    def __init__(self, target: Target, build: SelftestBuild, options: Optional[RunOptions] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.build = build
        self.options = options or RunOptions()
        self._clock = clock
        self._factor: Optional[float] = self.options.timeout_factor
        self._deployed: set[str] = set()
        self._prepared = False
        self._stdbuf = False
        self._python = False
        self._root: Optional[str] = None
        self.spent_s = 0.0
        if build.out_dir.is_dir():
            hold_build(build)

    # -- placement -----------------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return self.target.kind == "local"

    @property
    def root(self) -> str:
        """Directory on the target the program names are relative to."""
        if self.local:
            return str(self.build.out_dir)
        if self._root is None:
            if self.options.remote_dir:
                base = self.options.remote_dir
            else:
                workdir = getattr(self.target, "workdir", None)
                # A target without one gets a relative path: its own working directory, never /tmp.
                base = posixpath.join(workdir(), REMOTE_SUBDIR) if callable(workdir) else REMOTE_SUBDIR
            self._root = posixpath.join(base, self.build.key)
        return self._root

    def _prepare(self) -> None:
        if self._prepared:
            return
        self._stdbuf = self.target.has_command("stdbuf")
        if not self._stdbuf:
            log.info("%s has no stdbuf: a killed program may lose its buffered output", self.target.spec)
        self._python = self.target.has_command("python3")
        if not self._python:
            log.warning("%s has no python3: a timed-out selftest's forked children may outlive it",
                        self.target.spec)
        self._prepared = True

    def deploy(self, program: str) -> None:
        """Copy one program to the target (once); the local target runs the build in place."""
        if self.local or program in self._deployed:
            return
        remote = posixpath.join(self.root, program)
        self.target.put(self.build.path(program), remote, mode=0o755)
        self._deployed.add(program)

    # -- timing --------------------------------------------------------------------------------
    @property
    def timeout_factor(self) -> float:
        if self._factor is None:
            self._factor = default_timeout_factor(self.target)
            log.info("selftest timeout factor on %s: %g", self.target.spec, self._factor)
        return self._factor

    def program_timeout(self) -> float:
        return self.build.timeout_s * self.timeout_factor

    def budget_left(self) -> Optional[float]:
        if self.options.budget_s is None:
            return None
        return self.options.budget_s - self.spent_s

    # -- running -------------------------------------------------------------------------------
    def command_for(self, program: str, timeout: float) -> str:
        """The shell command running one program (under the supervisor when the target has python3)."""
        prefix = "stdbuf -oL -eL " if self._stdbuf else ""
        if self._python:
            prefix = f"python3 -c {shlex.quote(_SUPERVISOR)} {timeout:g} {prefix}"
        return f"cd {shlex.quote(self.root)} && exec {prefix}./{shlex.quote(program)} 2>&1"

    def skipped(self, program: str, why: str) -> ProgramRun:
        """A result for a program the harness did not run (budget used up)."""
        result = TestResult(name=program, number=None, outcome=Outcome.SKIP, reason=HARNESS_SKIP_PREFIX + why)
        return ProgramRun(program=program, result=result, timeout_s=0.0, harness_skip=True)

    def run(self, program: str) -> ProgramRun:
        """Run one program and return its parsed result (a timeout is a result, not an exception)."""
        if program not in self.build.programs:
            raise KeyError(f"{program} is not a program of this build")
        left = self.budget_left()
        if left is not None and left <= 0:
            return self.skipped(program, f"the selftest budget of {self.options.budget_s:g} s is used up")
        self._prepare()
        self.deploy(program)
        timeout = self.program_timeout()
        read_log = self.options.capture_dmesg and self.target.kind != "model"
        cursor = self._cursor() if read_log else None
        command = self.command_for(program, timeout)
        started = self._clock()
        res: CommandResult = self.target.run(command, timeout=timeout + KILL_GRACE_S if self._python else timeout)
        duration = self._clock() - started
        self.spent_s += duration
        dmesg = self._since(cursor) if cursor is not None else ""
        output = res.stdout + (("\n" + res.stderr) if res.stderr.strip() else "")
        output, supervised_timeout = _strip_timeout_mark(output, res.exit_status)
        timed_out = res.timed_out or supervised_timeout
        status = None if timed_out else res.exit_status
        result = program_result(program, output, status, timed_out=timed_out)
        if timed_out:
            rest = result.reason[len("timed out"):] if result.reason.startswith("timed out") else "; " + result.reason
            result.reason = f"timeout after {timeout:g} s{rest}"
        log.info("%s: %s in %.1f s", program, result.outcome.value, duration)
        return ProgramRun(program=program, result=result, timeout_s=timeout, duration_s=duration,
                          exit_status=status, output=output, dmesg=dmesg, command=command)

    def run_all(self, programs: Optional[Sequence[str]] = None) -> list[ProgramRun]:
        """Run the selected programs in order, honouring the budget."""
        names = programs if programs is not None else select_programs(
            self.build.programs, self.options.include, self.options.exclude)
        return [self.run(name) for name in names]

    def _cursor(self) -> Optional[int]:
        try:
            return self.target.dmesg_cursor()
        except HarnessError as err:
            log.warning("no kernel log cursor on %s: %s", self.target.spec, err)
            return None

    def _since(self, cursor: int) -> str:
        try:
            return self.target.dmesg_since(cursor)
        except HarnessError as err:
            log.warning("cannot read the kernel log on %s: %s", self.target.spec, err)
            return ""


@dataclass
class RunSummary:
    """Counts per outcome over a set of runs, and the wall time."""

    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    @classmethod
    def of(cls, runs: Sequence[ProgramRun]) -> "RunSummary":
        counts: dict[str, int] = {}
        for run in runs:
            key = "harness-skip" if run.harness_skip else run.outcome.value
            counts[key] = counts.get(key, 0) + 1
        return cls(counts=counts, duration_s=sum(r.duration_s for r in runs))

    def line(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{parts} in {self.duration_s:.1f} s"
