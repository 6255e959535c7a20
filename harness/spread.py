"""Median and min-max of repeated measurements: how a benchmark ratio and `slim eval`'s student-vs-teacher speedups
are reported, so a number always comes with the rounds' spread it was taken from."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median and min-max of repeated measurements (seconds, or a ratio)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def relative_spread(self) -> float:
        """(max - min) / median: 0.1 means the rounds lie within 10% of the median's size."""
        return (max(self.values) - min(self.values)) / self.median

    def summary(self, digits: int = 4) -> dict[str, float | int]:
        return {"median": round(self.median, digits), "min": round(min(self.values), digits),
                "max": round(max(self.values), digits), "rounds": len(self.values)}

    def contains(self, value: float) -> bool:
        return min(self.values) <= value <= max(self.values)
