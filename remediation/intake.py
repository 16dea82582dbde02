"""From signal to incident: the alert webhook and the periodic sweep, against the ports only.

Both paths end in the same per-VM decision, in this order, each step cheaper than the next:

1. scope: the subscription (and resource group) must be in the settings' scope;
2. an open incident for the VM already exists -> nothing new (the signal is noted on its timeline);
3. the VM (one ARM read): gone -> ignored, not Linux or not running -> observation, opt-out tag
   (or missing opt-in tag) -> opted out;
4. confirmation: the tail of the serial log is read (off the event loop, a bounded number at once) and
   judged by the detector; only `selinux_policy_failure` (and `selinux_policy_missing` when enabled)
   opens an incident, anything else is an observation;
5. the store opens the incident (at most one open per VM, whatever races);
6. blast radius brake: more incidents opened within the window than allowed -> SUPPRESSED, loudly;
7. dry run -> SUPPRESSED with reason "dry run" (recorded once per VM per REMEDIATION_RETRY_AFTER_FAILURE_HOURS
   and reported, never repaired);
8. concurrency cap: too many repairs running -> left DETECTED (queued; started as soon as a running
   repair ends, or by the next sweep);
9. the repair orchestration is started with an instance id derived from the incident id, so a
   second start is refused by the durable runtime rather than repairing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from remediation import detect
from remediation.alerts import Ignored, ParsedAlert, parse_payload
from remediation.incidents import (
    EVENT_ALREADY_RUNNING,
    EVENT_DUPLICATE,
    EVENT_QUEUED,
    EVENT_REPAIR_STARTED,
    EVENT_SUPPRESSED,
    QUEUED_REASON_PREFIX,
    Incident,
    IncidentStore,
    iso,
    parse_iso,
)
from remediation.model import (
    ConflictError,
    Finding,
    IncidentState,
    InvalidInput,
    NotFoundError,
    PowerState,
    RemediationError,
    SettingsError,
    TimelineEvent,
    Verdict,
    VmInfo,
    VmRef,
    instance_id_for,
)
from remediation.ports import HeartbeatSource, RepairStarter, VmReader
from remediation.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Per-VM actions reported in outcomes.
REPAIR_STARTED = "repair_started"
ALREADY_OPEN = "already_open"
DRY_RUN = "dry_run"
SUPPRESSED = "suppressed"
QUEUED = "queued"
# The reason of an incident a dry run recorded starts with this.
DRY_RUN_REASON = "dry run"
OBSERVED = "observed"
IGNORED = "ignored"
OUT_OF_SCOPE = "out_of_scope"
OPTED_OUT = "opted_out"
BACKED_OFF = "backed_off"

_BOOTING = (PowerState.RUNNING, PowerState.STARTING, PowerState.UNKNOWN)
_QUEUE_SCAN_LIMIT = 1000
ORPHAN_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class VmOutcome:
    """What happened to one VM named by a signal."""

    vm_id: str
    action: str
    verdict: str | None = None
    incident_id: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm_id": self.vm_id,
            "action": self.action,
            "verdict": self.verdict,
            "incident_id": self.incident_id,
            "reason": self.reason,
        }


@dataclass
class AlertOutcome:
    """The answer to one alert delivery."""

    kind: str
    results: list[VmOutcome] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    brake: dict[str, Any] | None = None
    validation_code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "validation_response": self.validation_code,
            "results": [r.to_dict() for r in self.results],
            "ignored": [i.to_dict() for i in self.ignored],
            "brake": self.brake,
        }


@dataclass
class SweepOutcome:
    """What one sweep saw and did."""

    vms_seen: int = 0
    candidates: int = 0
    confirmed: int = 0
    started: int = 0
    suppressed: int = 0
    observations: int = 0
    queued: int = 0
    results: list[VmOutcome] = field(default_factory=list)
    brake: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vms_seen": self.vms_seen,
            "candidates": self.candidates,
            "confirmed": self.confirmed,
            "started": self.started,
            "suppressed": self.suppressed,
            "observations": self.observations,
            "queued": self.queued,
            "results": [r.to_dict() for r in self.results],
            "brake": self.brake,
            "errors": list(self.errors),
        }


def _maybe_linux(info: VmInfo) -> bool:
    return not info.os_type or info.os_type.strip().lower() == "linux"


def actionable(verdict: Verdict, settings: Settings) -> bool:
    """Whether a verdict opens a repair incident under these settings."""
    if verdict is Verdict.SELINUX_POLICY_FAILURE:
        return True
    return verdict is Verdict.SELINUX_POLICY_MISSING and settings.repair_policy_missing


def _analyze(data: bytes, requested: int) -> Finding:
    # A read that filled the request is the end of a longer log: its first line is probably cut.
    return detect.analyze_bytes(data, tail=len(data) >= requested)


class _Run:
    """One alert delivery or one sweep: shared limits and the brake state."""

    def __init__(
        self,
        *,
        settings: Settings,
        vms: VmReader,
        store: IncidentStore,
        starter: RepairStarter,
        now: datetime,
        source: str,
        scope_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.vms = vms
        self.store = store
        self.starter = starter
        self.now = now
        self.stamp = iso(now)
        self.source = source
        self.scope_size = scope_size
        self.reads = asyncio.Semaphore(settings.sweep_concurrency)
        self.start_lock = asyncio.Lock()
        self.open_lock = asyncio.Lock()
        self._newest: dict[str, dict[str, Incident]] = {}
        self.started_here = 0
        self.brake: dict[str, Any] | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking port call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def event(self, kind: str, message: str, **data: Any) -> TimelineEvent:
        return TimelineEvent(at=self.stamp, kind=kind, message=message, data=data)

    # ------------------------------------------------------------------ per VM

    async def process(self, vm: VmRef, info: VmInfo | None = None) -> VmOutcome:
        try:
            return await self._process(vm, info)
        except RemediationError as exc:
            log.warning("could not handle %s: %s", vm, exc, extra={"vm_id": vm.id})
            return VmOutcome(vm.id, OBSERVED, reason=f"not handled ({type(exc).__name__}): {exc}; "
                                                     "the next sweep retries")

    async def _process(self, vm: VmRef, info: VmInfo | None) -> VmOutcome:
        s = self.settings
        why = s.scope_reason(vm)
        if why:
            return VmOutcome(vm.id, OUT_OF_SCOPE, reason=why)

        existing = await self.call(self.store.find_open, vm)
        if existing is not None:
            if self.source != "sweep":  # a sweep every few minutes would only add noise to the timeline
                await self.call(self.store.append_event, existing.id, self.event(
                    EVENT_DUPLICATE, f"another signal from {self.source} while the incident is open",
                    source=self.source))
            return VmOutcome(vm.id, ALREADY_OPEN, existing.verdict.value if existing.verdict else None, existing.id,
                             f"incident {existing.id} is {existing.state.value}")

        if info is None:
            try:
                info = await self.call(self.vms.get_vm, vm)
            except NotFoundError:
                return VmOutcome(vm.id, IGNORED, reason="the VM does not exist (any more)")
        if info.os_type.strip().lower() != "linux":
            return VmOutcome(vm.id, OBSERVED, reason=f"not a Linux VM (os type {info.os_type or 'unknown'})")
        why = s.tag_reason(info.tags)
        if why:
            return VmOutcome(vm.id, OPTED_OUT, reason=why)
        if info.power_state not in _BOOTING:
            return VmOutcome(vm.id, OBSERVED, reason=f"the VM is {info.power_state.value}: it is not booting")

        async with self.reads:
            data = await self.call(self.vms.read_serial_tail, vm, s.serial_tail_bytes)
        finding = await self.call(_analyze, data, s.serial_tail_bytes)
        if not actionable(finding.verdict, s):
            log.info("observation for %s: %s", vm, finding.verdict.value, extra={"vm_id": vm.id})
            hint = ""
            if finding.verdict is Verdict.SELINUX_POLICY_MISSING:
                hint = " (set REMEDIATION_REPAIR_POLICY_MISSING=true to repair this too)"
            return VmOutcome(vm.id, OBSERVED, finding.verdict.value, reason=(finding.reason or "not repaired") + hint)

        if s.dry_run:
            earlier = await self.recent_dry_run(vm)
            if earlier is not None:
                # One record per VM per window, however often the alert fires or the sweep passes.
                if self.source != "sweep":
                    await self.call(self.store.append_event, earlier.id, self.event(
                        EVENT_DUPLICATE, f"another signal from {self.source}; dry run, already recorded",
                        source=self.source))
                return VmOutcome(vm.id, DRY_RUN, finding.verdict.value, earlier.id,
                                 f"dry run: already recorded in incident {earlier.id} at {earlier.opened_at}; "
                                 "not repaired")

        failed = await self.recent_failure(vm)
        if failed is not None:
            # Repairing again what just failed would only cycle the VM through the same rollback.
            until = parse_iso(failed.updated_at) + timedelta(hours=s.retry_after_failure_hours)
            return VmOutcome(vm.id, BACKED_OFF, finding.verdict.value, failed.id,
                             f"the last repair (incident {failed.id}) ended {failed.state.value}: "
                             f"{failed.reason or 'see its timeline'}; not retried before {iso(until)} "
                             "(REMEDIATION_RETRY_AFTER_FAILURE_HOURS); repair it by hand")

        # Opening and counting are one step per delivery, so the first N incidents go ahead and the rest
        # are braked, in a stable order. Concurrent deliveries can only over-count (brake sooner), never under.
        async with self.open_lock:
            incident, created = await self.call(self.store.open, vm, finding, source=self.source, now=self.now)
            brake = await self.check_brake() if created else None
        if not created:
            return VmOutcome(vm.id, ALREADY_OPEN, finding.verdict.value, incident.id,
                             f"incident {incident.id} is {incident.state.value}")
        extra = {"incident_id": incident.id, "vm_id": vm.id}
        log.info("incident %s opened for %s", incident.id, vm, extra=extra)

        if brake is not None:
            reason = (f"blast radius: {brake['opened_in_window']} incidents opened in "
                      f"{brake['window_minutes']} minutes ({brake['limit']})")
            log.critical("BLAST RADIUS BRAKE: %s; %s not repaired", reason, vm, extra=extra)
            if not s.dry_run:
                await self.suppress(incident, reason)
                return VmOutcome(vm.id, SUPPRESSED, finding.verdict.value, incident.id, reason)
        if s.dry_run:
            # A dry run says what a live run would do, including whether the brake would hold the repair.
            note = f"; live, the brake would hold it ({reason})" if brake is not None else ""
            await self.suppress(incident, DRY_RUN_REASON + note)
            return VmOutcome(vm.id, DRY_RUN, finding.verdict.value, incident.id,
                             "dry run: recorded, not repaired" + note)
        return await self.start(incident, finding)

    async def recent_failure(self, vm: VmRef) -> Incident | None:
        """The VM's newest repair that failed or was rolled back within the retry window, if any."""
        newest = await self._newest_per_vm("failures", (IncidentState.FAILED, IncidentState.ROLLED_BACK),
                                           lambda inc: True, lambda inc: inc.updated_at)
        return newest.get(vm.key)

    async def recent_dry_run(self, vm: VmRef) -> Incident | None:
        """The VM's newest dry-run record within REMEDIATION_RETRY_AFTER_FAILURE_HOURS, if any."""
        newest = await self._newest_per_vm("dry_runs", (IncidentState.SUPPRESSED,),
                                           lambda inc: inc.reason.startswith(DRY_RUN_REASON),
                                           lambda inc: inc.opened_at)
        return newest.get(vm.key)

    async def _newest_per_vm(self, kind: str, states: tuple[IncidentState, ...], accept: Callable[[Incident], bool],
                             stamp: Callable[[Incident], str]) -> dict[str, Incident]:
        """Per VM, the newest accepted incident in these states stamped within the retry window.

        Read once per delivery or sweep (the first VM to ask waits for the read, the others reuse it).
        """
        hours = self.settings.retry_after_failure_hours
        if hours <= 0:
            return {}
        async with self.open_lock:
            if kind not in self._newest:
                since = self.now - timedelta(hours=hours)
                found: dict[str, Incident] = {}
                for state in states:
                    for inc in await self.call(self.store.list, state, 1000, updated_since=since):
                        if accept(inc) and parse_iso(stamp(inc)) >= since and (
                                inc.vm.key not in found or stamp(inc) > stamp(found[inc.vm.key])):
                            found[inc.vm.key] = inc
                self._newest[kind] = found
            return self._newest[kind]

    async def suppress(self, incident: Incident, reason: str) -> None:
        try:
            await self.call(
                self.store.transition, incident.id, IncidentState.SUPPRESSED,
                expected=[IncidentState.DETECTED], event=self.event(EVENT_SUPPRESSED, reason), reason=reason,
            )
        except ConflictError as exc:
            log.warning("could not suppress %s: %s", incident.id, exc, extra={"incident_id": incident.id})

    async def check_brake(self) -> dict[str, Any] | None:
        """The brake's state if it trips now (counting the incident just opened), else None.

        Once tripped, it stays tripped for the rest of the delivery or sweep.
        """
        s = self.settings
        window = timedelta(minutes=s.blast_radius_window_minutes)
        opened = await self.call(self.store.count_opened_since, self.now - window)
        limit = None
        if opened > s.blast_radius_max_vms:
            limit = f"more than REMEDIATION_BLAST_RADIUS_MAX_VMS={s.blast_radius_max_vms}"
        elif self.scope_size and opened > max(1, int(s.blast_radius_max_percent * self.scope_size / 100.0)):
            # The percentage never blocks the first incident: in a small fleet one VM is always a large share.
            limit = (f"more than REMEDIATION_BLAST_RADIUS_MAX_PERCENT={s.blast_radius_max_percent:g}% "
                     f"of {self.scope_size} VMs in scope")
        if limit is None:
            return None
        self.brake = {
            "tripped": True,
            "opened_in_window": opened,
            "window_minutes": s.blast_radius_window_minutes,
            "max_vms": s.blast_radius_max_vms,
            "max_percent": s.blast_radius_max_percent,
            "scope_size": self.scope_size,
            "limit": limit,
        }
        return self.brake

    async def start(self, incident: Incident, finding: Finding | None = None) -> VmOutcome:
        """Start the repair unless the concurrency cap is reached (then the incident stays queued)."""
        s = self.settings
        verdict = incident.verdict.value if incident.verdict else None
        extra = {"incident_id": incident.id, "vm_id": incident.vm.id}
        async with self.start_lock:
            running = max(await self.starter.running_repairs(), self.started_here)
            if running >= s.max_concurrent_repairs:
                reason = (f"{QUEUED_REASON_PREFIX} {running} repairs running (REMEDIATION_MAX_CONCURRENT_REPAIRS="
                          f"{s.max_concurrent_repairs}); it starts when one of them ends")
                if not incident.is_queued:
                    await self.call(
                        self.store.transition, incident.id, IncidentState.DETECTED,
                        expected=[IncidentState.DETECTED], event=self.event(EVENT_QUEUED, reason), reason=reason,
                    )
                log.info("incident %s queued", incident.id, extra=extra)
                return VmOutcome(incident.vm.id, QUEUED, verdict, incident.id, reason)
            instance_id = instance_id_for(incident.id)
            payload = {
                "incident_id": incident.id,
                "vm_id": incident.vm.id,
                "opened_at": incident.opened_at,
                "source": incident.source,
                "finding": finding.to_dict() if finding is not None else dict(incident.finding),
                "approval_required": s.approval_required,
                "options": s.repair_options(),
            }
            started = await self.starter.start_repair(instance_id, payload)
            if started:
                self.started_here += 1
        if started:
            event = self.event(EVENT_REPAIR_STARTED, f"repair orchestration {instance_id} started",
                               instance_id=instance_id)
            reason = f"repair {instance_id} started" + (" (waits for approval)" if s.approval_required else "")
        else:
            event = self.event(EVENT_ALREADY_RUNNING, f"repair orchestration {instance_id} already exists",
                               instance_id=instance_id)
            reason = f"repair {instance_id} was already running"
        await self.call(self.store.set_instance, incident.id, instance_id, event)
        log.info("%s", reason, extra=extra)
        return VmOutcome(incident.vm.id, REPAIR_STARTED, verdict, incident.id, reason)

    async def start_queued(self, *, orphans: bool = True) -> list[VmOutcome]:
        """Start incidents left DETECTED by the cap, oldest first, while under the cap.

        With `orphans`, an incident whose opener stopped before deciding (a crashed host) is picked up
        too once it is older than ORPHAN_AFTER; it goes through the brake first, as it would have. Younger
        undecided incidents belong to a delivery still running: they are left alone.
        """
        if self.settings.dry_run:
            return []  # a dry run changes nothing it did not open itself
        detected = await self.call(self.store.list, IncidentState.DETECTED, _QUEUE_SCAN_LIMIT)
        orphan_before = iso(self.now - ORPHAN_AFTER)
        waiting = [i for i in detected
                   if i.is_queued or (orphans and i.awaiting_start and i.opened_at < orphan_before)]
        waiting.sort(key=lambda i: i.opened_at)
        results: list[VmOutcome] = []
        for incident in waiting:
            try:
                info = await self.call(self.vms.get_vm, incident.vm)
            except NotFoundError:
                await self.suppress(incident, "the VM no longer exists")
                results.append(VmOutcome(incident.vm.id, IGNORED, None, incident.id, "the VM no longer exists"))
                continue
            except RemediationError as exc:
                # Stop here rather than start a younger incident ahead of this one; the next run retries.
                results.append(VmOutcome(incident.vm.id, OBSERVED, None, incident.id, f"not started: {exc}"))
                break
            why = self.settings.scope_reason(incident.vm) or self.settings.tag_reason(info.tags)
            if why:
                await self.suppress(incident, why)
                results.append(VmOutcome(incident.vm.id, OPTED_OUT, None, incident.id, why))
                continue
            if not incident.is_queued and await self.check_brake() is not None:
                reason = "blast radius: brake tripped while this incident was undecided"
                await self.suppress(incident, reason)
                results.append(VmOutcome(incident.vm.id, SUPPRESSED, None, incident.id, reason))
                continue
            outcome = await self.start(incident)
            results.append(outcome)
            if outcome.action == QUEUED:
                break  # still at the cap: the rest wait for the next repair to end
        return results


