"""Repair steps against a stateful fake cloud: end states, idempotence and the safety refusals."""

from __future__ import annotations

from typing import Any

import pytest

from remediation import activities, steps
from remediation.activities import Deps
from remediation.model import IncidentState, PowerState, TimelineEvent, VmRef
from tests.fake_cloud import SUB, FakeCloud, disk_id

INCIDENT = "inc-0123456789ab"


class Events:
    """Just enough of an incident store for the steps that write the timeline."""

    def __init__(self) -> None:
        self.rows: list[TimelineEvent] = []
        self.state = IncidentState.DETECTED

    def timeline(self, incident_id: str) -> list[TimelineEvent]:
        return list(self.rows)

    def get(self, incident_id: str) -> Any:
        return type("I", (), {"state": self.state})()

    def append_event(self, incident_id: str, event: TimelineEvent) -> None:
        self.rows.append(event)

    def transition(self, incident_id: str, to: IncidentState, **kw: Any) -> Any:
        self.state = to
        self.rows.append(kw["event"])
        return self.get(incident_id)


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def vm(cloud: FakeCloud) -> VmRef:
    return cloud.add_broken_vm()


@pytest.fixture
def deps(cloud: FakeCloud) -> Deps:
    return Deps(cloud=cloud, events=Events(), opt_out_tag=("selinux-remediation", "off"))


def payload(vm: VmRef, **extra: Any) -> dict[str, Any]:
    return {"incident_id": INCIDENT, "vm_id": vm.id, "names": steps.resource_names(INCIDENT, vm.id), **extra}


def run(name: str, p: dict[str, Any], deps: Deps) -> dict[str, Any]:
    return activities.run(name, p, deps)


def twice(name: str, p: dict[str, Any], deps: Deps, cloud: FakeCloud) -> dict[str, Any]:
    """Run a step, then again: the second run must leave exactly the state the first left."""
    first = run(name, p, deps)
    state = cloud.snapshot()
    second = run(name, p, deps)
    assert cloud.snapshot() == state, f"{name} is not idempotent"
    assert first == second
    return first


def test_validate_records_original_state(deps: Deps, vm: VmRef) -> None:
    r = run(steps.VALIDATE_TARGET, payload(vm), deps)
    assert r["ok"], r
    assert r["original"]["os_disk_id"] == disk_id("vm1-osdisk")
    assert r["original"]["power_state"] == "running"
    assert r["original"]["subnet_id"].endswith("/subnets/default")
    assert r["original"]["finding"]["verdict"] == "selinux_policy_failure"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"os_type": "Windows"}, "not Linux"),
        ({"os_disk_id": None}, "unmanaged"),
        ({"encrypted": True}, "Azure Disk Encryption"),
        ({"tags": {"selinux-remediation": "off"}}, "opt-out"),
    ],
)
def test_validate_refuses_unsupported_targets(cloud: FakeCloud, deps: Deps, overrides: dict[str, Any],
                                              message: str) -> None:
    vm = cloud.add_broken_vm("odd", **overrides)
    r = run(steps.VALIDATE_TARGET, payload(vm), deps)
    assert not r["ok"]
    assert message in r["error"]


def test_validate_refuses_a_vm_that_booted_meanwhile(cloud: FakeCloud, deps: Deps, vm: VmRef) -> None:
    cloud.serial[vm.key].extend(b"\n[    0.000000] Linux version 5.14\n\nvm1 login: ")
    r = run(steps.VALIDATE_TARGET, payload(vm), deps)
    assert not r["ok"]
    assert "no longer shows" in r["error"]


def test_validate_refuses_a_vm_that_is_gone(deps: Deps) -> None:
    r = run(steps.VALIDATE_TARGET, payload(VmRef(SUB, "prod-rg", "ghost")), deps)
    assert r == {"ok": False, "error": "the VM prod-rg/ghost no longer exists"}


def test_every_step_is_idempotent_and_the_happy_path_heals(cloud: FakeCloud, deps: Deps, vm: VmRef) -> None:
    original = run(steps.VALIDATE_TARGET, payload(vm), deps)["original"]
    p = payload(vm, original=original)
    names = p["names"]

    copy = twice(steps.COPY_OS_DISK, p, deps, cloud)
    assert cloud.get_disk(copy["probe"]["id"]).tags[steps.TAG_INCIDENT] == INCIDENT
    twice(steps.CREATE_RESCUE_VM, p, deps, cloud)
    twice(steps.DEALLOCATE_VM, p, deps, cloud)
    assert cloud.get_vm(vm).power_state == PowerState.DEALLOCATED
    twice(steps.ATTACH_REPAIR_DISK, p, deps, cloud)
    twice(steps.START_REPAIR_SCRIPT, p, deps, cloud)
    report = twice(steps.REPAIR_RESULT, p, deps, cloud)["report"]
    assert report["status"] == "repaired"
    twice(steps.DETACH_REPAIR_DISK, p, deps, cloud)
    twice(steps.SWAP_OS_DISK, {**p, "to": "copy"}, deps, cloud)
    assert cloud.get_vm(vm).os_disk_name == names["copy_disk"]
    assert cloud.get_disk(original["os_disk_id"]).tags[steps.TAG_ROLE] == steps.ROLE_ORIGINAL

    started = run(steps.START_VM, p, deps)
    verdict = run(steps.VERIFY_BOOT, {**p, "since": started["serial_offset"]}, deps)
    assert verdict["verdict"] == "booted"

    for _ in range(3):
        r = run(steps.DELETE_RESCUE_RESOURCES, {**p, "keep_copy": True}, deps)
        assert r["ok"]
    assert cloud.find_vm(VmRef(SUB, "prod-rg", names["rescue_vm"])) is None
    assert cloud.get_disk(disk_id(names["rescue_os_disk"])) is None
    # The repaired copy is the OS disk now, and the original is kept: neither is deleted.
    assert cloud.get_disk(disk_id(names["copy_disk"])) is not None
    assert cloud.get_disk(original["os_disk_id"]) is not None
    assert original["os_disk_id"].lower() not in cloud.deleted


