"""Summary statistics of repeated samples: median and spread, ignoring missing values."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Summary:
    """The median, extremes and count of the present values of one metric."""

    n: int
    median: Optional[float]
    low: Optional[float]
    high: Optional[float]
    missing: int = 0

    @property
    def spread(self) -> Optional[float]:
        """``high - low`` (None without values)."""
        return None if self.low is None or self.high is None else self.high - self.low

    def as_dict(self) -> dict:
        data = asdict(self)
        data["spread"] = self.spread
        return data


def _present(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def summarize(values: Iterable[object]) -> Summary:
    """Summarise ``values``; None, NaN and non-numbers count as missing."""
    items = list(values)
    numbers = [float(v) for v in items if _present(v)]  # type: ignore[arg-type]
    missing = len(items) - len(numbers)
    if not numbers:
        return Summary(0, None, None, None, missing)
    return Summary(len(numbers), statistics.median(numbers), min(numbers), max(numbers), missing)
