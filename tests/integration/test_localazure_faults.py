"""The fault plan as the SDK meets it: throttling, 500s and resets are retried; failed operations surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import models as cm

from localazure.faults import TYPICAL_SECONDS, FaultPlan, FaultRates, LatencyModel
from localazure.testing import running
from tests.integration.conftest import small_scenario

pytestmark = pytest.mark.localazure

RG = "rg-app"


def test_sdk_retries_throttling_and_server_errors_until_it_gets_through() -> None:
    # The default retry policy makes 3 retries on a bad status: rates low enough that 12 reads get through.
    plan = {"virtualMachines.get": {"throttle": 0.3, "server_error": 0.1}}
    with running(small_scenario(), time_scale=0.001, faults=plan, seed=7) as az:
        c = az.compute_client()
        for _ in range(12):
            assert c.virtual_machines.get(RG, "app-ok").name == "app-ok"
        gets = [r for r in az.requests if r.operation == "virtualMachines.get"]
        assert {r.status for r in gets} == {200, 429, 500}
        assert sum(r.status == 200 for r in gets) == 12
        throttled = next(r for r in gets if r.status == 429)
        assert throttled.fault == "throttle"


def test_connection_resets_on_reads_are_retried() -> None:
    with running(small_scenario(), time_scale=0.001, faults={"disks.get": {"connection_reset": 0.3}}, seed=3) as az:
        c = az.compute_client()
        for _ in range(4):
            assert c.disks.list_by_resource_group(RG) is not None
            disk_name = c.virtual_machines.get(RG, "app-ok").storage_profile.os_disk.name
            assert c.disks.get(RG, disk_name).name == disk_name
        resets = [r for r in az.requests if r.fault == "connection_reset"]
        assert resets and all(r.operation == "disks.get" for r in resets)


def test_a_failed_long_running_operation_surfaces_and_marks_the_resource() -> None:
    with running(small_scenario(), time_scale=0.001, faults={"disks.createOrUpdate": {"lro_failure": 1.0}}) as az:
        c = az.compute_client()
        src = c.virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.managed_disk.id
        with pytest.raises(HttpResponseError):
            c.disks.begin_create_or_update(RG, "doomed", cm.Disk(
                location="eastus", zones=["1"],
                creation_data=cm.CreationData(create_option="Copy", source_resource_id=src))).result()
        assert c.disks.get(RG, "doomed").provisioning_state == "Failed"


def test_same_seed_same_faults() -> None:
    def run(seed: int) -> list[str | None]:
        plan = FaultPlan.uniform(0.3, seed)
        return [plan.decide("virtualMachines.get", "read", False).fault for _ in range(200)]

    assert run(11) == run(11)
    assert run(11) != run(12)
    faults = run(11)
    assert 0.15 < sum(f == "throttle" for f in faults) / 200 < 0.45


def test_most_specific_rate_wins() -> None:
    plan = FaultPlan({"*": FaultRates(throttle=1.0), "virtualMachines.get": FaultRates()}, 0)
    assert plan.decide("virtualMachines.get", "read", False).fault is None
    assert plan.decide("disks.get", "read", False).fault == "throttle"


def test_fault_specs_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan.from_spec("1.5")
    with pytest.raises(ValueError, match="neither a probability"):
        FaultPlan.from_spec(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"*": {"explode": 0.1}}))
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultPlan.from_spec(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"write": {"throttle": 0.25, "extra_latency": 2}}))
    assert FaultPlan.from_spec(str(good)).rates["write"] == FaultRates(throttle=0.25, extra_latency=2.0)


def test_latency_model_scales_typical_durations() -> None:
    fast = LatencyModel(0.001)
    assert fast.seconds("disk_copy") == pytest.approx(TYPICAL_SECONDS["disk_copy"] / 1000)
    assert fast.retry_after_header() == "0"
    assert LatencyModel(1.0).retry_after_header() == "1"
    with pytest.raises(ValueError):
        LatencyModel(0)
