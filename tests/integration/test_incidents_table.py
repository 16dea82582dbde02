"""TableIncidentStore against Azurite: one open incident per VM under races, ETags, timeline order, locks."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from azure.data.tables import TableServiceClient

from remediation import intake
from remediation.azure.tables import INCIDENT_PARTITION, TableIncidentStore, from_settings, lock_key
from remediation.incidents import EVENT_DUPLICATE, EVENT_OPENED
from remediation.model import (
    ConflictError,
    Evidence,
    Finding,
    IncidentState,
    NotFoundError,
    SettingsError,
    TimelineEvent,
    Verdict,
    VmRef,
)
from remediation.settings import Settings
from tests.fakes import FROZEN_LOG, SUB, FakeStarter, FakeVms, make_vm, vm_id

pytestmark = pytest.mark.azurite

NOW = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
FAILURE = Finding(Verdict.SELINUX_POLICY_FAILURE, evidence=(Evidence(3, "Failed to load SELinux policy."),),
                  policy_type="disabled")
T = TypeVar("T")


def event(kind: str, at: datetime = NOW, **data: Any) -> TimelineEvent:
    return TimelineEvent(at=at.isoformat(), kind=kind, message=kind, data=data)


def vm(name: str) -> VmRef:
    return VmRef.parse(vm_id(name))


def race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(0..n-1) from n threads released together."""
    barrier = threading.Barrier(n)

    def go(i: int) -> T:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


@pytest.fixture
def settings(storage_connection_string: str) -> Settings:
    table = "Incidents" + uuid.uuid4().hex[:12]
    return Settings(storage_connection=storage_connection_string, incident_table=table)


@pytest.fixture
def store(settings: Settings) -> TableIncidentStore:
    return from_settings(settings)


def test_open_get_find_and_duplicate(store: TableIncidentStore) -> None:
    a = vm("a")
    incident, created = store.open(a, FAILURE, source="alert", now=NOW)
    assert created and incident.state is IncidentState.DETECTED and incident.etag
    again, created_again = store.open(a, FAILURE, source="sweep", now=NOW + timedelta(minutes=1))
    assert not created_again and again.id == incident.id
    got = store.get(incident.id)
    assert got.vm == a and got.finding["policy_type"] == "disabled" and got.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert got.opened_at == "2026-11-20T10:00:00.000000Z"
    assert store.find_open(a) == got
    assert store.find_open(vm("b")) is None
    assert [e.kind for e in store.timeline(incident.id)] == [EVENT_OPENED, EVENT_DUPLICATE]
    with pytest.raises(NotFoundError):
        store.get("inc-000000000000")


def test_one_open_incident_per_vm_under_50_racing_threads(store: TableIncidentStore) -> None:
    a = vm("race")
    results = race(50, lambda i: store.open(a, FAILURE, source="alert", now=NOW + timedelta(microseconds=i)))
    assert sum(1 for _, created in results if created) == 1
    assert len({incident.id for incident, _ in results}) == 1
    assert len(store.list()) == 1
    kinds = [e.kind for e in store.timeline(results[0][0].id)]
    assert kinds.count(EVENT_OPENED) == 1 and kinds.count(EVENT_DUPLICATE) == 49


def test_racing_opens_for_different_vms_all_succeed(store: TableIncidentStore) -> None:
    results = race(20, lambda i: store.open(vm(f"vm{i}"), FAILURE, source="sweep", now=NOW))
    assert all(created for _, created in results)
    assert store.count_in_state([IncidentState.DETECTED]) == 20


def test_etag_and_expected_state_guard_transitions(store: TableIncidentStore) -> None:
    incident, _ = store.open(vm("a"), FAILURE, source="alert", now=NOW)
    moved = store.transition(incident.id, IncidentState.REPAIRING, expected=[IncidentState.DETECTED],
                             event=event("repairing"), etag=incident.etag)
    assert moved.state is IncidentState.REPAIRING and moved.etag != incident.etag
    with pytest.raises(ConflictError, match="ETag moved"):
        store.transition(incident.id, IncidentState.FAILED, expected=None, event=event("x"), etag=incident.etag)
    with pytest.raises(ConflictError, match="is repairing, expected one of: detected"):
        store.transition(incident.id, IncidentState.SUPPRESSED, expected=[IncidentState.DETECTED], event=event("x"))
    assert store.get(incident.id).state is IncidentState.REPAIRING
    assert [e.kind for e in store.timeline(incident.id)] == [EVENT_OPENED, "repairing"]


