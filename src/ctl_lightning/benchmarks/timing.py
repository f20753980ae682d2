"""Repeated timing: the median of several runs, with their spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Seconds per call of ``fn``: median, min, max and relative spread ((max - min) / median)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    median = statistics.median(runs)
    return {"median_s": median, "min_s": min(runs), "max_s": max(runs), "spread": (max(runs) - min(runs)) / median, "repeats": repeats}


def rate(items: float, timing: dict) -> dict:
    """Items per second at the median, with the range given by the fastest and slowest runs."""
    return {"per_s": items / timing["median_s"], "per_s_range": [items / timing["max_s"], items / timing["min_s"]], **timing}
