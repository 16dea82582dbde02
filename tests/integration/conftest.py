"""Fixtures for the integration tier: the local Azure in-process, fast and small."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from localazure.testing import LocalAzureHandle, running

SUBSCRIPTION = "6c1f2e3d-4b5a-4978-8a6b-0c1d2e3f4a5b"
WORKSPACE = "0f1e2d3c-4b5a-4697-8877-665544332211"

# One resource group with one VM of every kind the product meets.
SMALL_SCENARIO: dict[str, Any] = {
    "workspace_id": WORKSPACE,
    "images": False,
    "subscriptions": [{
        "id": SUBSCRIPTION,
        "name": "Test subscription",
        "resource_groups": [{
            "name": "rg-app",
            "location": "eastus",
            "vnets": [{"name": "vnet-app", "prefixes": ["10.1.0.0/16"],
                       "subnets": [{"name": "default", "prefix": "10.1.1.0/24"}]}],
            "vms": [
                {"name": "app-ok", "disk": "healthy", "zones": ["1"], "tags": {"env": "prod"}},
                {"name": "app-frozen", "disk": "selinuxtype_disabled", "zones": ["1"], "heartbeat_minutes_ago": 90},
                {"name": "app-typo", "disk": "selinuxtype_typo", "heartbeat_minutes_ago": 45},
                {"name": "app-permissive", "disk": "permissive_missing_policy"},
                {"name": "app-off", "disk": "healthy", "power": "deallocated", "heartbeat_minutes_ago": 3000},
                {"name": "app-encrypted", "disk": "selinuxtype_disabled", "encrypted": True},
                {"name": "app-vhd", "disk": "selinuxtype_disabled", "unmanaged": True},
                {"name": "app-win", "os": "windows"},
            ],
        }, {
            "name": "rg-other",
            "location": "westeurope",
            "vnets": [{"name": "vnet-other", "prefixes": ["10.2.0.0/16"],
                       "subnets": [{"name": "default", "prefix": "10.2.1.0/24"}]}],
            "vms": [{"name": "eu-ok", "disk": "healthy"}],
        }],
    }],
}


def small_scenario(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SMALL_SCENARIO)
    data.update(changes)
    return data


@pytest.fixture
def local_azure() -> Iterator[LocalAzureHandle]:
    """A local Azure with the small scenario, declared disk states only, time compressed 1000x."""
    with running(small_scenario(), time_scale=0.001) as az:
        yield az


@pytest.fixture
def local_azure_disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAzureHandle]:
    """The same scenario with real OS disk images (needs root for loop devices)."""
    scenario = small_scenario(images=True)
    with running(scenario, time_scale=0.001, state_dir=tmp_path_factory.mktemp("localazure")) as az:
        yield az