def test_racing_transitions_exactly_one_wins(store: TableIncidentStore) -> None:
    incident, _ = store.open(vm("a"), FAILURE, source="alert", now=NOW)
    targets = [IncidentState.REPAIRING, IncidentState.SUPPRESSED] * 5

    def attempt(i: int) -> str:
        try:
            store.transition(incident.id, targets[i], expected=[IncidentState.DETECTED], event=event(f"t{i}"))
        except ConflictError:
            return "conflict"
        return "won"

    outcomes = race(10, attempt)
    assert outcomes.count("won") == 1
    final = store.get(incident.id)
    assert final.state in (IncidentState.REPAIRING, IncidentState.SUPPRESSED)
    assert len(store.timeline(incident.id)) == 2


def test_closing_releases_the_lock_and_reopening_takes_it(store: TableIncidentStore) -> None:
    a = vm("a")
    first, _ = store.open(a, FAILURE, source="alert", now=NOW)
    store.transition(first.id, IncidentState.FAILED, expected=None, event=event("failed"), reason="disk busy",
                     result={"step": "copy_os_disk"})
    closed = store.get(first.id)
    assert (closed.state, closed.reason, closed.result) == (IncidentState.FAILED, "disk busy", {"step": "copy_os_disk"})
    assert store.find_open(a) is None
    second, created = store.open(a, FAILURE, source="sweep", now=NOW + timedelta(hours=1))
    assert created and second.id != first.id
    # The first incident cannot become open again while the second holds the VM.
    with pytest.raises(ConflictError, match="already has open incident"):
        store.transition(first.id, IncidentState.DETECTED, expected=None, event=event("reopen"))
    store.transition(second.id, IncidentState.RESOLVED, expected=None, event=event("resolved"))
    reopened = store.transition(first.id, IncidentState.DETECTED, expected=[IncidentState.FAILED],
                                event=event("reopen"))
    assert reopened.is_open and store.find_open(a) == store.get(first.id)


def test_suppressed_open_does_not_take_the_lock(store: TableIncidentStore) -> None:
    a = vm("a")
    suppressed, created = store.open(a, FAILURE, source="cli", now=NOW, state=IncidentState.SUPPRESSED,
                                     reason="dry run")
    assert created and suppressed.reason == "dry run"
    assert store.find_open(a) is None
    assert store.open(a, FAILURE, source="alert", now=NOW + timedelta(seconds=1))[1]


def test_timeline_keeps_order_and_loses_nothing_under_concurrent_appends(store: TableIncidentStore) -> None:
    incident, _ = store.open(vm("a"), FAILURE, source="alert", now=NOW)
    for i in range(10):
        store.append_event(incident.id, event(f"step{i}", NOW + timedelta(seconds=i), n=i))
    race(20, lambda i: [store.append_event(incident.id, event("parallel", t=i, k=k)) for k in range(5)])
    timeline = store.timeline(incident.id)
    assert [e.kind for e in timeline[:11]] == [EVENT_OPENED] + [f"step{i}" for i in range(10)]
    assert timeline[5].data == {"n": 4}
    parallel = [e for e in timeline if e.kind == "parallel"]
    assert len(parallel) == 100
    for t in range(20):
        assert [e.data["k"] for e in parallel if e.data["t"] == t] == list(range(5))


