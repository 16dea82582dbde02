"""Reliability fixtures: local worlds on the session's Azurite, and the seed and fault rate to run with.

RELIABILITY_SEEDS (comma-separated integers) and RELIABILITY_FAULTS (a probability) override the
values kept in the repository, so the suite can be run with seeds and rates nobody has tried yet.
"""

from __future__ import annotations

import os

import pytest

DEFAULT_SEEDS = (11, 23)
DEFAULT_FAULT_RATE = 0.2


def seeds() -> list[int]:
    """The seeds to run: RELIABILITY_SEEDS, else the repository's defaults."""
    raw = os.environ.get("RELIABILITY_SEEDS", "").strip()
    if not raw:
        return list(DEFAULT_SEEDS)
    try:
        return [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise pytest.UsageError(f"RELIABILITY_SEEDS must be comma-separated integers, got {raw!r}") from None


def fault_rate() -> float:
    """The fault probability per ARM request: RELIABILITY_FAULTS, else the repository's default."""
    raw = os.environ.get("RELIABILITY_FAULTS", "").strip()
    if not raw:
        return DEFAULT_FAULT_RATE
    try:
        rate = float(raw)
    except ValueError:
        raise pytest.UsageError(f"RELIABILITY_FAULTS must be a probability, got {raw!r}") from None
    if not 0.0 <= rate < 1.0:
        raise pytest.UsageError(f"RELIABILITY_FAULTS must be in [0, 1), got {rate}")
    return rate


@pytest.fixture
def world_time_scale() -> float:
    return 0.005