# ---------------------------------------------------------------------------------------------- entry points


async def handle_alert(
    body: bytes,
    *,
    settings: Settings,
    vms: VmReader,
    store: IncidentStore,
    starter: RepairStarter,
    now: datetime,
) -> AlertOutcome:
    """Handle one alert / event delivery; InvalidInput if the payload is malformed."""
    parsed: ParsedAlert = parse_payload(body, max_bytes=settings.max_payload_bytes)
    if parsed.validation_code is not None:
        return AlertOutcome(kind=parsed.kind, validation_code=parsed.validation_code)
    if not settings.subscriptions:
        raise SettingsError("REMEDIATION_SUBSCRIPTIONS is empty: the webhook acts on no subscription")
    run = _Run(settings=settings, vms=vms, store=store, starter=starter, now=now, source="alert")
    results = await asyncio.gather(*(run.process(vm) for vm in parsed.targets))
    for ignored in parsed.ignored:
        log.info("ignored %s: %s", ignored.resource, ignored.reason)
    return AlertOutcome(kind=parsed.kind, results=list(results), ignored=list(parsed.ignored), brake=run.brake)


async def sweep(
    *,
    settings: Settings,
    vms: VmReader,
    heartbeats: HeartbeatSource | None,
    store: IncidentStore,
    starter: RepairStarter,
    now: datetime,
) -> SweepOutcome:
    """Find candidates cheaply (agent not ready, stale heartbeats), confirm them, open and start repairs."""
    outcome = SweepOutcome()
    if not settings.subscriptions:
        raise SettingsError("REMEDIATION_SUBSCRIPTIONS is empty: the sweep has nothing to look at")

    async def listing(sub: str) -> list[VmInfo]:
        return await asyncio.to_thread(lambda: list(vms.list_vm_statuses(sub)))

    listed = await asyncio.gather(*(listing(sub) for sub in settings.subscriptions), return_exceptions=True)
    in_scope: dict[str, VmInfo] = {}
    for sub, result in zip(settings.subscriptions, listed, strict=True):
        if isinstance(result, RemediationError):
            outcome.errors.append(f"subscription {sub}: {result}")
            log.error("sweep could not list VMs of subscription %s: %s", sub, result)
            continue
        if isinstance(result, BaseException):
            raise result
        for info in result:
            if settings.in_scope(info.ref):
                in_scope[info.ref.key] = info
    outcome.vms_seen = len(in_scope)

    candidates: dict[str, VmRef] = {
        key: info.ref for key, info in in_scope.items()
        if info.power_state is PowerState.RUNNING and info.agent_ready is False and _maybe_linux(info)
    }
    if heartbeats is not None and settings.heartbeat_workspace_ids:
        try:
            stale = await asyncio.to_thread(heartbeats.stale_vms, timedelta(minutes=settings.heartbeat_stale_minutes))
        except RemediationError as exc:
            outcome.errors.append(f"heartbeats: {exc}")
            log.error("sweep could not read heartbeats: %s", exc)
            stale = []
        for resource_id in stale:
            try:
                ref = VmRef.parse(resource_id)
            except InvalidInput:
                continue
            if not settings.in_scope(ref):
                continue
            listed_info = in_scope.get(ref.key)
            if listed_info is not None and listed_info.power_state not in _BOOTING:
                continue  # stopped or deallocated VMs stop sending heartbeats: not a boot failure
            candidates.setdefault(ref.key, listed_info.ref if listed_info is not None else ref)
    outcome.candidates = len(candidates)

    run = _Run(settings=settings, vms=vms, store=store, starter=starter, now=now, source="sweep",
               scope_size=outcome.vms_seen or None)
    queued_results = await run.start_queued()
    fresh = await asyncio.gather(*(run.process(ref) for ref in candidates.values()))
    outcome.results = queued_results + list(fresh)
    outcome.brake = run.brake

    for r in fresh:
        if r.action in (REPAIR_STARTED, QUEUED, SUPPRESSED, DRY_RUN):
            outcome.confirmed += 1
    for r in outcome.results:
        if r.action == REPAIR_STARTED:
            outcome.started += 1
        elif r.action in (SUPPRESSED, DRY_RUN):
            outcome.suppressed += 1
        elif r.action == OBSERVED:
            outcome.observations += 1
        elif r.action == QUEUED:
            outcome.queued += 1
    log.info(
        "sweep: %d VMs in scope, %d candidates, %d confirmed, %d started, %d suppressed, %d queued",
        outcome.vms_seen, outcome.candidates, outcome.confirmed, outcome.started, outcome.suppressed, outcome.queued,
    )
    return outcome