def test_counts_list_and_instance(store: TableIncidentStore) -> None:
    ids = []
    for i in range(5):
        incident, _ = store.open(vm(f"vm{i}"), FAILURE, source="sweep", now=NOW + timedelta(minutes=10 * i))
        ids.append(incident.id)
    store.transition(ids[0], IncidentState.SUPPRESSED, expected=None, event=event("s"))
    assert store.count_opened_since(NOW + timedelta(minutes=15)) == 3
    assert store.count_opened_since(NOW) == 5
    assert store.count_in_state([IncidentState.DETECTED]) == 4
    assert store.count_in_state([IncidentState.DETECTED, IncidentState.SUPPRESSED]) == 5
    assert store.count_in_state([]) == 0
    assert [i.id for i in store.list()] == list(reversed(ids))
    assert [i.id for i in store.list(limit=2)] == [ids[4], ids[3]]
    assert [i.id for i in store.list(IncidentState.SUPPRESSED)] == [ids[0]]
    # The filter runs in the table query: old incidents are never read.
    assert [i.id for i in store.list(IncidentState.DETECTED, updated_since=NOW + timedelta(minutes=25))] == \
        [ids[4], ids[3]]
    assert store.get(ids[1]).awaiting_start and not store.get(ids[1]).is_queued
    started = store.set_instance(ids[1], "repair-" + ids[1], event("repair_started"))
    assert started.instance_id == "repair-" + ids[1] and not store.get(ids[1]).awaiting_start
    assert store.get(ids[1]).state is IncidentState.DETECTED


def test_a_stale_lock_is_cleared(store: TableIncidentStore, settings: Settings) -> None:
    a = vm("a")
    table = TableServiceClient.from_connection_string(settings.storage_connection or "").get_table_client(
        settings.incident_table)
    table.create_entity({"PartitionKey": INCIDENT_PARTITION, "RowKey": lock_key(a), "IncidentId": "inc-gone"})
    incident, created = store.open(a, FAILURE, source="alert", now=NOW)
    assert created and store.find_open(a) == store.get(incident.id)


def test_large_findings_are_trimmed_to_fit(store: TableIncidentStore) -> None:
    big = Finding(Verdict.SELINUX_POLICY_FAILURE,
                  evidence=tuple(Evidence(i, "x" * 900) for i in range(200)), reason="r" * 100)
    incident, _ = store.open(vm("a"), big, source="alert", now=NOW)
    finding = store.get(incident.id).finding
    assert finding["truncated"] is True and 0 < len(finding["evidence"]) < 200
    assert len(json.dumps(finding)) <= 30000


def test_from_settings_needs_storage() -> None:
    with pytest.raises(SettingsError, match="no incident storage configured"):
        from_settings(Settings())


def test_100_concurrent_alerts_through_intake_open_one_incident(store: TableIncidentStore) -> None:
    s = Settings(subscriptions=(SUB,))
    vms = FakeVms()
    frozen = vms.add(make_vm("frozen"), FROZEN_LOG).ref.id
    starter = FakeStarter()
    body = json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
        "monitorCondition": "Fired", "alertTargetIDs": [frozen]}}}).encode()

    def deliver(i: int) -> intake.AlertOutcome:
        return asyncio.run(intake.handle_alert(body, settings=s, vms=vms, store=store, starter=starter,
                                               now=NOW + timedelta(milliseconds=i)))

    outcomes = race(25, lambda n: [deliver(n * 4 + k) for k in range(4)])
    actions = [o.results[0].action for batch in outcomes for o in batch]
    assert len(actions) == 100
    assert actions.count(intake.REPAIR_STARTED) == 1
    assert len(store.list()) == 1 and len(starter.started) == 1


def test_100_alerts_gathered_on_one_event_loop_open_one_incident(store: TableIncidentStore) -> None:
    s = Settings(subscriptions=(SUB,))
    vms = FakeVms()
    frozen = vms.add(make_vm("frozen"), FROZEN_LOG).ref.id
    starter = FakeStarter()
    body = json.dumps([{"id": "e", "eventType": "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated",
                        "subject": frozen, "data": {"resourceInfo": {"properties": {"targetResourceId": frozen}}}}]
                      ).encode()

    async def burst() -> list[intake.AlertOutcome]:
        return await asyncio.gather(*(
            intake.handle_alert(body, settings=s, vms=vms, store=store, starter=starter,
                                now=NOW + timedelta(microseconds=i))
            for i in range(100)
        ))

    actions = [o.results[0].action for o in asyncio.run(burst())]
    assert actions.count(intake.REPAIR_STARTED) == 1 and actions.count(intake.ALREADY_OPEN) == 99
    assert len(store.list()) == 1 and len(starter.started) == 1
