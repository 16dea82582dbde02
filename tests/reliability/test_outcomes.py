"""The ways a repair can end, each checked against the invariants: a repair script that fails, a
swapped disk that does not boot (rolled back at the verification deadline), approval granted, denied
and timed out, and the same repair started many times at once."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from localazure import scenario as scenario_mod
from localazure.demo import log_alert
from localazure.world import LocalWorld
from remediation import entrypoints, steps
from remediation.model import instance_id_for
from tests.reliability.invariants import check_invariants, creates_by_name, snapshot

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk, pytest.mark.slow]


def vm_id(world: LocalWorld, name: str) -> str:
    return next(e.id for e in world.expectations.values() if e.id.lower().endswith("/" + name))


def with_disk(name: str, breakage: str) -> dict[str, Any]:
    """The default subscription with one VM's OS disk in another state."""
    data = copy.deepcopy(scenario_mod.load(None))
    for group in data["subscriptions"][0]["resource_groups"]:
        for vm in group["vms"]:
            if vm["name"] == name:
                vm["disk"] = breakage
    return data


def start_one(world: LocalWorld, name: str) -> Any:
    """Alert for one VM; return its incident once the repair has started."""
    status, body = world.post_alert(log_alert(vm_id(world, name)))
    assert status == 202 and [r["action"] for r in body["results"]] == ["repair_started"], body
    (incident,) = entrypoints.store().list()
    return incident


def incident_named(name: str) -> Any:
    return next(i for i in entrypoints.store().list(limit=1000) if i.vm.name == name)


def timeline_kinds(incident_id: str) -> list[str]:
    return [e.kind for e in entrypoints.store().timeline(incident_id)]


def assert_exactly_as_before(world: LocalWorld, name: str, before: dict[str, Any]) -> None:
    assert world.azure is not None
    key = vm_id(world, name).lower()
    vm = world.azure.state.vms[key]
    snap = before[key]
    assert (vm.os_disk_id, vm.power, vm.tags, [d.disk_id for d in vm.data_disks]) == \
        (snap.os_disk_id, snap.power, snap.tags, snap.data_disks)


def resources_created(world: LocalWorld) -> list[str]:
    return [rid.rsplit("/", 1)[-1] for rid in creates_by_name(world)]


# ------------------------------------------------------------------------------------------ script fails


