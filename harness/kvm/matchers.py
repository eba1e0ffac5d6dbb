"""Matchers for values the model cannot pin down exactly: any value, a file descriptor, one of several."""

from __future__ import annotations

from typing import Any, Tuple


class _Any:
    """Matches every value (the model cannot predict it)."""

    def __repr__(self) -> str:
        return "*"

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def to_json(self) -> str:
        return "*"


class _Fd:
    """Matches a non-negative int (a file descriptor)."""

    def __repr__(self) -> str:
        return "fd"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and not isinstance(other, bool) and other >= 0

    def __hash__(self) -> int:
        return 1

    def to_json(self) -> str:
        return "fd"


class OneOf:
    """Matches a value that matches any of the alternatives (a race or a timing the model cannot decide)."""

    def __init__(self, *alternatives: Any) -> None:
        if not alternatives:
            raise ValueError("OneOf needs at least one alternative")
        self.alternatives: Tuple[Any, ...] = alternatives

    def __repr__(self) -> str:
        return " | ".join(repr(a) for a in self.alternatives)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OneOf) and self.alternatives == other.alternatives

    def __hash__(self) -> int:
        return hash(repr(self))


ANY: Any = _Any()
FD: Any = _Fd()


def matches(expected: Any, observed: Any) -> bool:
    """Compare one field; dict expectations match a subset of the observed dict's keys."""
    if expected is ANY:
        return True
    if expected is FD:
        return FD == observed
    if isinstance(expected, OneOf):
        return any(matches(alt, observed) for alt in expected.alternatives)
    if isinstance(expected, dict):
        if not isinstance(observed, dict):
            return False
        return all(k in observed and matches(v, observed[k]) for k, v in expected.items())
    return expected == observed
