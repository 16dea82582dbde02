"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Disk and VM tiers need root (loop devices, mounts); say so plainly instead of failing obscurely."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for loop devices and mounts (run `make test` as root)")
    for item in items:
        if "disk" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)
