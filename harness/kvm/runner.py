"""Run agent step lists and scenarios on a target; on the model target, evaluate them with the model."""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import HarnessError, InfrastructureError
from ..targets.base import Target
from . import bundle
from .caps import Capabilities
from .compare import Comparison, compare
from .fixes import lacks_fix_message, pinned_scenario_message
from .fixes import fix as fix_entry
from .model import Model, WarnSite
from .scenarios import Scenario
from .warns import MUST_NOT

log = logging.getLogger(__name__)

NO_PYTHON = "target has no python3: the agent needs it (install python3 on the target)"
MIN_PYTHON = (3, 9)
@dataclass
class AgentRun:
    """The parsed output of one agent process."""

    records: List[Dict[str, Any]]
    exit_status: int
    stderr: str
    duration_s: float
    timed_out: bool = False
    noise: List[str] = field(default_factory=list)

    def by_name(self, name: str) -> Optional[Dict[str, Any]]:
        return next((r for r in self.records if r.get("name") == name), None)

    @property
    def end(self) -> Optional[Dict[str, Any]]:
        return next((r for r in self.records if r.get("op") == "end"), None)

    @property
    def facts(self) -> Dict[str, Any]:
        return (self.by_name("agent") or {}).get("data") or {}


def parse_agent_output(stdout: str) -> tuple:
    """Split the agent's stdout into JSON records and other lines."""
    records, noise = [], []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            noise.append(line)
            continue
        (records if isinstance(value, dict) else noise).append(value if isinstance(value, dict) else line)
    return records, noise


class AgentRunner:
    """Copies the agent bundle to one target once and runs scenarios with it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.remote: Optional[str] = None

    def ensure_agent(self) -> str:
        if self.remote is not None:
            return self.remote
        check = "python3 -c 'import sys; sys.exit(0 if sys.version_info >= (%d, %d) else 3)'" % MIN_PYTHON
        result = self.target.run(check, timeout=60)
        if result.exit_status == 3:
            need = "%d.%d" % MIN_PYTHON
            raise InfrastructureError(f"python3 on {self.target.spec} is older than {need}: the agent needs {need}+")
        if result.exit_status != 0:
            raise InfrastructureError(NO_PYTHON, details=result.stderr)
        remote = bundle.remote_path()
        with tempfile.TemporaryDirectory(prefix="kvmh-agent-") as tmp:
            local = bundle.write_bundle(Path(tmp))
            self.target.put(local, remote, mode=0o644)
        self.remote = remote
        log.info("agent bundle %s copied to %s", remote, self.target.spec)
        return remote

    def run(self, doc: Dict[str, Any], timeout: float) -> AgentRun:
        remote = self.ensure_agent()
        payload = json.dumps(doc).encode()
        result = self.target.run(f"python3 {shlex.quote(remote)}", timeout=timeout, stdin=payload)
        records, noise = parse_agent_output(result.stdout)
        run = AgentRun(records, result.exit_status, result.stderr, result.duration_s, result.timed_out, noise)
        end = run.end
        if end is not None and end.get("exit") == 2:
            raise HarnessError(f"the agent rejected its input: {end.get('error')}")
        if end is None and not result.timed_out and not records:
            first = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise InfrastructureError(f"the agent on {self.target.spec} produced no records "
                                      f"(exit {result.exit_status}): {first}", details=result.stderr)
        return run


_RUNNERS: "weakref.WeakKeyDictionary[Target, AgentRunner]" = weakref.WeakKeyDictionary()


def agent_runner(target: Target) -> AgentRunner:
    """The target's AgentRunner (the bundle is copied once per target object)."""
    runner = _RUNNERS.get(target)
    if runner is None:
        runner = _RUNNERS[target] = AgentRunner(target)
    return runner


def is_model(target: Target) -> bool:
    return getattr(target, "kind", "") == "model"


def run_agent(target: Target, doc: Dict[str, Any], timeout: float = 300.0) -> AgentRun:
    """Run one step list with the agent (or the model, on the model target)."""
    if is_model(target):
        from .steps import normalise_steps

        steps = json.loads(json.dumps(doc["steps"]))
        normalise_steps(steps, set(), "")
        caps: Capabilities = target.caps  # type: ignore[attr-defined]
        records = [{"name": "agent", "op": "agent", "ret": 0, "errno": None,
                    "data": {"machine": caps.arch, "release": caps.kernel_release, "python": "model",
                             "kvm": caps.has_kvm, "pgste": "model"}}]
        records += Model(caps).simulate(steps)
        records.append({"name": "end", "op": "end", "ok": True, "exit": 0})
        return AgentRun(records, 0, "", 0.0)
    return agent_runner(target).run(doc, timeout)


