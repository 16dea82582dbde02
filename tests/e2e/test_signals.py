"""Signals end to end: the webhook and the sweep through function_app's registered functions,
against the local Azure (real SDK clients over HTTPS) and Azurite."""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from localazure import scenario as scenario_mod
from localazure.demo import log_alert
from localazure.world import LocalWorld
from remediation import entrypoints

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk]


def vm_id(world: LocalWorld, name: str) -> str:
    return next(e.id for e in world.expectations.values() if e.id.lower().endswith("/" + name))


def arm_writes(world: LocalWorld) -> list[str]:
    """Requests that change something (boot diagnostics and the Logs query are POSTs that only read)."""
    assert world.azure is not None
    read_only = {"virtualMachines.retrieveBootDiagnosticsData", "logs.query"}
    return [f"{r.method} {r.operation} {r.resource_id}" for r in world.azure.requests
            if r.write and r.operation not in read_only]


def test_log_alert_heals_the_vm_it_names(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    status, body = world.post_alert(log_alert(vm_id(world, "web-03")))
    assert status == 202, body
    assert [r["action"] for r in body["results"]] == ["repair_started"]
    world.wait_for_repairs(timeout=180)
    summary = world.summary()
    assert summary["healed"] == 1 and summary["orphaned_resources"] == 0 and summary["healthy_touched"] == 0
    incident = entrypoints.store().list()[0]
    assert incident.state.value == "resolved"
    assert "SELINUXTYPE" in incident.reason


def test_alert_for_a_healthy_vm_repairs_nothing(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    status, body = world.post_alert(log_alert(vm_id(world, "web-01")))
    assert status == 202
    assert body["results"][0]["action"] == "observed"
    assert body["results"][0]["verdict"] == "booted"
    assert entrypoints.store().list() == []
    assert arm_writes(world) == [], "a healthy VM must not see a single write"


def test_event_grid_subscription_handshake(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    event = [{
        "id": "1", "topic": "/subscriptions/x", "subject": "", "eventTime": "2026-11-27T10:00:00Z",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "dataVersion": "1", "metadataVersion": "1",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"},
    }]
    status, body = world.post_alert(event)
    assert (status, body) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    assert world.functions is not None
    resp = world.functions.call_http("alert_webhook", "OPTIONS", "http://localhost/api/alerts",
                                     headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert resp.status_code == 200
    assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_health_resources_event_heals(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    target = vm_id(world, "cache-01")
    event = [{
        "id": "2", "topic": "/subscriptions/x", "subject": target, "eventTime": "2026-11-27T10:00:00Z",
        "eventType": "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged",
        "dataVersion": "1", "metadataVersion": "1",
        "data": {"resourceInfo": {"id": target + "/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
                                  "properties": {"availabilityState": "Unavailable"}},
                 "operationalInfo": {"modelVersion": "2023-12-01"}},
    }]
    status, body = world.post_alert(event)
    assert status == 202, body
    assert body["results"][0]["action"] == "repair_started", body
    world.wait_for_repairs(timeout=180)
    assert world.summary()["healed"] == 1


def test_100_concurrent_duplicate_alerts_open_one_incident_and_one_repair(
        make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    payload = log_alert(vm_id(world, "web-03"))
    statuses: list[int] = []
    actions: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        status, body = world.post_alert(payload)
        with lock:
            statuses.append(status)
            actions.extend(r["action"] for r in body.get("results", []))

    threads = [threading.Thread(target=send) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * 100
    assert actions.count("repair_started") == 1, actions
    assert len(entrypoints.store().list()) == 1
    assert world.durable is not None
    assert len(world.durable.list_instances()) == 1
    world.wait_for_repairs(timeout=180)


def test_sweep_finds_every_broken_vm_and_refuses_the_encrypted_one(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    world.sweep()
    world.wait_for_repairs(timeout=300)
    summary = world.summary()
    assert summary["healed"] == summary["repairable"] == 3, summary
    assert summary["healthy_touched"] == 0 and summary["orphaned_resources"] == 0
    assert summary["original_disks_deleted"] == 0
    assert (summary["broken"], summary["failed"], summary["refused"]) == (4, 0, 1)  # the encrypted VM
    states = {i.vm.name: i.state.value for i in entrypoints.store().list()}
    assert states == {"web-03": "resolved", "db-02": "resolved", "cache-01": "resolved", "vault-01": "failed"}


def test_queued_repairs_start_as_each_one_ends_without_another_sweep(
        make_world: Callable[..., LocalWorld]) -> None:
    world = make_world(settings={"REMEDIATION_MAX_CONCURRENT_REPAIRS": "1"})
    world.sweep()  # the only signal: every queued repair must be started by the one before it
    world.wait_for_repairs(timeout=400)
    summary = world.summary()
    states = {i.vm.name: (i.state.value, i.reason) for i in entrypoints.store().list()}
    assert summary["healed"] == summary["repairable"] == 3, (summary, states)
    assert summary["orphaned_resources"] == 0
    incidents = entrypoints.store().list()
    assert len(incidents) == 4  # three repairable VMs and the encrypted one, refused by its repair
    queued = [i.vm.name for i in incidents if any(e.kind == "queued" for e in entrypoints.store().timeline(i.id))]
    assert len(queued) == 3, "all but the first were held back by the cap"
    # Each repair's span of ARM writes (on the VM and on what it created), from the local Azure's log.
    spans = world.repair_write_spans()
    assert len(spans) == 3, spans  # the encrypted VM is refused before anything is written
    spans.sort()
    for (_, end, name), (start, _, following) in itertools.pairwise(spans):
        assert start >= end, f"{following} began writing before {name} was done: the cap of 1 was broken"


def test_dry_run_records_and_never_writes(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world(settings={"REMEDIATION_DRY_RUN": "true"})
    world.sweep()
    world.wait_for_repairs(timeout=60)
    incidents = entrypoints.store().list()
    assert {i.vm.name for i in incidents} == {"web-03", "db-02", "cache-01", "vault-01"}
    assert {i.state.value for i in incidents} == {"suppressed"}
    assert arm_writes(world) == []


def test_blast_radius_brake_records_all_and_repairs_none(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world(settings={"REMEDIATION_BLAST_RADIUS_MAX_VMS": "2", "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "90"})
    world.sweep()
    world.wait_for_repairs(timeout=300)
    incidents = entrypoints.store().list()
    assert len(incidents) == 4
    suppressed = [i for i in incidents if i.state.value == "suppressed"]
    assert suppressed and all("blast radius" in i.reason for i in suppressed)
    assert world.durable is not None
    assert len(world.durable.list_instances()) <= 2


def test_scope_and_opt_out_tag(make_world: Callable[..., LocalWorld]) -> None:
    scenario = copy.deepcopy(scenario_mod.load(None))
    groups = scenario["subscriptions"][0]["resource_groups"]
    web = next(g for g in groups if g["name"] == "rg-web")
    next(v for v in web["vms"] if v["name"] == "web-03")["tags"]["selinux-remediation"] = "off"
    world = make_world(scenario=scenario, settings={"REMEDIATION_RESOURCE_GROUPS": "rg-web"})
    _, body = world.post_alert(log_alert(vm_id(world, "web-03")))
    assert body["results"][0]["action"] == "opted_out", body
    _, body = world.post_alert(log_alert(vm_id(world, "cache-01")))
    assert body["results"][0]["action"] == "out_of_scope", body
    assert arm_writes(world) == []
    assert entrypoints.store().list() == []


@pytest.mark.parametrize(("body", "status"), [
    (b"not json", 400),
    (b"[]", 400),
    (json.dumps({"schemaId": "somethingElse", "data": {}}).encode(), 400),
    (b"x" * (2 * 1024 * 1024), 413),
])
def test_bad_payloads_get_a_clear_4xx(make_world: Callable[..., LocalWorld], body: bytes, status: int) -> None:
    world = make_world()
    got, answer = world.post_alert(body)
    assert got == status, answer
    assert answer["error"]


def test_payload_with_no_vm_targets_is_accepted_and_explained(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    payload: dict[str, Any] = log_alert(vm_id(world, "web-03"))
    payload["data"]["alertContext"]["condition"]["allOf"][0]["dimensions"] = []
    status, body = world.post_alert(payload)
    assert status == 202
    assert body["results"] == [] and body["ignored"]