def test_repair_script_that_cannot_read_the_disk_fails_the_incident_and_changes_nothing(
        make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    before = snapshot(world)
    assert world.azure is not None
    # A disk the script cannot handle: no partition table or file system it knows (wiped in place).
    disk = world.azure.state.disks[(world.expectations[vm_id(world, "web-03").lower()].os_disk_id or "").lower()]
    assert disk.path is not None
    size = disk.path.stat().st_size
    with disk.path.open("r+b") as fh:
        fh.write(b"\0" * size)
    incident = start_one(world, "web-03")
    world.wait_for_repairs(timeout=180)

    final = incident_named("web-03")
    assert final.state.value == "failed", (final.state, final.reason)
    assert "repair script" in (final.reason or ""), final.reason
    kinds = timeline_kinds(incident.id)
    assert "rolling_back" in kinds and "cleaned_up" in kinds and "swapped" not in kinds, kinds
    assert_exactly_as_before(world, "web-03", before)
    outcome = check_invariants(world, before)
    assert not outcome.healed
    # The copy and the rescue VM existed, and are gone.
    created = resources_created(world)
    assert any(n.startswith("web-03-osdisk-fix-") for n in created), created
    assert any(n.startswith("rescue-") for n in created), created


# ------------------------------------------------------------------------------------------ no clean boot


def test_swapped_disk_that_never_boots_cleanly_is_rolled_back_at_the_deadline(
        make_world: Callable[..., LocalWorld]) -> None:
    # No policy installed at all: the script can only set permissive, and that boot is broken
    # (no labeling handle) without freezing, so verification never sees a clean boot.
    world = make_world(scenario=with_disk("web-03", "enforcing_nothing_installed"),
                       settings={"REMEDIATION_VERIFY_TIMEOUT_MINUTES": "1"})
    before = snapshot(world)
    incident = start_one(world, "web-03")
    world.wait_for_repairs(timeout=180)

    final = incident_named("web-03")
    assert final.state.value == "rolled_back", (final.state, final.reason)
    assert "verification deadline" in (final.reason or ""), final.reason
    kinds = timeline_kinds(incident.id)
    assert kinds.index("swapped") < kinds.index("rolling_back") < kinds.index("cleaned_up"), kinds
    assert_exactly_as_before(world, "web-03", before)  # the original disk, running again
    check_invariants(world, before)
    assert world.azure is not None
    swaps = [r for r in world.azure.requests if r.method in ("PUT", "PATCH") and r.status < 400
             and r.resource_id.lower() == vm_id(world, "web-03").lower()]
    assert len(swaps) >= 2, "the disk was swapped in and back"


# ------------------------------------------------------------------------------------------ approval


def approve(world: LocalWorld, incident_id: str, approved: bool) -> tuple[int, dict[str, Any]]:
    assert world.functions is not None
    resp = world.functions.call_http(
        "approve_repair", "POST", f"http://localhost/api/incidents/{incident_id}/approval",
        body=json.dumps({"approved": approved, "by": "oncall@example.com"}).encode(),
        headers={"Content-Type": "application/json"}, route_params={"incident_id": incident_id})
    return resp.status_code, json.loads(resp.get_body() or b"{}")


def wait_state(world: LocalWorld, incident_id: str, state: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while entrypoints.store().get(incident_id).state.value != state:
        assert world.durable is not None
        busy = [i for i in world.durable.list_instances() if i["runtimeStatus"] not in ("Completed", "Failed")]
        assert busy, f"the repair ended before reaching {state}: {entrypoints.store().get(incident_id)}"
        assert time.monotonic() < deadline, f"incident never reached {state}"
        time.sleep(0.1)


@pytest.mark.parametrize("decision", ["granted", "denied"])
def test_approval_granted_heals_and_denied_changes_nothing(make_world: Callable[..., LocalWorld],
                                                           decision: str) -> None:
    world = make_world(settings={"REMEDIATION_APPROVAL_REQUIRED": "true"})
    before = snapshot(world)
    incident = start_one(world, "web-03")
    wait_state(world, incident.id, "awaiting_approval")
    # While waiting, the broken VM was not touched: not even deallocated.
    assert_exactly_as_before(world, "web-03", before)

    status, body = approve(world, incident.id, decision == "granted")
    assert status == 202, body
    world.wait_for_repairs(timeout=180)

    final = incident_named("web-03")
    outcome = check_invariants(world, before)
    if decision == "granted":
        assert final.state.value == "resolved", final.reason
        assert outcome.healed == {vm_id(world, "web-03").lower()}
        assert "approved" in timeline_kinds(incident.id)
    else:
        assert final.state.value == "failed" and "denied by oncall@example.com" in (final.reason or "")
        assert_exactly_as_before(world, "web-03", before)
    # A second decision after the end is refused with a clear 409.
    status, body = approve(world, incident.id, True)
    assert status == 409 and "not awaiting approval" in body["error"]


def test_approval_that_never_comes_times_out_and_changes_nothing(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world(settings={"REMEDIATION_APPROVAL_REQUIRED": "true",
                                 "REMEDIATION_APPROVAL_TIMEOUT_MINUTES": "1"})
    before = snapshot(world)
    incident = start_one(world, "web-03")
    world.wait_for_repairs(timeout=180)

    final = incident_named("web-03")
    assert final.state.value == "failed" and "no approval within" in (final.reason or ""), final.reason
    assert "awaiting_approval" in timeline_kinds(incident.id)
    assert_exactly_as_before(world, "web-03", before)
    check_invariants(world, before)


# ------------------------------------------------------------------------------------------ duplicates


def test_duplicate_and_concurrent_starts_make_one_instance_and_one_set_of_resources(
        make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    before = snapshot(world)
    target = vm_id(world, "web-03")
    errors: list[BaseException] = []

    def alert() -> None:
        try:
            world.post_alert(log_alert(target))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def sweep() -> None:
        try:
            world.sweep()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=alert) for _ in range(8)] + [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    incidents = [i for i in entrypoints.store().list(limit=1000) if i.vm.name == "web-03"]
    assert len(incidents) == 1, incidents
    iid = instance_id_for(incidents[0].id)

    # The durable client itself, many starts of the same instance at once: all refused, none doubled.
    assert world.durable is not None
    payload = world.durable.store.get_instance(iid)
    assert payload is not None and payload.input is not None
    started = concurrent_starts(world, iid, json.loads(json.loads(payload.input)
                                                       if payload.input.startswith('"') else payload.input), 12)
    assert started == [False] * 12
    world.wait_for_repairs(timeout=300)

    instances = [i for i in world.durable.list_instances() if i["instanceId"] == iid]
    assert len(instances) == 1 and instances[0]["runtimeStatus"] == "Completed"
    # The sweeps also started the other broken VMs' repairs: every created name is one of some
    # incident's deterministic names, and web-03's exist once each.
    counts = Counter(rid.rsplit("/", 1)[-1] for rid in creates_by_name(world))
    expected: set[str] = set()
    for inc in entrypoints.store().list(limit=1000):
        names = steps.resource_names(inc.id, inc.vm.id)
        expected |= {names["copy_disk"], names["rescue_vm"], names["rescue_nic"]}
    assert set(counts) <= expected, set(counts) - expected
    names = steps.resource_names(incidents[0].id, target)
    for key in ("copy_disk", "rescue_vm", "rescue_nic"):
        assert counts[names[key]] >= 1, (key, counts)
    check_invariants(world, before)


def concurrent_starts(world: LocalWorld, instance_id: str, payload: Any, n: int) -> list[bool]:
    """n DurableStarter.start_repair calls for one instance id, all in flight at once."""
    import azure.durable_functions as df

    from localazure import funchost

    assert world.durable is not None
    binding = world.durable.client_binding()

    async def race() -> list[bool]:
        starters = [entrypoints.DurableStarter(df.DurableOrchestrationClient(binding)) for _ in range(n)]
        return list(await asyncio.gather(*(s.start_repair(instance_id, payload) for s in starters)))

    with funchost._LOOP_LOCK:
        funchost._reset_durable_session()
        result: list[bool] = asyncio.run(funchost._run_and_close(race()))
    return result
