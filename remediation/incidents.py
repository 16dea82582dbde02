"""Incidents: one record per VM failure, with an append-only timeline, and the store port that keeps them.

The store itself enforces the product's central safety rule: at most one OPEN incident per VM, however
many alerts, sweeps and hosts race to open one. The Table Storage implementation is
remediation/azure/tables.py; tests use an in-memory store with the same semantics.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from remediation.model import Finding, IncidentState, InvalidInput, TimelineEvent, Verdict, VmRef

SOURCES = frozenset({"alert", "sweep", "cli"})

# Timeline event kinds written by the signal side (the orchestrator adds its own).
EVENT_OPENED = "opened"
EVENT_DUPLICATE = "duplicate_signal"
EVENT_TRANSITION = "transition"
EVENT_REPAIR_STARTED = "repair_started"
EVENT_ALREADY_RUNNING = "already_running"
EVENT_QUEUED = "queued"
EVENT_SUPPRESSED = "suppressed"

# The reason of an incident held back by the concurrency cap starts with this.
QUEUED_REASON_PREFIX = "queued:"

# Table Storage keeps string properties up to 64 KiB; keep the JSON columns well under that.
MAX_JSON_CHARS = 30000


def iso(moment: datetime) -> str:
    """A fixed-width UTC timestamp that sorts as text (stored timestamps are compared lexically)."""
    if moment.tzinfo is None:
        raise InvalidInput("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Inverse of iso() (accepts any ISO 8601 form with a zone)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def bounded_json(value: dict[str, Any]) -> str:
    """JSON of a finding/result dict, trimmed (evidence first) so it fits one table property."""
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text) <= MAX_JSON_CHARS:
        return text
    trimmed = dict(value)
    if isinstance(trimmed.get("evidence"), list):
        evidence = list(trimmed["evidence"])
        while evidence and len(json.dumps({**trimmed, "evidence": evidence}, default=str)) > MAX_JSON_CHARS:
            evidence.pop()
        trimmed["evidence"] = evidence
        trimmed["truncated"] = True
        text = json.dumps(trimmed, sort_keys=True, default=str)
        if len(text) <= MAX_JSON_CHARS:
            return text
    return json.dumps({"truncated": True, "summary": text[: MAX_JSON_CHARS - 100]})


@dataclass(frozen=True)
class Incident:
    """One detected failure of one VM, from detection to its end state."""

    id: str
    vm: VmRef
    state: IncidentState
    opened_at: str
    updated_at: str
    source: str  # "alert" | "sweep" | "cli"
    verdict: Verdict | None = None
    finding: dict[str, Any] = field(default_factory=dict)
    instance_id: str = ""  # set once a repair orchestration was started for it
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def awaiting_start(self) -> bool:
        """Detected, and no repair orchestration started for it yet."""
        return self.state is IncidentState.DETECTED and not self.instance_id

    @property
    def is_queued(self) -> bool:
        """Held back by the concurrency cap: started when a running repair ends (or by the next sweep)."""
        return self.awaiting_start and self.reason.startswith(QUEUED_REASON_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm_id": self.vm.id,
            "state": self.state.value,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "source": self.source,
            "verdict": self.verdict.value if self.verdict else None,
            "finding": dict(self.finding),
            "instance_id": self.instance_id,
            "reason": self.reason,
            "result": dict(self.result),
            "etag": self.etag,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Incident:
        try:
            verdict = data.get("verdict")
            return cls(
                id=str(data["id"]),
                vm=VmRef.parse(data["vm_id"]),
                state=IncidentState(data["state"]),
                opened_at=str(data["opened_at"]),
                updated_at=str(data.get("updated_at") or data["opened_at"]),
                source=str(data.get("source") or "alert"),
                verdict=Verdict(verdict) if verdict else None,
                finding=dict(data.get("finding") or {}),
                instance_id=str(data.get("instance_id") or ""),
                reason=str(data.get("reason") or ""),
                result=dict(data.get("result") or {}),
                etag=data.get("etag"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInput(f"not an incident record: {exc}") from None

    def with_changes(self, **changes: Any) -> Incident:
        return replace(self, **changes)


def new_incident(
    incident_id: str, vm: VmRef, finding: Finding, *, source: str, now: datetime, state: IncidentState, reason: str
) -> Incident:
    """The record a store writes when it opens an incident (shared by every store implementation)."""
    if source not in SOURCES:
        raise InvalidInput(f"incident source must be one of {sorted(SOURCES)}, not {source!r}")
    stamp = iso(now)
    return Incident(
        id=incident_id,
        vm=vm,
        state=state,
        opened_at=stamp,
        updated_at=stamp,
        source=source,
        verdict=finding.verdict,
        finding=json.loads(bounded_json(finding.to_dict())),
        reason=reason,
    )


def event_from_dict(data: dict[str, Any]) -> TimelineEvent:
    return TimelineEvent(
        at=str(data.get("at", "")),
        kind=str(data.get("kind", "")),
        message=str(data.get("message", "")),
        data=dict(data.get("data") or {}),
    )


class IncidentStore(Protocol):
    """Where incidents live. Implementations must be safe under concurrent callers (threads, hosts)."""

    def open(
        self,
        vm: VmRef,
        finding: Finding,
        *,
        source: str,
        now: datetime,
        state: IncidentState = IncidentState.DETECTED,
        reason: str = "",
    ) -> tuple[Incident, bool]:
        """Open an incident for the VM; (incident, True) if created.

        An open state takes the VM's lock: when the VM already has an open incident, nothing is created,
        a 'duplicate_signal' event is appended to the existing one and (existing, False) is returned.
        A closed state (e.g. SUPPRESSED) records the incident without taking the lock.
        """
        ...

    def get(self, incident_id: str) -> Incident:
        """The incident; NotFoundError if there is none with this id."""
        ...

    def find_open(self, vm: VmRef) -> Incident | None:
        """The VM's open incident, if any."""
        ...

    def list(self, state: IncidentState | None = None, limit: int = 100, *,
             updated_since: datetime | None = None) -> list[Incident]:
        """Incidents, newest first, optionally only those in one state or changed since a moment."""
        ...

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
        """Move the incident to `to` and append `event`.

        ConflictError if its state is not in `expected` (None: any), if `etag` is given and the record
        changed since, or if it changed concurrently. Leaving the open states releases the VM's lock
        (a later failure can open a new incident); re-entering them takes it again (ConflictError if
        another incident holds it).
        """
        ...

    def set_instance(self, incident_id: str, instance_id: str, event: TimelineEvent) -> Incident:
        """Record the orchestration instance started for the incident (any state) and append `event`."""
        ...

    def append_event(self, incident_id: str, event: TimelineEvent) -> None:
        """Append to the timeline (insert-only: concurrent appends never collide)."""
        ...

    def timeline(self, incident_id: str) -> builtins.list[TimelineEvent]:
        """The timeline in the order it was written."""
        ...

    def count_opened_since(self, since: datetime) -> int:
        """How many incidents were opened at or after `since` (the blast radius)."""
        ...

    def count_in_state(self, states: Collection[IncidentState]) -> int:
        """How many incidents are in any of `states`."""
        ...
