"""Intake (webhook and sweep) against stateful fakes: scope, tags, confirmation, brake, cap and races."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from remediation import intake
from remediation.incidents import EVENT_DUPLICATE, EVENT_OPENED, EVENT_REPAIR_STARTED
from remediation.model import (
    IncidentState,
    InvalidInput,
    PowerState,
    TimelineEvent,
    TransientError,
    VmRef,
    instance_id_for,
)
from remediation.settings import Settings
from tests.fakes import (
    BOOTED_LOG,
    FROZEN_LOG,
    OTHER_SUB,
    SUB,
    FakeHeartbeats,
    FakeStarter,
    FakeVms,
    InMemoryIncidentStore,
    make_vm,
    vm_id,
)

NOW = datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC)
SERIAL = Path(__file__).resolve().parent.parent / "data" / "serial"
POLICY_MISSING_LOG = (SERIAL / "debian12_permissive_policy_missing.log").read_bytes()
OTHER_FAILURE_LOG = (SERIAL / "rhel8_fstab_emergency_mode.log").read_bytes()


def make_settings(**env: str) -> Settings:
    return Settings.from_env({"REMEDIATION_SUBSCRIPTIONS": SUB, **env})


def alert(*ids: str, condition: str = "Fired") -> bytes:
    return json.dumps({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {"essentials": {"monitorCondition": condition, "monitoringService": "Platform",
                                "alertTargetIDs": list(ids)}, "alertContext": {}},
    }).encode()


class World:
    """The fakes of one test, and helpers to run the two entry points against them."""

    def __init__(self, **env: str) -> None:
        self.settings = make_settings(**env)
        self.vms = FakeVms()
        self.store = InMemoryIncidentStore()
        self.starter = FakeStarter()
        self.heartbeats = FakeHeartbeats()

    def frozen(self, name: str, **kw: Any) -> str:
        return self.vms.add(make_vm(name, **kw), FROZEN_LOG).ref.id

    def alert(self, *ids: str, now: datetime = NOW, **kw: Any) -> intake.AlertOutcome:
        return asyncio.run(intake.handle_alert(alert(*ids, **kw), settings=self.settings, vms=self.vms,
                                               store=self.store, starter=self.starter, now=now))

    def sweep(self, now: datetime = NOW) -> intake.SweepOutcome:
        return asyncio.run(intake.sweep(settings=self.settings, vms=self.vms, heartbeats=self.heartbeats,
                                        store=self.store, starter=self.starter, now=now))


def only(outcome: intake.AlertOutcome) -> intake.VmOutcome:
    assert len(outcome.results) == 1, outcome.results
    return outcome.results[0]


# ---------------------------------------------------------------------------------------------- the happy path


def test_confirmed_failure_opens_an_incident_and_starts_one_repair() -> None:
    w = World(REMEDIATION_APPROVAL_REQUIRED="true")
    vm = w.frozen("web-01")
    result = only(w.alert(vm))
    assert result.action == intake.REPAIR_STARTED
    assert result.verdict == "selinux_policy_failure"
    incident = w.store.get(result.incident_id or "")
    assert incident.state is IncidentState.DETECTED
    assert incident.vm.id == vm and incident.source == "alert"
    assert incident.instance_id == instance_id_for(incident.id)
    payload = w.starter.started[incident.instance_id]
    assert payload["incident_id"] == incident.id and payload["vm_id"] == vm
    assert payload["finding"]["verdict"] == "selinux_policy_failure"
    assert payload["approval_required"] is True
    assert payload["options"] == w.settings.repair_options()
    json.dumps(payload)
    assert [e.kind for e in w.store.timeline(incident.id)] == [EVENT_OPENED, EVENT_REPAIR_STARTED]
    assert w.vms.serial_reads == 1


def test_outcome_is_json() -> None:
    w = World()
    out = w.alert(w.frozen("a"), vm_id("disk", "rg").replace("virtualMachines", "disks"))
    body = json.loads(json.dumps(out.to_dict()))
    assert body["kind"] == "common_alert" and body["validation_response"] is None
    assert body["results"][0]["action"] == "repair_started"
    assert body["ignored"][0]["reason"].startswith("a managed disk")
    assert body["brake"] is None


def test_validation_handshake_touches_nothing() -> None:
    w = World()
    body = json.dumps([{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                        "data": {"validationCode": "code-123"}, "subject": "", "dataVersion": "1"}]).encode()
    out = asyncio.run(intake.handle_alert(body, settings=w.settings, vms=w.vms, store=w.store, starter=w.starter,
                                          now=NOW))
    assert out.validation_code == "code-123"
    assert out.to_dict()["validation_response"] == "code-123"
    assert w.store.list() == [] and w.vms.get_calls == 0


def test_malformed_payload_raises_invalid_input() -> None:
    w = World()
    with pytest.raises(InvalidInput, match="not JSON"):
        asyncio.run(intake.handle_alert(b"{", settings=w.settings, vms=w.vms, store=w.store, starter=w.starter,
                                        now=NOW))


def test_resolved_alert_does_nothing() -> None:
    w = World()
    out = w.alert(w.frozen("a"), condition="Resolved")
    assert out.results == [] and "resolved" in out.ignored[0].reason
    assert w.store.list() == [] and w.vms.serial_reads == 0


# ---------------------------------------------------------------------------------------------- scope and tags


def test_out_of_scope_subscription_and_resource_group_are_never_read() -> None:
    w = World(REMEDIATION_RESOURCE_GROUPS="app-prod")
    other_sub = w.frozen("a", sub=OTHER_SUB)
    other_rg = w.frozen("b", rg="sandbox")
    out = w.alert(other_sub, other_rg)
    assert [r.action for r in out.results] == [intake.OUT_OF_SCOPE, intake.OUT_OF_SCOPE]
    assert "REMEDIATION_SUBSCRIPTIONS" in out.results[0].reason
    assert "REMEDIATION_RESOURCE_GROUPS" in out.results[1].reason
    assert w.vms.get_calls == 0 and w.vms.serial_reads == 0 and w.store.list() == []


def test_opt_out_and_opt_in_tags() -> None:
    w = World(REMEDIATION_OPT_IN_TAG="auto-repair=yes")
    out_vm = w.frozen("out", tags={"auto-repair": "yes", "selinux-remediation": "Off"})
    not_in = w.frozen("notin")
    opted_in = w.frozen("in", tags={"auto-repair": "yes"})
    results = {r.vm_id: r for r in w.alert(out_vm, not_in, opted_in).results}
    assert results[out_vm].action == intake.OPTED_OUT and "opted out" in results[out_vm].reason
    assert results[not_in].action == intake.OPTED_OUT and "not opted in" in results[not_in].reason
    assert results[opted_in].action == intake.REPAIR_STARTED
    assert w.vms.serial_reads == 1 and len(w.store.list()) == 1


def test_windows_missing_and_stopped_vms_are_not_confirmed() -> None:
    w = World()
    windows = w.vms.add(make_vm("win", os_type="Windows"), FROZEN_LOG).ref.id
    stopped = w.vms.add(make_vm("off", power=PowerState.DEALLOCATED), FROZEN_LOG).ref.id
    gone = vm_id("gone")
    results = {r.vm_id: r for r in w.alert(windows, stopped, gone).results}
    assert results[windows].action == intake.OBSERVED and "not a Linux VM" in results[windows].reason
    assert results[stopped].action == intake.OBSERVED and "deallocated" in results[stopped].reason
    assert results[gone].action == intake.IGNORED and "does not exist" in results[gone].reason
    assert w.vms.serial_reads == 0 and w.store.list() == []


# ---------------------------------------------------------------------------------------------- confirmation


@pytest.mark.parametrize(("log", "verdict"), [(BOOTED_LOG, "booted"), (OTHER_FAILURE_LOG, "other_boot_failure"),
                                              (b"", "inconclusive")])
def test_other_verdicts_are_observations_not_incidents(log: bytes, verdict: str) -> None:
    w = World()
    vm = w.vms.add(make_vm("a"), log).ref.id
    result = only(w.alert(vm))
    assert (result.action, result.verdict, result.incident_id) == (intake.OBSERVED, verdict, None)
    assert w.store.list() == [] and w.starter.started == {}


def test_policy_missing_is_repaired_only_when_enabled() -> None:
    w = World()
    vm = w.vms.add(make_vm("a"), POLICY_MISSING_LOG).ref.id
    result = only(w.alert(vm))
    assert (result.action, result.verdict) == (intake.OBSERVED, "selinux_policy_missing")
    assert "REMEDIATION_REPAIR_POLICY_MISSING" in result.reason
    w.settings = make_settings(REMEDIATION_REPAIR_POLICY_MISSING="yes")
    assert only(w.alert(vm)).action == intake.REPAIR_STARTED


def test_boot_diagnostics_off_is_an_observation_with_the_reason() -> None:
    w = World()
    vm = w.frozen("a")
    w.vms.boot_diagnostics_off.add(VmRef.parse(vm).key)
    result = only(w.alert(vm))
    assert result.action == intake.OBSERVED and "boot diagnostics are disabled" in result.reason


def test_serial_tail_is_requested_with_the_configured_size() -> None:
    w = World(REMEDIATION_SERIAL_TAIL_BYTES="4096")
    noise = b"x" * 5000 + b"\n"
    vm = w.vms.add(make_vm("a"), noise + FROZEN_LOG).ref.id
    # Only the last 4096 bytes are read: the freeze at the end is still found.
    assert only(w.alert(vm)).action == intake.REPAIR_STARTED


# ---------------------------------------------------------------------------------------------- safety valves


def test_dry_run_records_and_never_repairs() -> None:
    w = World(REMEDIATION_DRY_RUN="true")
    result = only(w.alert(w.frozen("a")))
    assert result.action == intake.DRY_RUN
    incident = w.store.get(result.incident_id or "")
    assert incident.state is IncidentState.SUPPRESSED and incident.reason == "dry run"
    assert w.starter.started == {}


def test_a_dry_run_records_a_vm_once_per_window_however_often_it_is_signalled() -> None:
    # Every alert and every sweep used to record one more suppressed incident for the same VM, and
    # those records counted towards the blast-radius brake.
    w = World(REMEDIATION_DRY_RUN="true", REMEDIATION_BLAST_RADIUS_MAX_VMS="2")
    vm = w.frozen("a")
    first = only(w.alert(vm))
    for minutes in (5, 10, 15):
        again = only(w.alert(vm, now=NOW + timedelta(minutes=minutes)))
        assert again.action == intake.DRY_RUN and again.incident_id == first.incident_id
        assert "already recorded" in again.reason and "brake" not in again.reason
        assert w.sweep(now=NOW + timedelta(minutes=minutes, seconds=30)).suppressed == 1
    assert [i.id for i in w.store.list()] == [first.incident_id]
    kinds = [e.kind for e in w.store.timeline(first.incident_id or "")]
    assert kinds.count("duplicate_signal") == 3, kinds  # alerts are noted, sweeps are not
    # After the window the VM is recorded afresh.
    later = only(w.alert(vm, now=NOW + timedelta(hours=25)))
    assert later.action == intake.DRY_RUN and later.incident_id != first.incident_id


def test_without_a_window_a_dry_run_records_every_signal() -> None:
    w = World(REMEDIATION_DRY_RUN="true", REMEDIATION_RETRY_AFTER_FAILURE_HOURS="0")
    vm = w.frozen("a")
    ids = {only(w.alert(vm, now=NOW + timedelta(minutes=m))).incident_id for m in (0, 5)}
    assert len(ids) == 2


def test_a_dry_run_record_does_not_hold_back_a_live_repair() -> None:
    w = World(REMEDIATION_DRY_RUN="true")
    vm = w.frozen("a")
    only(w.alert(vm))
    w.settings = make_settings()
    assert only(w.alert(vm, now=NOW + timedelta(minutes=5))).action == intake.REPAIR_STARTED


def test_dry_run_says_when_the_brake_would_hold_a_repair() -> None:
    # A dry run reported brake-held VMs as "suppressed" like a live run, hiding that nothing was live.
    w = World(REMEDIATION_DRY_RUN="true", REMEDIATION_BLAST_RADIUS_MAX_VMS="1")
    out = w.alert(w.frozen("a"), w.frozen("b"))
    assert [r.action for r in out.results] == [intake.DRY_RUN, intake.DRY_RUN]
    held = [r for r in out.results if "brake would hold" in r.reason]
    assert len(held) == 1 and "blast radius" in held[0].reason
    assert w.starter.started == {}


def test_blast_radius_brake_suppresses_beyond_the_limit_loudly(caplog: pytest.LogCaptureFixture) -> None:
    w = World(REMEDIATION_BLAST_RADIUS_MAX_VMS="2", REMEDIATION_MAX_CONCURRENT_REPAIRS="10")
    ids = [w.frozen(f"vm{i}") for i in range(4)]
    with caplog.at_level(logging.CRITICAL, logger="remediation.intake"):
        out = w.alert(*ids)
    actions = sorted(r.action for r in out.results)
    assert actions == [intake.REPAIR_STARTED] * 2 + [intake.SUPPRESSED] * 2
    assert out.brake is not None and out.brake["tripped"] and out.brake["max_vms"] == 2
    assert len(w.starter.started) == 2
    suppressed = w.store.list(IncidentState.SUPPRESSED)
    assert len(suppressed) == 2 and all(i.reason.startswith("blast radius:") for i in suppressed)
    assert any(r.levelno == logging.CRITICAL and "BLAST RADIUS" in r.getMessage() for r in caplog.records)
    # Still within the window: the next VM is suppressed too; after the window it is repaired.
    late = w.frozen("late")
    assert only(w.alert(late, now=NOW + timedelta(minutes=30))).action == intake.SUPPRESSED
    later = w.frozen("later")
    assert only(w.alert(later, now=NOW + timedelta(minutes=61))).action == intake.REPAIR_STARTED


def test_blast_radius_percent_applies_when_the_sweep_knows_the_scope() -> None:
    w = World(REMEDIATION_BLAST_RADIUS_MAX_PERCENT="10", REMEDIATION_MAX_CONCURRENT_REPAIRS="10")
    for i in range(20):
        w.vms.add(make_vm(f"ok{i}", agent_ready=True), BOOTED_LOG)
    for i in range(3):
        w.frozen(f"bad{i}")
    out = w.sweep()
    assert out.vms_seen == 23
    # 2 of 23 is under 10 %, the third (13 %) trips the brake.
    assert (out.started, out.suppressed) == (2, 1)
    assert out.brake is not None and "MAX_PERCENT" in out.brake["limit"]


def test_concurrency_cap_queues_and_the_next_sweep_starts_it() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="1")
    w.starter.extra_running = 1
    result = only(w.alert(w.frozen("a")))
    assert result.action == intake.QUEUED and "REMEDIATION_MAX_CONCURRENT_REPAIRS=1" in result.reason
    incident = w.store.get(result.incident_id or "")
    assert incident.is_queued and w.starter.started == {}
    # Still at the cap: the sweep leaves it queued.
    assert w.sweep().queued == 1 and w.store.get(incident.id).is_queued
    w.starter.extra_running = 0
    swept = w.sweep(now=NOW + timedelta(minutes=5))
    assert swept.started == 1
    assert w.store.get(incident.id).instance_id == instance_id_for(incident.id)
    assert list(w.starter.started) == [instance_id_for(incident.id)]


def hand_on(w: World, now: datetime = NOW) -> list[intake.VmOutcome]:
    """What a repair does as it ends: start what the cap held back."""
    return asyncio.run(intake.start_queued(settings=w.settings, vms=w.vms, store=w.store, starter=w.starter,
                                           now=now))


def test_an_ending_repair_starts_the_oldest_queued_incidents_up_to_the_cap() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="2", REMEDIATION_BLAST_RADIUS_MAX_VMS="10")
    w.starter.extra_running = 2
    ids = [only(w.alert(w.frozen(f"vm{i}"), now=NOW + timedelta(seconds=i))).incident_id for i in range(3)]
    assert all(w.store.get(i or "").is_queued for i in ids)
    w.starter.extra_running = 1  # one repair ended
    out = hand_on(w, NOW + timedelta(minutes=1))
    assert [r.action for r in out] == [intake.REPAIR_STARTED, intake.QUEUED]
    assert list(w.starter.started) == [instance_id_for(ids[0] or "")]


def test_an_ending_repair_leaves_orphaned_incidents_to_the_sweep() -> None:
    # The sweep checks an orphan against the brake with the scope's size, which an ending repair lacks.
    w = World()
    from remediation.detect import analyze_bytes

    incident, _ = w.store.open(VmRef.parse(w.frozen("a")), analyze_bytes(FROZEN_LOG), source="alert", now=NOW)
    assert hand_on(w, NOW + intake.ORPHAN_AFTER + timedelta(minutes=1)) == []
    assert w.starter.started == {} and w.store.get(incident.id).awaiting_start


def test_a_transient_error_stops_the_queue_rather_than_start_a_younger_incident() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="1", REMEDIATION_BLAST_RADIUS_MAX_VMS="10")
    w.starter.extra_running = 1
    first = only(w.alert(w.frozen("a"))).incident_id or ""
    only(w.alert(w.frozen("b"), now=NOW + timedelta(seconds=1)))
    w.starter.extra_running = 0
    real_get = w.vms.get_vm

    def flaky(vm: VmRef) -> Any:
        if vm.name == "a":
            raise TransientError("read VM a: HTTP 503")
        return real_get(vm)

    w.vms.get_vm = flaky  # type: ignore[method-assign]
    out = hand_on(w, NOW + timedelta(minutes=1))
    assert [r.action for r in out] == [intake.OBSERVED] and w.starter.started == {}
    w.vms.get_vm = real_get  # type: ignore[method-assign]
    assert [r.action for r in hand_on(w, NOW + timedelta(minutes=2))] == [intake.REPAIR_STARTED, intake.QUEUED]
    assert list(w.starter.started) == [instance_id_for(first)]


def test_cap_counts_repairs_started_within_one_delivery() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="2", REMEDIATION_BLAST_RADIUS_MAX_VMS="10")
    out = w.alert(*[w.frozen(f"vm{i}") for i in range(5)])
    assert sorted(r.action for r in out.results) == [intake.QUEUED] * 3 + [intake.REPAIR_STARTED] * 2
    assert len(w.starter.started) == 2


def test_queued_incident_of_a_vm_that_opted_out_meanwhile_is_suppressed() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="1")
    w.starter.extra_running = 1
    vm = w.frozen("a")
    incident_id = only(w.alert(vm)).incident_id or ""
    w.starter.extra_running = 0
    w.vms.add(make_vm("a", tags={"selinux-remediation": "off"}), FROZEN_LOG)
    w.sweep()
    assert w.store.get(incident_id).state is IncidentState.SUPPRESSED
    assert w.starter.started == {}


def test_sweep_leaves_an_undecided_incident_alone_but_recovers_an_orphan() -> None:
    # An incident another delivery has just opened (brake and dry run not yet decided) must not be started
    # by a concurrent sweep; one left undecided by a crashed host is picked up after ORPHAN_AFTER.
    w = World()
    ref = VmRef.parse(w.frozen("a"))
    from remediation.detect import analyze_bytes

    incident, _ = w.store.open(ref, analyze_bytes(FROZEN_LOG), source="alert", now=NOW)
    w.sweep(now=NOW + timedelta(minutes=1))
    assert w.starter.started == {} and w.store.get(incident.id).awaiting_start
    out = w.sweep(now=NOW + intake.ORPHAN_AFTER + timedelta(minutes=1))
    assert out.started == 1 and list(w.starter.started) == [instance_id_for(incident.id)]


def test_sweep_skips_listed_windows_vms_without_reading_them() -> None:
    w = World()
    w.vms.add(make_vm("win", os_type="Windows"), FROZEN_LOG)
    out = w.sweep()
    assert (out.vms_seen, out.candidates) == (1, 0) and w.vms.get_calls == 0


# ---------------------------------------------------------------------------------------------- duplicates and races


def test_second_alert_for_an_open_incident_is_a_duplicate() -> None:
    w = World()
    vm = w.frozen("a")
    first = only(w.alert(vm))
    second = only(w.alert(vm, now=NOW + timedelta(minutes=1)))
    assert second.action == intake.ALREADY_OPEN and second.incident_id == first.incident_id
    assert w.vms.serial_reads == 1  # the open incident short-cuts the expensive read
    assert EVENT_DUPLICATE in [e.kind for e in w.store.timeline(first.incident_id or "")]
    assert len(w.starter.started) == 1


def test_closed_incident_lets_a_later_failure_open_a_new_one() -> None:
    w = World()
    vm = w.frozen("a")
    first = only(w.alert(vm)).incident_id or ""
    w.store.transition(first, IncidentState.RESOLVED, expected=[IncidentState.DETECTED],
                       event=TimelineEvent(at=NOW.isoformat(), kind="resolved", message="booted"))
    again = only(w.alert(vm, now=NOW + timedelta(hours=2)))
    assert again.action == intake.REPAIR_STARTED and again.incident_id != first
    assert len(w.starter.started) == 2


def test_start_refused_by_the_runtime_is_recorded_as_already_running() -> None:
    w = World()
    vm = w.frozen("a")
    ref = VmRef.parse(vm)
    from remediation.model import incident_id_for

    expected_id = incident_id_for(ref, NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    w.starter.started[instance_id_for(expected_id)] = {}
    result = only(w.alert(vm))
    assert result.incident_id == expected_id and "already running" in result.reason
    assert "already_running" in [e.kind for e in w.store.timeline(expected_id)]


def test_100_concurrent_duplicate_alerts_give_one_incident_and_one_repair() -> None:
    w = World()
    vm = w.frozen("a")
    body = alert(vm)

    async def burst() -> list[intake.AlertOutcome]:
        return await asyncio.gather(*(
            intake.handle_alert(body, settings=w.settings, vms=w.vms, store=w.store, starter=w.starter,
                                now=NOW + timedelta(microseconds=i))
            for i in range(100)
        ))

    outcomes = asyncio.run(burst())
    actions = [only(o).action for o in outcomes]
    assert actions.count(intake.REPAIR_STARTED) == 1
    assert actions.count(intake.ALREADY_OPEN) == 99
    assert len(w.store.list()) == 1
    assert len(w.starter.started) == 1
    assert {only(o).incident_id for o in outcomes} == {w.store.list()[0].id}


def test_100_duplicate_alerts_from_threads_with_their_own_event_loops() -> None:
    w = World()
    vm = w.frozen("a")
    body = alert(vm)
    outcomes: list[intake.AlertOutcome] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(5):
            out = asyncio.run(intake.handle_alert(body, settings=w.settings, vms=w.vms, store=w.store,
                                                  starter=w.starter, now=NOW + timedelta(microseconds=n * 10 + i)))
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 100
    assert [only(o).action for o in outcomes].count(intake.REPAIR_STARTED) == 1
    assert len(w.store.list()) == 1 and len(w.starter.started) == 1


# ---------------------------------------------------------------------------------------------- sweep


def test_sweep_reads_serial_logs_of_candidates_only() -> None:
    w = World()
    for i in range(30):
        w.vms.add(make_vm(f"healthy{i}", agent_ready=True), BOOTED_LOG)
    w.vms.add(make_vm("stopped", power=PowerState.DEALLOCATED, agent_ready=None), FROZEN_LOG)
    w.vms.add(make_vm("unknown-agent", agent_ready=None), BOOTED_LOG)
    w.vms.add(make_vm("elsewhere", sub=OTHER_SUB), FROZEN_LOG)
    frozen = w.frozen("frozen")
    booted_slowly = w.vms.add(make_vm("slow"), BOOTED_LOG).ref.id
    out = w.sweep()
    assert out.vms_seen == 34
    assert out.candidates == 2
    assert w.vms.serial_reads == 2 and w.vms.list_calls == 1
    results = {r.vm_id: r for r in out.results}
    assert results[frozen].action == intake.REPAIR_STARTED
    assert results[booted_slowly].action == intake.OBSERVED
    assert (out.confirmed, out.started, out.observations) == (1, 1, 1)
    assert w.store.list()[0].source == "sweep"
    json.dumps(out.to_dict())


def test_sweep_adds_stale_heartbeats_when_workspaces_are_configured() -> None:
    w = World(REMEDIATION_HEARTBEAT_WORKSPACE_IDS="0f9e8d7c-6b5a-4938-a1b2-c3d4e5f60718",
              REMEDIATION_HEARTBEAT_STALE_MINUTES="20")
    hb_frozen = w.vms.add(make_vm("hb", agent_ready=None), FROZEN_LOG).ref.id
    deallocated = w.vms.add(make_vm("dealloc", power=PowerState.DEALLOCATED, agent_ready=None), FROZEN_LOG).ref.id
    w.heartbeats.stale = [hb_frozen.lower(), deallocated, vm_id("x", sub=OTHER_SUB), "garbage"]
    out = w.sweep()
    assert w.heartbeats.asked == [timedelta(minutes=20)]
    assert out.candidates == 1
    assert [r.vm_id for r in out.results] == [hb_frozen]
    assert out.started == 1


def test_sweep_ignores_heartbeats_without_workspaces() -> None:
    w = World()
    w.heartbeats.stale = [w.vms.add(make_vm("hb", agent_ready=None), FROZEN_LOG).ref.id]
    out = w.sweep()
    assert out.candidates == 0 and w.heartbeats.asked == []


def test_sweep_reports_a_subscription_it_cannot_list() -> None:
    from remediation.model import TransientError

    class Throttled(FakeVms):
        def list_vm_statuses(self, subscription_id: str) -> list[Any]:
            if subscription_id == OTHER_SUB:
                raise TransientError("429 too many requests")
            return list(super().list_vm_statuses(subscription_id))

    w = World(REMEDIATION_SUBSCRIPTIONS=f"{SUB},{OTHER_SUB}")
    w.vms = Throttled()
    w.frozen("a")
    out = w.sweep()
    assert out.started == 1
    assert out.errors == [f"subscription {OTHER_SUB}: 429 too many requests"]


def test_sweep_in_dry_run_suppresses_and_counts() -> None:
    w = World(REMEDIATION_DRY_RUN="1")
    w.frozen("a")
    out = w.sweep()
    assert (out.confirmed, out.started, out.suppressed) == (1, 0, 1)
    assert w.starter.started == {}


def test_dry_run_sweep_leaves_incidents_it_did_not_open_alone() -> None:
    w = World(REMEDIATION_MAX_CONCURRENT_REPAIRS="1")
    w.starter.extra_running = 1
    queued = only(w.alert(w.frozen("a"))).incident_id or ""
    w.settings = make_settings(REMEDIATION_DRY_RUN="true")
    w.starter.extra_running = 0
    w.sweep()
    assert w.store.get(queued).is_queued and w.starter.started == {}


def test_dry_run_alert_never_touches_azure() -> None:
    summary = intake.dry_run_alert(alert(vm_id("a"), vm_id("a").upper().replace("/SUBSCRIPTIONS/", "/subscriptions/")),
                                   max_bytes=1 << 20)
    assert summary == {"kind": "common_alert", "targets": [vm_id("a")], "ignored": [], "monitor_condition": "Fired"}


def test_a_vm_whose_repair_failed_is_not_retried_within_the_window() -> None:
    # A VM the repair cannot heal was opened, repaired and rolled back again on every sweep.
    w = World()
    vm = w.frozen("stubborn")
    first = only(w.alert(vm))
    assert first.action == intake.REPAIR_STARTED
    w.store.transition(first.incident_id or "", IncidentState.ROLLED_BACK, expected=None,
                       event=TimelineEvent(at=NOW.isoformat(), kind="rolled_back", message="did not boot"),
                       reason="the repaired disk did not boot")
    again = only(w.alert(vm, now=NOW + timedelta(hours=1)))
    assert again.action == intake.BACKED_OFF
    assert again.incident_id == first.incident_id and "did not boot" in again.reason
    assert "REMEDIATION_RETRY_AFTER_FAILURE_HOURS" in again.reason
    assert w.sweep(now=NOW + timedelta(hours=2)).started == 0
    assert len(w.starter.started) == 1
    # After the window the VM gets one more attempt.
    later = only(w.alert(vm, now=NOW + timedelta(hours=25)))
    assert later.action == intake.REPAIR_STARTED
