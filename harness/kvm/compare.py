"""Compare the records a target produced with the model's expectation; render deviations side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .matchers import ANY, FD, OneOf, matches

COMPARED = ("ret", "errno", "rc", "rrc", "data", "error", "timed_out")
META_OPS = ("agent", "end")


@dataclass(frozen=True)
class Deviation:
    """One field of one step that differs from the model."""

    step: str
    field: str
    expected: Any
    observed: Any


@dataclass
class Row:
    """One step in the side-by-side table."""

    name: str
    op: str
    where: str
    expected: str
    observed: str
    fields: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class PinnedDeviation:
    """A deviation at a step whose expectation comes from an upstream fix."""

    step: str
    fix: str
    symptom: str
    observed: str
    succeeded: bool  # the observed call returned success (the behaviour the fix forbids)


@dataclass
class Comparison:
    """The outcome of comparing one run with the best-matching model alternative."""

    rows: List[Row]
    deviations: List[Deviation]
    alternatives: int = 1
    pinned: List[PinnedDeviation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.deviations

    def table(self) -> str:
        headers = ("step", "op", "expected (model)", "observed (target)", "")
        body = [(r.name + (f" [{r.where}]" if r.where else ""), r.op, r.expected, r.observed,
                 ("<-- " + ", ".join(r.fields)) if r.fields else "") for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths[:4]))
        for row in body:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)


def _fmt(value: Any, hex_from: int = 1 << 16) -> str:
    if value is ANY:
        return "*"
    if value is FD:
        return "fd"
    if isinstance(value, OneOf):
        return " | ".join(_fmt(a) for a in value.alternatives)
    if isinstance(value, int) and not isinstance(value, bool) and value >= hex_from:
        return hex(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if len(value) <= 40 else value[:37] + "..."
    return json.dumps(value) if not isinstance(value, (int, float)) else str(value)


def summarize(record: Optional[Dict[str, Any]], keys: Optional[Dict[str, Any]] = None) -> str:
    """``ret=0 rc=0x1 rrc=0x2a`` / ``EINVAL rc=0xdead rrc=0xbeef`` / ``(no record)``."""
    if record is None:
        return "(no record)"
    if record.get("timed_out"):
        return "TIMED OUT"
    parts = []
    errno = record.get("errno")
    if record.get("error") is not None and record.get("error") is not ANY:
        parts.append("error: " + _fmt(record["error"]))
    elif record.get("error") is ANY:
        parts.append("error")
    elif errno is ANY and record.get("ret") is ANY:
        parts.append("*")
    elif errno is not None:
        parts.append(_fmt(errno))
    else:
        parts.append(f"ret={_fmt(record.get('ret'), 1 << 64)}")
    for key in ("rc", "rrc"):
        if key in record:
            parts.append(f"{key}={_fmt(record[key], 0)}")
    data = record.get("data")
    if data is not None:
        if keys is not None and isinstance(keys.get("data"), dict) and isinstance(data, dict):
            data = {k: data.get(k) for k in keys["data"]}
        if data is not ANY and (keys is None or keys.get("data") is not ANY):
            parts.append(_fmt(data))
    if record.get("optional"):
        parts.append("(may be absent)")
    return " ".join(parts)


def _where(record: Dict[str, Any]) -> str:
    return "/".join(str(record[k]) for k in ("proc", "thread") if record.get(k))


def compare_one(expected: Sequence[Dict[str, Any]], observed: Sequence[Dict[str, Any]]) -> Comparison:
    """Compare against one alternative."""
    seen = {r["name"]: r for r in observed if r.get("op") not in META_OPS}
    rows: List[Row] = []
    deviations: List[Deviation] = []
    pinned: List[PinnedDeviation] = []
    for exp in expected:
        obs = seen.pop(exp["name"], None)
        bad: List[str] = []
        if obs is None:
            if not exp.get("optional"):
                bad.append("missing")
                deviations.append(Deviation(exp["name"], "record", summarize(exp), None))
        else:
            for key in COMPARED:
                if key not in exp and key not in ("error", "timed_out"):
                    continue
                want = exp.get(key)
                got = obs.get(key)
                if key == "error" and want is ANY:
                    good = got is not None
                elif key == "error" or key == "timed_out":
                    good = (got is None) == (want is None)
                else:
                    good = matches(want, got)
                if not good:
                    bad.append(key)
                    deviations.append(Deviation(exp["name"], key, want, got))
        rows.append(Row(exp["name"], exp["op"], _where(exp), summarize(exp), summarize(obs, exp), bad))
        pin = exp.get("pin")
        if bad and isinstance(pin, dict):
            succeeded = obs is not None and obs.get("errno") is None and obs.get("error") is None
            pinned.append(PinnedDeviation(exp["name"], pin["fix"], pin["symptom"], summarize(obs, exp), succeeded))
    for name, obs in seen.items():
        deviations.append(Deviation(name, "record", None, summarize(obs)))
        rows.append(Row(name, obs.get("op", "?"), _where(obs), "(no record)", summarize(obs), ["unexpected"]))
    end = next((r for r in observed if r.get("op") == "end"), None)
    if end is None:
        deviations.append(Deviation("end", "record", "agent end record", None))
        rows.append(Row("end", "end", "", "ok", "(agent output ended early)", ["missing"]))
    elif not end.get("ok"):
        deviations.append(Deviation("end", "ok", True, end.get("error")))
        rows.append(Row("end", "end", "", "ok", f"failed: {end.get('error') or end.get('exit')}", ["ok"]))
    return Comparison(rows, deviations, pinned=pinned)


def compare(alternatives: Sequence[Sequence[Dict[str, Any]]], observed: Sequence[Dict[str, Any]]) -> Comparison:
    """Compare with every model alternative; return the best match (a pass if any alternative matches)."""
    best: Optional[Comparison] = None
    for expected in alternatives:
        result = compare_one(expected, observed)
        if best is None or len(result.deviations) < len(best.deviations):
            best = result
        if result.ok:
            break
    assert best is not None, "the model produced no alternative"
    best.alternatives = len(alternatives)
    return best
