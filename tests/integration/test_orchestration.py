"""The repair orchestration, run by the local durable host through function_app's real bindings.

The cloud is the stateful fake (every branch of the plan is reachable on demand); the durable
history lives in Azurite. The local Azure end-to-end tests cover the same plan against real SDKs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from localazure.durable import DurableHost, VirtualClock
from localazure.funchost import FunctionHost
from remediation import entrypoints, steps
from remediation.activities import Deps
from remediation.detect import analyze_bytes
from remediation.model import IncidentState, PowerState, VmRef, instance_id_for
from tests.fake_cloud import FROZEN_LOG, SUB, FakeCloud, disk_id
from tests.fakes import InMemoryIncidentStore

pytestmark = pytest.mark.azurite

OPTIONS = {"poll_interval_seconds": 10, "verify_timeout_minutes": 5, "approval_timeout_minutes": 30}


class World:
    def __init__(self, host: DurableHost, cloud: FakeCloud, store: InMemoryIncidentStore) -> None:
        self.host, self.cloud, self.store = host, cloud, store

    def start(self, vm: VmRef, **options: Any) -> str:
        incident, created = self.store.open(vm, analyze_bytes(FROZEN_LOG), source="alert", now=datetime.now(UTC))
        assert created
        payload = {"incident_id": incident.id, "vm_id": vm.id, "options": {**OPTIONS, **options}}
        return self.host.start_new(steps.ORCHESTRATOR, instance_id_for(incident.id), payload)

    def finish(self, instance_id: str) -> dict[str, Any]:
        self.host.run_until_idle(timeout=60)
        status = self.host.status(instance_id, show_history=True)
        assert status is not None
        assert status["runtimeStatus"] == "Completed", status
        # Whatever the ending, the repair's last act is to hand its slot on to a queued repair.
        scheduled = [e.get("Name") for e in status["history"] if e["EventType"] == "TaskScheduled"]
        assert scheduled[-1] == steps.START_QUEUED, scheduled[-3:]
        self.history = status["history"]
        return dict(status["output"])

    def leftovers(self, incident_id: str) -> list[str]:
        """Resources tagged with the incident other than the ones kept on purpose."""
        kept = {steps.ROLE_ORIGINAL}
        out = []
        for disk in self.cloud.disks.values():
            role = disk.tags.get(steps.TAG_ROLE)
            in_use_copy = role == steps.ROLE_COPY and disk.managed_by
            if disk.tags.get(steps.TAG_INCIDENT) == incident_id and role not in kept and not in_use_copy:
                out.append(disk.name)
        out += [v.ref.name for v in self.cloud.vms.values() if v.tags.get(steps.TAG_INCIDENT) == incident_id]
        out += [n.name for n in self.cloud.nics.values() if n.tags.get(steps.TAG_INCIDENT) == incident_id]
        return out


@pytest.fixture
def world(storage_connection_string: str) -> Iterator[World]:
    cloud, store = FakeCloud(), InMemoryIncidentStore()
    entrypoints.reset()
    entrypoints.install(deps=Deps(cloud=cloud, events=store, opt_out_tag=("selinux-remediation", "off")),
                        incident_store=store)
    funchost = FunctionHost("function_app")
    hub = f"Orch{datetime.now(UTC).strftime('%H%M%S%f')}"
    host = DurableHost(funchost, storage_connection_string, hub=hub, clock=VirtualClock(),
                       max_concurrent_activities=1)
    host.start()
    try:
        yield World(host, cloud, store)
    finally:
        host.stop()
        entrypoints.reset()


def _incident(world: World, vm: VmRef) -> Any:
    return world.store.list()[0]


def test_heals_and_keeps_the_original_disk(world: World) -> None:
    vm = world.cloud.add_broken_vm()
    original_disk = world.cloud.get_vm(vm).os_disk_id
    out = world.finish(world.start(vm))
    assert out["state"] == "resolved", out
    info = world.cloud.get_vm(vm)
    assert info.power_state == PowerState.RUNNING
    assert info.os_disk_id != original_disk
    original = world.cloud.get_disk(original_disk)
    assert original is not None and original.tags[steps.TAG_ROLE] == steps.ROLE_ORIGINAL
    incident = _incident(world, vm)
    assert incident.state == IncidentState.RESOLVED
    assert world.leftovers(incident.id) == []
    kinds = [e.kind for e in world.store.timeline(incident.id)]
    for expected in ("repair_started", "validated", "prepared", "repaired_copy", "swapped", "verified",
                     "cleaned_up", "resolved"):
        assert expected in kinds, kinds
    # Replays and retries never write a step twice.
    assert len(kinds) == len(set(kinds)), kinds


def test_a_failing_hand_on_leaves_the_outcome_as_recorded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(payload: dict[str, Any], client: Any) -> dict[str, Any]:
        raise RuntimeError("the durable client is unreachable")

    monkeypatch.setattr(entrypoints, "start_queued_repairs", broken)
    vm = world.cloud.add_broken_vm()
    out = world.finish(world.start(vm))
    assert out["state"] == "resolved", out
    assert _incident(world, vm).state == IncidentState.RESOLVED
    failed = [e for e in world.history if e["EventType"] == "TaskFailed"]
    assert len(failed) == 1 and "unreachable" in str(failed[0]), failed


def test_script_failure_rolls_back_and_removes_everything_it_made(world: World) -> None:
    vm = world.cloud.add_broken_vm()
    before = world.cloud.get_vm(vm)
    world.cloud.script_output = '{"status": "failed", "error": "no filesystem holds /etc/selinux/config"}'
    out = world.finish(world.start(vm))
    assert out["state"] == "failed"
    assert "no filesystem holds" in out["error"]
    after = world.cloud.get_vm(vm)
    assert after.os_disk_id == before.os_disk_id
    assert after.power_state == PowerState.RUNNING  # restored: it was running before the incident
    incident = _incident(world, vm)
    assert incident.state == IncidentState.FAILED
    assert world.leftovers(incident.id) == []
    assert before.os_disk_id and before.os_disk_id.lower() not in world.cloud.deleted


def test_a_swapped_disk_that_does_not_boot_is_swapped_back(world: World) -> None:
    vm = world.cloud.add_broken_vm()
    before = world.cloud.get_vm(vm)
    world.cloud.boots_heal = False
    out = world.finish(world.start(vm))
    assert out["state"] == "rolled_back", out
    assert "did not boot" in out["error"]
    after = world.cloud.get_vm(vm)
    assert after.os_disk_id == before.os_disk_id
    assert after.power_state == PowerState.RUNNING
    incident = _incident(world, vm)
    assert incident.state == IncidentState.ROLLED_BACK
    assert world.leftovers(incident.id) == []
    # The repaired copy was made by the incident and is deleted on rollback; the original stays.
    names = steps.resource_names(incident.id, vm.id)
    assert world.cloud.get_disk(disk_id(names["copy_disk"])) is None
    original = world.cloud.get_disk(before.os_disk_id or "")
    assert original is not None
    # Back as the OS disk, the original no longer carries the incident's marks.
    assert steps.TAG_INCIDENT not in original.tags and steps.TAG_ROLE not in original.tags


def test_already_valid_config_changes_nothing(world: World) -> None:
    vm = world.cloud.add_broken_vm()
    before = world.cloud.get_vm(vm)
    world.cloud.script_output = '{"status": "already_valid", "changes": []}'
    out = world.finish(world.start(vm))
    assert out["state"] == "failed"
    assert "already valid" in out["error"]
    assert world.cloud.get_vm(vm) == before


def test_unsupported_vm_fails_without_creating_anything(world: World) -> None:
    vm = world.cloud.add_broken_vm("enc", encrypted=True)
    disks_before = set(world.cloud.disks)
    out = world.finish(world.start(vm))
    assert out["state"] == "failed"
    assert "Azure Disk Encryption" in out["error"]
    assert set(world.cloud.disks) == disks_before
    assert world.cloud.get_vm(vm).power_state == PowerState.RUNNING


@pytest.mark.parametrize(("decision", "state"), [({"approved": True, "by": "ops"}, "resolved"),
                                                 ({"approved": False, "by": "ops"}, "failed")])
def test_approval_decides_the_swap(world: World, decision: dict[str, Any], state: str) -> None:
    vm = world.cloud.add_broken_vm()
    before = world.cloud.get_vm(vm)
    iid = world.start(vm, approval_required=True)
    world.host.run_until_idle(timeout=60, advance_clock=False)
    incident = _incident(world, vm)
    assert incident.state == IncidentState.AWAITING_APPROVAL
    # While waiting, the VM itself is untouched: not deallocated, same disk.
    assert world.cloud.get_vm(vm).power_state == PowerState.RUNNING
    assert world.cloud.get_vm(vm).os_disk_id == before.os_disk_id
    world.host.raise_event(iid, "approval", decision)
    out = world.finish(iid)
    assert out["state"] == state, out
    if state == "failed":
        assert "denied by ops" in out["error"]
        assert world.cloud.get_vm(vm).os_disk_id == before.os_disk_id
        assert world.leftovers(incident.id) == []


def test_approval_timeout_leaves_the_vm_as_it_was(world: World) -> None:
    vm = world.cloud.add_broken_vm()
    before = world.cloud.get_vm(vm)
    out = world.finish(world.start(vm, approval_required=True))
    assert out["state"] == "failed"
    assert "no approval" in out["error"]
    assert world.cloud.get_vm(vm) == before
    assert world.leftovers(_incident(world, vm).id) == []


def test_vm_gone_before_the_repair(world: World) -> None:
    vm = VmRef(SUB, "prod-rg", "ghost")
    out = world.finish(world.start(vm))
    assert out["state"] == "failed"
    assert "no longer exists" in out["error"]
