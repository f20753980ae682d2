"""Repeated timing: the median of several runs, with their spread. Benchmarks report it; `--index
auto` uses it to keep the faster engine of a catalog."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(runs: list[float]) -> dict:
    median = statistics.median(runs)
    return {"median_s": median, "min_s": min(runs), "max_s": max(runs), "spread": (max(runs) - min(runs)) / median, "repeats": len(runs)}


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Seconds per call of ``fn``: median, min, max and relative spread ((max - min) / median)."""
    for _ in range(warmup):
        fn()
    return _summary([_timed(fn) for _ in range(repeats)])


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """:func:`measure` for several functions whose runs alternate, in an order reversed each round.

    A ratio between two blocks of runs timed one after the other measures any change in the host's
    load between the blocks (on a shared 2-core host, other jobs come and go within a minute);
    alternating the runs exposes both functions to the same load. Each timing also holds its
    ``runs`` in order, so that a round's pair can be compared.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            runs[name].append(_timed(fns[name]))
    return {name: {**_summary(times), "runs": times} for name, times in runs.items()}


def rate(items: float, timing: dict) -> dict:
    """Items per second at the median, with the range given by the fastest and slowest runs."""
    return {"per_s": items / timing["median_s"], "per_s_range": [items / timing["max_s"], items / timing["min_s"]], **timing}
