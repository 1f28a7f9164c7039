"""Latency and throughput summaries shared by the load generators and the report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, mean and p50/p90/p99/max of latencies given in seconds, reported in ms."""
    values = sorted(seconds)
    out: dict[str, Any] = {"count": len(values)}
    if not values:
        out.update({"mean_ms": None, "max_ms": None})
        out.update({f"p{p}_ms": None for p in PERCENTILES})
        return out
    out["mean_ms"] = round(1000 * sum(values) / len(values), 4)
    for p in PERCENTILES:
        out[f"p{p}_ms"] = round(1000 * percentile(values, p), 4)
    out["max_ms"] = round(1000 * values[-1], 4)
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 4)
