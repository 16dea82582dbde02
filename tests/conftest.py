"""Fixtures shared by every test tier."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localazure import azurite as azurite_mod


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[azurite_mod.Azurite]:
    """One Azurite per test session, on free ports, with its data in a temporary folder."""
    server = azurite_mod.start(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture
def storage_connection_string(azurite: azurite_mod.Azurite) -> str:
    return azurite.connection_string


# Small worlds keep the blast-radius brake out of the way unless a test is about it.
RELAXED = {"REMEDIATION_BLAST_RADIUS_MAX_VMS": "50", "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "90",
           "REMEDIATION_MAX_CONCURRENT_REPAIRS": "10"}
_hubs = itertools.count(1)


@pytest.fixture
def world_time_scale() -> float:
    """Modelled seconds -> real seconds for local worlds (a tier's conftest may choose another)."""
    return 0.01


@pytest.fixture
def make_world(azurite: azurite_mod.Azurite, world_time_scale: float) -> Iterator[Callable[..., Any]]:
    """Start a local world on a fresh task hub and incident table of the session's Azurite."""
    from localazure.world import LocalWorld

    started: list[LocalWorld] = []

    def make(**kw: Any) -> LocalWorld:
        settings = {**RELAXED, **kw.pop("settings", {})}
        world = LocalWorld(storage=azurite, hub=f"W{next(_hubs)}x{os.getpid() % 10000}", settings=settings,
                           **{"time_scale": world_time_scale, **kw})
        world.start()
        started.append(world)
        return world

    yield make
    for world in reversed(started):
        world.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Disk and VM tiers need root (loop devices, mounts); say so plainly instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for loop devices and mounts (run `make test` as root)")
    for item in items:
        if "disk" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)