async def start_queued(
    *,
    settings: Settings,
    vms: VmReader,
    store: IncidentStore,
    starter: RepairStarter,
    now: datetime,
) -> list[VmOutcome]:
    """Start queued repairs now that a slot is free (called as a repair ends), oldest first.

    Orphaned incidents are left to the sweep, which knows the size of the scope the brake needs.
    """
    run = _Run(settings=settings, vms=vms, store=store, starter=starter, now=now, source="queue")
    results = await run.start_queued(orphans=False)
    for r in results:
        log.info("queued incident %s: %s", r.incident_id, r.reason, extra={"vm_id": r.vm_id})
    return results


def dry_run_alert(body: bytes, *, max_bytes: int) -> dict[str, Any]:
    """What an alert payload points at, without touching Azure (for `handle-alert FILE --dry-run`)."""
    parsed = parse_payload(body, max_bytes=max_bytes)
    result: dict[str, Any] = {
        "kind": parsed.kind,
        "targets": [vm.id for vm in parsed.targets],
        "ignored": [i.to_dict() for i in parsed.ignored],
    }
    if parsed.validation_code is not None:
        result["validation_code"] = parsed.validation_code
    if parsed.monitor_condition is not None:
        result["monitor_condition"] = parsed.monitor_condition
    return result