def test_verify_judges_only_the_boot_after_the_swap(cloud: FakeCloud, deps: Deps, vm: VmRef) -> None:
    # The old frozen boot is still in the serial buffer; since=offset hides it.
    offset = cloud.serial_log_size(vm)
    r = run(steps.VERIFY_BOOT, payload(vm, since=offset), deps)
    assert r["verdict"] == "inconclusive" and not r["final"]
    cloud.serial[vm.key].extend(b"[    0.000000] Linux version 5.14\n[    1.2] systemd[1]: Failed to load SELinux "
                                b"policy.\n[    1.3] systemd[1]: Freezing execution.\n")
    r = run(steps.VERIFY_BOOT, payload(vm, since=offset), deps)
    assert r["verdict"] == "selinux_policy_failure" and r["final"]


def test_cleanup_never_deletes_what_is_not_tagged_with_the_incident(cloud: FakeCloud, deps: Deps,
                                                                     vm: VmRef) -> None:
    names = steps.resource_names(INCIDENT, vm.id)
    # Someone else's disk happens to have the name the repair would use.
    cloud.add_disk(names["copy_disk"], tags={"owner": "someone"})
    r = run(steps.DELETE_RESCUE_RESOURCES, payload(vm, keep_copy=False), deps)
    assert r == {"ok": True, "probes": []}
    assert cloud.get_disk(disk_id(names["copy_disk"])) is not None
    # And the copy step refuses to adopt it.
    original = run(steps.VALIDATE_TARGET, payload(vm), deps)["original"]
    r = run(steps.COPY_OS_DISK, payload(vm, original=original), deps)
    assert not r["ok"] and "does not belong" in r["error"]


def test_swap_refuses_a_running_vm(cloud: FakeCloud, deps: Deps, vm: VmRef) -> None:
    original = run(steps.VALIDATE_TARGET, payload(vm), deps)["original"]
    p = payload(vm, original=original)
    run(steps.COPY_OS_DISK, p, deps)
    r = run(steps.SWAP_OS_DISK, {**p, "to": "copy"}, deps)
    assert not r["ok"] and "not deallocated" in r["error"]
    assert cloud.get_vm(vm).os_disk_id == original["os_disk_id"]


def test_script_without_a_report_fails_with_its_output(cloud: FakeCloud, deps: Deps, vm: VmRef) -> None:
    cloud.script_output = "mount: /mnt: wrong fs type"
    original = run(steps.VALIDATE_TARGET, payload(vm), deps)["original"]
    p = payload(vm, original=original)
    for step in (steps.COPY_OS_DISK, steps.CREATE_RESCUE_VM, steps.ATTACH_REPAIR_DISK, steps.START_REPAIR_SCRIPT):
        run(step, p, deps)
    r = run(steps.REPAIR_RESULT, p, deps)
    assert not r["ok"] and "wrong fs type" in r["error"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('noise\n{"status": "repaired", "changes": []}\n', "repaired"),
        ('{"status": "already_valid"}', "already_valid"),
        ("[stdout]\n{broken json}\n", None),
        ('{"no_status": 1}', None),
        ("", None),
    ],
)
def test_parse_script_report(output: str, expected: str | None) -> None:
    report = activities.parse_script_report(output)
    assert (report or {}).get("status") == expected


def test_resource_names_are_deterministic_and_validated() -> None:
    vm_id = VmRef(SUB, "rg", "a" * 64).id
    assert steps.resource_names(INCIDENT, vm_id) == steps.resource_names(INCIDENT, vm_id)
    assert len(steps.resource_names(INCIDENT, vm_id)["copy_disk"]) <= 80
    with pytest.raises(ValueError, match="not an incident id"):
        steps.resource_names("inc-../../x", vm_id)


def test_record_event_is_idempotent_by_event_id(deps: Deps, vm: VmRef) -> None:
    p = payload(vm, event_id="0003", at="2026-01-01T00:00:00+00:00", kind="swapped", message="m", state="repairing")
    assert run(steps.RECORD_EVENT, p, deps) == {"ok": True, "state": "repairing"}
    assert run(steps.RECORD_EVENT, p, deps) == {"ok": True, "state": "repairing"}
    assert [e.kind for e in deps.events.rows] == ["swapped"]