# --- scenarios --------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """A scenario's run on one target, compared with the model, plus the kernel log it produced."""

    scenario: Scenario
    target: str
    caps: Capabilities
    run: AgentRun
    comparison: Comparison
    kernel_log: str = ""
    splats: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    model_result: bool = False
    warn_sites: List[WarnSite] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.comparison.ok and not self.splats

    def fix_lines(self) -> List[str]:
        """What a failure means for the upstream fix the scenario (or one of its steps) pins."""
        release = self.caps.kernel_release
        lines = []
        for pinned in self.comparison.pinned:
            symptom = pinned.symptom if pinned.succeeded else (
                f"{pinned.step} deviates from the behaviour the fix sets (observed {pinned.observed})")
            lines.append(lacks_fix_message(pinned.fix, release, symptom))
        if not lines and self.scenario.fix and not self.ok:
            lines.append(pinned_scenario_message(self.scenario.fix, release))
        return lines

    def warn_check(self) -> Optional[str]:
        """One line on the explicit protvirt WARN check: what the model allows, what the kernel log held."""
        checks = [r for r in self.run.records if r.get("op") == "kernel_log" and isinstance(r.get("data"), dict)
                  and "counts" in r["data"]]
        if not checks:
            return None
        seen = {message: n for r in checks for message, n in r["data"]["counts"].items() if n}
        must_not = list(dict.fromkeys(f"{s.function} at {s.step}" for s in self.warn_sites
                                      if s.verdict == MUST_NOT))
        sites = ", ".join(must_not) if must_not else "no WARN site reached"
        found = ", ".join(f"{m!r} x{n}" for m, n in sorted(seen.items())) if seen else "none"
        source = "model result" if self.model_result else "kernel log"
        return f"protvirt destroy WARNs ({source}): found {found}; must not fire at: {sites}"

    def report(self) -> str:
        label = " (reference model, not a kernel)" if self.model_result else ""
        lines = [f"scenario {self.scenario.name} on {self.target}{label}: {self.caps.summary()}"]
        lines.extend(self.fix_lines())
        if self.scenario.fix and self.ok:
            lines.append(f"pins {fix_entry(self.scenario.fix).describe()}")
        warn = self.warn_check()
        if warn is not None:
            lines.append(warn)
        if self.comparison.alternatives > 1:
            lines.append(f"model allows {self.comparison.alternatives} outcomes (thread orders); closest shown")
        lines.append(self.comparison.table())
        if self.splats:
            lines.append("kernel log splats during the scenario:")
            lines.extend("  " + s for s in self.splats)
        for note in self.notes:
            lines.append("note: " + note)
        if self.run.timed_out:
            lines.append("the agent command itself timed out on the target")
        if self.run.stderr.strip():
            lines.append("agent stderr: " + self.run.stderr.strip()[-800:])
        return "\n".join(lines)

    def assert_ok(self) -> None:
        if not self.ok:
            raise AssertionError(self.report())


def find_kernel_splats(text: str) -> List[str]:
    """Splats in a kernel log excerpt, one line each: kind, first line, fingerprint."""
    from ..results.splats import find_splats

    return [f"{s.kind}: {s.first_line} [{s.fingerprint}]" for s in find_splats(text)]


def run_scenario(target: Target, scenario: Scenario, caps: Capabilities, *,
                 check_kernel_log: bool = True) -> ScenarioResult:
    """Run ``scenario`` on ``target`` and compare every step with the model for ``caps``.

    With ``check_kernel_log`` a splat printed while it ran fails the result; the pytest plugin's
    per-test kernel log window does that for the shipped suites, which pass False to read the log once.
    """
    steps = scenario.normalised_steps()
    model = Model(caps)
    alternatives = model.expect(steps)
    model_target = is_model(target)
    cursor = None
    if check_kernel_log and not model_target:
        try:
            cursor = target.dmesg_cursor()
        except HarnessError as err:
            log.warning("no kernel log cursor on %s: %s", target.spec, err)
    run = run_agent(target, scenario.document(), timeout=scenario.timeout_s + 60)
    comparison = compare(alternatives, run.records)
    result = ScenarioResult(scenario, target.spec, caps, run, comparison, model_result=model_target,
                            warn_sites=model.warn_sites(steps))
    if cursor is not None:
        try:
            result.kernel_log = target.dmesg_since(cursor)
            result.splats = find_kernel_splats(result.kernel_log)
        except HarnessError as err:
            result.notes.append(f"kernel log unreadable: {err}")
    for note in scenario.notes(run.records):
        result.notes.append(note)
    return result
