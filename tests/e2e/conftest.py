"""End-to-end fixtures: the whole local world, sharing the session's Azurite."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localazure import azurite as azurite_mod
from localazure.world import LocalWorld

_hubs = itertools.count(1)

# Small worlds keep the blast-radius brake out of the way unless a test is about it.
RELAXED = {"REMEDIATION_BLAST_RADIUS_MAX_VMS": "50", "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "90",
           "REMEDIATION_MAX_CONCURRENT_REPAIRS": "10"}


@pytest.fixture
def make_world(azurite: azurite_mod.Azurite) -> Iterator[Callable[..., LocalWorld]]:
    """Start a local world (a fresh task hub and incident table on the shared Azurite)."""
    started: list[LocalWorld] = []

    def make(**kw: Any) -> LocalWorld:
        settings = {**RELAXED, **kw.pop("settings", {})}
        world = LocalWorld(storage=azurite, hub=f"E2e{next(_hubs)}x{id(started) % 10000}", settings=settings,
                           **{"time_scale": 0.01, **kw})
        world.start()
        started.append(world)
        return world

    yield make
    for world in reversed(started):
        world.stop()
