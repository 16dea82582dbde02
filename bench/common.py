"""Helpers shared by the benchmarks: medians over repeated runs and the result-row shape."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def row(name: str, value: float, unit: str, *, baseline_name: str | None = None,
        baseline_value: float | None = None, notes: str = "") -> dict[str, Any]:
    """One line of the results table; ratio = value / baseline (same unit, same run)."""
    ratio = None
    if baseline_value not in (None, 0) and value is not None:
        ratio = round(float(value) / float(baseline_value), 3)  # type: ignore[arg-type]
    return {"name": name, "value": value, "unit": unit, "baseline_name": baseline_name,
            "baseline_value": baseline_value, "ratio": ratio, "notes": notes}


def median_of(fn: Callable[[], float], runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls of fn."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def python_seconds(code: str, *, cwd: str | None = None) -> float:
    """Wall time of a fresh interpreter running `code` (what a cold start pays)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=cwd, capture_output=True)
    return time.perf_counter() - start
