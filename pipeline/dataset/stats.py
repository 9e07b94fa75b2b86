"""Mergeable per-column statistics: what a trainer normalises with.

Kept as sums (count, sum, sum of squares, min, max per column) so that the
dataset's statistics are updated by adding an episode's sums at commit and
subtracting them when an episode is excluded, never by re-reading every
episode (DESIGN: statistics are mergeable sums updated per commit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class KeyStats:
    """Running statistics of one array key, per column."""

    count: int
    total: list[float]
    total_sq: list[float]
    minimum: list[float]
    maximum: list[float]

    @classmethod
    def of(cls, values: np.ndarray) -> KeyStats:
        v = np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1)
        return cls(
            count=int(v.shape[0]),
            total=v.sum(axis=0).tolist(),
            total_sq=(v * v).sum(axis=0).tolist(),
            minimum=v.min(axis=0).tolist() if v.size else [],
            maximum=v.max(axis=0).tolist() if v.size else [],
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyStats:
        return cls(
            count=int(data["count"]),
            total=[float(x) for x in data["total"]],
            total_sq=[float(x) for x in data["total_sq"]],
            minimum=[float(x) for x in data["minimum"]],
            maximum=[float(x) for x in data["maximum"]],
        )

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every list (1.5 ms here, 6 ms per committed episode).
        return {"count": self.count, "total": self.total, "total_sq": self.total_sq, "minimum": self.minimum,
                "maximum": self.maximum}

    def merge(self, other: KeyStats) -> KeyStats:
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        return KeyStats(
            count=self.count + other.count,
            total=[a + b for a, b in zip(self.total, other.total)],
            total_sq=[a + b for a, b in zip(self.total_sq, other.total_sq)],
            minimum=[min(a, b) for a, b in zip(self.minimum, other.minimum)],
            maximum=[max(a, b) for a, b in zip(self.maximum, other.maximum)],
        )

    def without(self, other: KeyStats, minimum: list[float], maximum: list[float]) -> KeyStats:
        """These statistics with ``other``'s sums taken out.

        Extremes cannot be subtracted: the caller passes the extremes of what
        remains (from the index's per-episode columns).
        """
        count = self.count - other.count
        if count <= 0:
            return KeyStats(0, [0.0] * len(self.total), [0.0] * len(self.total), [], [])
        return KeyStats(
            count=count,
            total=[a - b for a, b in zip(self.total, other.total)],
            total_sq=[a - b for a, b in zip(self.total_sq, other.total_sq)],
            minimum=minimum,
            maximum=maximum,
        )

    def summary(self) -> dict[str, Any]:
        """mean, std, min, max per column and the count (what a trainer normalises with)."""
        n = max(self.count, 1)
        mean = [t / n for t in self.total]
        std = [math.sqrt(max(sq / n - m * m, 0.0)) for sq, m in zip(self.total_sq, mean)]
        return {"mean": mean, "std": std, "min": self.minimum, "max": self.maximum, "count": self.count}
