"""Stateful fakes of the signal-side ports and of the incident store, for unit tests.

They hold state and enforce the same rules as the real adapters (one open incident per VM, ETags,
insert-only timelines), so tests assert on the resulting state rather than on which calls were made.
All of them are thread-safe: tests race them from threads and from asyncio tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from remediation.incidents import EVENT_DUPLICATE, EVENT_OPENED, Incident, iso, new_incident, parse_iso
from remediation.model import (
    ConflictError,
    Finding,
    IncidentState,
    NotFoundError,
    PermanentError,
    PowerState,
    TimelineEvent,
    VmInfo,
    VmRef,
    incident_id_for,
)

SUB = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
OTHER_SUB = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

FROZEN_LOG = (
    b"[    0.000000] Linux version 5.14.0-362.el9.x86_64 (mockbuild@example) #1 SMP\n"
    b"[    0.000000] Command line: BOOT_IMAGE=(hd0,gpt2)/vmlinuz root=/dev/mapper/rootvg-rootlv console=ttyS0\n"
    b"[    1.912345] systemd[1]: Failed to load SELinux policy.\n"
    b"[!!!!!!] Failed to load SELinux policy.\n"
    b"[    1.913000] systemd[1]: Freezing execution.\n"
)
BOOTED_LOG = (
    b"[    0.000000] Linux version 5.14.0-362.el9.x86_64 (mockbuild@example) #1 SMP\n"
    b"[    2.000000] systemd[1]: Successfully loaded SELinux policy in 30.1ms.\n"
    b"[  OK  ] Reached target Multi-User System.\n"
    b"\nRed Hat Enterprise Linux 9.3 (Plow)\nKernel 5.14.0-362.el9.x86_64 on an x86_64\n\nvm1 login: "
)


def vm_id(name: str, rg: str = "app-prod", sub: str = SUB) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


def make_vm(
    name: str,
    *,
    rg: str = "app-prod",
    sub: str = SUB,
    os_type: str = "Linux",
    tags: dict[str, str] | None = None,
    power: PowerState = PowerState.RUNNING,
    agent_ready: bool | None = False,
) -> VmInfo:
    ref = VmRef.parse(vm_id(name, rg, sub))
    return VmInfo(
        ref=ref,
        location="westeurope",
        vm_size="Standard_D2s_v5",
        os_type=os_type,
        os_disk_name=f"{name}_osdisk",
        os_disk_id=f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}_osdisk",
        tags=dict(tags or {}),
        power_state=power,
        agent_ready=agent_ready,
    )


# ---------------------------------------------------------------------------------------------- VMs


@dataclass
class FakeVms:
    """VmReader over a dict of VMs and their serial logs; counts the expensive calls."""

    vms: dict[str, VmInfo] = field(default_factory=dict)
    serial: dict[str, bytes] = field(default_factory=dict)
    boot_diagnostics_off: set[str] = field(default_factory=set)
    serial_reads: int = 0
    list_calls: int = 0
    get_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, info: VmInfo, serial: bytes | None = None) -> VmInfo:
        self.vms[info.ref.key] = info
        if serial is not None:
            self.serial[info.ref.key] = serial
        return info

    def get_vm(self, vm: VmRef) -> VmInfo:
        with self._lock:
            self.get_calls += 1
        info = self.vms.get(vm.key)
        if info is None:
            raise NotFoundError(f"virtual machine {vm} not found")
        return info

    def list_vm_statuses(self, subscription_id: str) -> Iterable[VmInfo]:
        with self._lock:
            self.list_calls += 1
        return [v for v in self.vms.values() if v.ref.subscription_id == subscription_id.lower()]

    def read_serial_tail(self, vm: VmRef, max_bytes: int) -> bytes:
        with self._lock:
            self.serial_reads += 1
        if vm.key in self.boot_diagnostics_off:
            raise PermanentError(f"boot diagnostics are disabled on {vm}")
        return self.serial.get(vm.key, b"")[-max_bytes:]


@dataclass
class FakeHeartbeats:
    """HeartbeatSource returning a fixed list of stale VM ids."""

    stale: list[str] = field(default_factory=list)
    asked: list[timedelta] = field(default_factory=list)

    def stale_vms(self, stale_after: timedelta) -> list[str]:
        self.asked.append(stale_after)
        return list(self.stale)


class FakeStarter:
    """RepairStarter that records started instances; a repeated instance id is refused, like Durable."""

    def __init__(self, running: int = 0) -> None:
        self.started: dict[str, dict[str, Any]] = {}
        self.already_running = 0
        self.extra_running = running
        self._lock = threading.Lock()  # not asyncio.Lock: tests drive it from several event loops

    async def start_repair(self, instance_id: str, payload: dict[str, Any]) -> bool:
        await asyncio.sleep(0)  # let other tasks interleave, as a real HTTP call would
        with self._lock:
            if instance_id in self.started:
                self.already_running += 1
                return False
            self.started[instance_id] = payload
            return True

    async def running_repairs(self) -> int:
        return self.extra_running + len(self.started)


# ---------------------------------------------------------------------------------------------- incidents


class InMemoryIncidentStore:
    """IncidentStore in memory with the Table store's semantics (locks, ETags, insert-only timeline)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._incidents: dict[str, Incident] = {}
        self._open_by_vm: dict[str, str] = {}
        self._timeline: dict[str, list[TimelineEvent]] = {}
        self._etags = itertools.count(1)

    def _etag(self) -> str:
        return f'W/"{next(self._etags)}"'

    def _save(self, incident: Incident) -> Incident:
        saved = replace(incident, etag=self._etag())
        self._incidents[saved.id] = saved
        return saved

    def open(
        self,
        vm: VmRef,
        finding: Finding,
        *,
        source: str,
        now: Any,
        state: IncidentState = IncidentState.DETECTED,
        reason: str = "",
    ) -> tuple[Incident, bool]:
        incident = new_incident(incident_id_for(vm, iso(now)), vm, finding, source=source, now=now,
                                state=state, reason=reason)
        with self._lock:
            if state.is_open:
                holder = self._open_by_vm.get(vm.key)
                if holder is not None:
                    self._append(holder, TimelineEvent(
                        at=iso(now), kind=EVENT_DUPLICATE,
                        message=f"another signal from {source} for the same VM: {finding.verdict.value}",
                        data={"source": source, "verdict": finding.verdict.value},
                    ))
                    return self._incidents[holder], False
            if incident.id in self._incidents:
                return self._incidents[incident.id], False
            saved = self._save(incident)
            if state.is_open:
                self._open_by_vm[vm.key] = saved.id
            self._append(saved.id, TimelineEvent(
                at=saved.opened_at, kind=EVENT_OPENED, message=f"opened from {source}: {finding.verdict.value}",
                data={"state": state.value, "source": source, "vm_id": vm.id},
            ))
            return saved, True

    def get(self, incident_id: str) -> Incident:
        with self._lock:
            try:
                return self._incidents[incident_id]
            except KeyError:
                raise NotFoundError(f"incident {incident_id}: not found") from None

    def find_open(self, vm: VmRef) -> Incident | None:
        with self._lock:
            holder = self._open_by_vm.get(vm.key)
            return self._incidents[holder] if holder else None

    def list(self, state: IncidentState | None = None, limit: int = 100, *,
             updated_since: datetime | None = None) -> list[Incident]:
        since = iso(updated_since) if updated_since is not None else ""
        with self._lock:
            rows = [i for i in self._incidents.values()
                    if (state is None or i.state is state) and i.updated_at >= since]
        rows.sort(key=lambda i: (i.opened_at, i.id), reverse=True)
        return rows[: max(0, limit)]

    def transition(
        self,
        incident_id: str,
        to: IncidentState,
        *,
        expected: Collection[IncidentState] | None,
        event: TimelineEvent,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        etag: str | None = None,
    ) -> Incident:
        with self._lock:
            current = self.get(incident_id)
            if etag is not None and current.etag != etag:
                raise ConflictError(f"incident {incident_id} changed since it was read (ETag moved)")
            if expected is not None and current.state not in expected:
                raise ConflictError(f"incident {incident_id} is {current.state.value}, not one of the expected states")
            key = current.vm.key
            if current.is_open and not to.is_open and self._open_by_vm.get(key) == incident_id:
                del self._open_by_vm[key]
            elif not current.is_open and to.is_open:
                holder = self._open_by_vm.get(key)
                if holder is not None and holder != incident_id:
                    raise ConflictError(f"{current.vm} already has open incident {holder}; close it first")
                self._open_by_vm[key] = incident_id
            saved = self._save(replace(
                current,
                state=to,
                updated_at=_stamp(event.at, current.updated_at),
                reason=current.reason if reason is None else reason,
                result=current.result if result is None else dict(result),
            ))
            self._append(incident_id, event)
            return saved

    def set_instance(self, incident_id: str, instance_id: str, event: TimelineEvent) -> Incident:
        with self._lock:
            current = self.get(incident_id)
            saved = self._save(replace(current, instance_id=instance_id,
                                       updated_at=_stamp(event.at, current.updated_at)))
            self._append(incident_id, event)
            return saved

    def _append(self, incident_id: str, event: TimelineEvent) -> None:
        self._timeline.setdefault(incident_id, []).append(event)

    def append_event(self, incident_id: str, event: TimelineEvent) -> None:
        with self._lock:
            self._append(incident_id, event)

    def timeline(self, incident_id: str) -> list[TimelineEvent]:
        with self._lock:
            return list(self._timeline.get(incident_id, []))

    def count_opened_since(self, since: Any) -> int:
        stamp = iso(since)
        with self._lock:
            return sum(1 for i in self._incidents.values() if i.opened_at >= stamp)

    def count_in_state(self, states: Collection[IncidentState]) -> int:
        wanted = set(states)
        with self._lock:
            return sum(1 for i in self._incidents.values() if i.state in wanted)


def _stamp(at: str, fallback: str) -> str:
    try:
        return iso(parse_iso(at))
    except ValueError:
        return fallback
