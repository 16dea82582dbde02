"""Reliability fixtures: local worlds on the session's Azurite, and the seed and fault rate to run with.

RELIABILITY_SEEDS (comma-separated integers) and RELIABILITY_FAULTS (a probability) override the
values kept in the repository, so the suite can be run with seeds and rates nobody has tried yet.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localazure import azurite as azurite_mod
from localazure.world import LocalWorld

DEFAULT_SEEDS = (11, 23)
DEFAULT_FAULT_RATE = 0.2

# Small worlds keep the blast-radius brake out of the way: it has its own tests.
RELAXED = {"REMEDIATION_BLAST_RADIUS_MAX_VMS": "50", "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "90",
           "REMEDIATION_MAX_CONCURRENT_REPAIRS": "10"}

_hubs = itertools.count(1)


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
def make_world(azurite: azurite_mod.Azurite) -> Iterator[Callable[..., LocalWorld]]:
    """Start a local world on a fresh task hub and incident table of the shared Azurite."""
    started: list[LocalWorld] = []

    def make(**kw: Any) -> LocalWorld:
        settings = {**RELAXED, **kw.pop("settings", {})}
        world = LocalWorld(storage=azurite, hub=f"Rel{next(_hubs)}x{os.getpid() % 10000}", settings=settings,
                           **{"time_scale": 0.005, **kw})
        world.start()
        started.append(world)
        return world

    yield make
    for world in reversed(started):
        world.stop()
