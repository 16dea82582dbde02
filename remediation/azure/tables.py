"""The incident store on Azure Table Storage (azure-data-tables).

Layout of the one table:

* partition `incident`: one row per incident (RowKey = incident id, `inc-...`) and one LOCK row per VM
  with an open incident (RowKey = `lock-<sha256 of the VM id>`). Opening an incident inserts the lock
  row and the incident row in one entity-group transaction; the insert of the lock fails when the VM
  already has one, so exactly one of any number of racing openers wins, on any number of hosts. Closing
  an incident updates it and deletes the lock in one transaction, so the two never disagree.
* partition `timeline-<incident id>`: append-only timeline rows, insert-only, keyed by a time-ordered
  sequence plus a random suffix, so concurrent appends never collide and read back in order.

Every read-modify-write is guarded by the row's ETag.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient, TableEntity, TableServiceClient, TableTransactionError, UpdateMode

from remediation.azure.retrying import with_retries
from remediation.incidents import (
    EVENT_DUPLICATE,
    EVENT_OPENED,
    Incident,
    bounded_json,
    event_from_dict,
    iso,
    new_incident,
    parse_iso,
)
from remediation.model import (
    ConflictError,
    Finding,
    IncidentState,
    NotFoundError,
    PermanentError,
    SettingsError,
    TimelineEvent,
    TransientError,
    Verdict,
    VmRef,
    incident_id_for,
)
from remediation.settings import Settings

log = logging.getLogger(__name__)

INCIDENT_PARTITION = "incident"
TIMELINE_PREFIX = "timeline-"
_RANGE = "PartitionKey eq 'incident' and RowKey ge 'inc-' and RowKey lt 'inc.'"
_RETRIES = 8


def lock_key(vm: VmRef) -> str:
    """RowKey of the VM's lock row ('/' is not allowed in keys, and ARM ids are case-insensitive)."""
    return "lock-" + hashlib.sha256(vm.key.encode()).hexdigest()[:40]


class _LockHeld(ConflictError):
    """Another incident holds the VM's lock: retrying cannot help."""


class _Sequence:
    """Strictly increasing, time-ordered numbers for timeline keys within this process."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


_SEQUENCE = _Sequence()


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Turn SDK exceptions into the product's few error types."""
    try:
        yield
    except ResourceNotFoundError:
        raise NotFoundError(f"{what}: not found") from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"{what}: storage unreachable: {type(exc).__name__}") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            raise TransientError(f"{what}: storage returned {status}") from exc
        if status in (409, 412):
            raise ConflictError(f"{what}: changed concurrently ({status})") from exc
        raise PermanentError(f"{what}: storage returned {status}: {exc.reason or exc.message}") from exc


def _status(exc: HttpResponseError) -> int:
    return int(exc.status_code or 0)


class TableIncidentStore:
    """IncidentStore on one Table Storage table (see the module docstring for the layout)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    # ------------------------------------------------------------------ entity mapping

    @staticmethod
    def _to_entity(incident: Incident) -> dict[str, Any]:
        return {
            "PartitionKey": INCIDENT_PARTITION,
            "RowKey": incident.id,
            "VmId": incident.vm.id,
            "VmKey": incident.vm.key,
            "State": incident.state.value,
            "OpenedAt": incident.opened_at,
            "UpdatedAt": incident.updated_at,
            "Source": incident.source,
            "Verdict": incident.verdict.value if incident.verdict else "",
            "Finding": bounded_json(incident.finding),
            "InstanceId": incident.instance_id,
            "Reason": incident.reason[:4000],
            "Result": bounded_json(incident.result),
        }

    @staticmethod
    def _from_entity(entity: TableEntity | dict[str, Any], etag: str | None = None) -> Incident:
        verdict = entity.get("Verdict") or None
        meta = getattr(entity, "metadata", None) or {}
        return Incident(
            id=str(entity["RowKey"]),
            vm=VmRef.parse(str(entity["VmId"])),
            state=IncidentState(entity["State"]),
            opened_at=str(entity["OpenedAt"]),
            updated_at=str(entity.get("UpdatedAt") or entity["OpenedAt"]),
            source=str(entity.get("Source") or "alert"),
            verdict=Verdict(verdict) if verdict else None,
            finding=json.loads(entity.get("Finding") or "{}"),
            instance_id=str(entity.get("InstanceId") or ""),
            reason=str(entity.get("Reason") or ""),
            result=json.loads(entity.get("Result") or "{}"),
            etag=etag or meta.get("etag"),
        )

    @staticmethod
    def _lock_entity(vm: VmRef, incident_id: str) -> dict[str, Any]:
        return {"PartitionKey": INCIDENT_PARTITION, "RowKey": lock_key(vm), "IncidentId": incident_id, "VmId": vm.id}

    # ------------------------------------------------------------------ reads

    def get(self, incident_id: str) -> Incident:
        with _mapped(f"incident {incident_id}"):
            entity = self._table.get_entity(INCIDENT_PARTITION, incident_id)
        return self._from_entity(entity)

    def _get_or_none(self, incident_id: str) -> Incident | None:
        try:
            return self.get(incident_id)
        except NotFoundError:
            return None

    def _read_lock(self, vm: VmRef) -> TableEntity | None:
        try:
            with _mapped(f"lock of {vm}"):
                return self._table.get_entity(INCIDENT_PARTITION, lock_key(vm))
        except NotFoundError:
            return None

    def find_open(self, vm: VmRef) -> Incident | None:
        lock = self._read_lock(vm)
        if lock is None:
            return None
        incident = self._get_or_none(str(lock.get("IncidentId", "")))
        return incident if incident is not None and incident.is_open else None

    def _query(self, extra: str = "", parameters: dict[str, Any] | None = None,
               select: builtins.list[str] | None = None) -> Iterator[TableEntity]:
        query = _RANGE + (f" and ( {extra} )" if extra else "")  # the SDK substitutes @names between spaces
        with _mapped("incident query"):
            yield from self._table.query_entities(query, parameters=parameters or {}, select=select)

    def list(self, state: IncidentState | None = None, limit: int = 100, *,
             updated_since: datetime | None = None) -> builtins.list[Incident]:
        clauses, params = [], {}
        if state is not None:
            clauses.append("State eq @state")
            params["state"] = state.value
        if updated_since is not None:
            clauses.append("UpdatedAt ge @since")
            params["since"] = iso(updated_since)
        rows = builtins.list(self._query(" and ".join(clauses), params))
        incidents = [self._from_entity(row) for row in rows]
        incidents.sort(key=lambda i: (i.opened_at, i.id), reverse=True)
        return incidents[: max(0, limit)]

    def count_opened_since(self, since: datetime) -> int:
        return sum(1 for _ in self._query("OpenedAt ge @since", {"since": iso(since)}, select=["RowKey"]))

    def count_in_state(self, states: Collection[IncidentState]) -> int:
        values = sorted({IncidentState(s).value for s in states})
        if not values:
            return 0
        clause = " or ".join(f"State eq @s{n}" for n in range(len(values)))
        params = {f"s{n}": v for n, v in enumerate(values)}
        return sum(1 for _ in self._query(clause, params, select=["RowKey"]))

    def timeline(self, incident_id: str) -> builtins.list[TimelineEvent]:
        with _mapped(f"timeline of {incident_id}"):
            rows = builtins.list(
                self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": TIMELINE_PREFIX + incident_id}
                )
            )
        rows.sort(key=lambda r: str(r["RowKey"]))
        return [
            event_from_dict({
                "at": r.get("At", ""), "kind": r.get("Kind", ""), "message": r.get("Message", ""),
                "data": json.loads(r.get("Data") or "{}"),
            })
            for r in rows
        ]

    # ------------------------------------------------------------------ writes

    def append_event(self, incident_id: str, event: TimelineEvent) -> None:
        entity = {
            "PartitionKey": TIMELINE_PREFIX + incident_id,
            "RowKey": f"{_SEQUENCE.next():020d}-{secrets.token_hex(4)}",
            "At": event.at,
            "Kind": event.kind,
            "Message": event.message[:4000],
            "Data": bounded_json(event.data),
        }
        with _mapped(f"timeline of {incident_id}"):
            self._table.create_entity(entity)

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
        incident = new_incident(incident_id_for(vm, iso(now)), vm, finding, source=source, now=now,
                                state=state, reason=reason)
        opened = TimelineEvent(
            at=incident.opened_at, kind=EVENT_OPENED,
            message=f"opened from {source}: {finding.verdict.value}" + (f" ({reason})" if reason else ""),
            data={"state": state.value, "source": source, "vm_id": vm.id},
        )
        if not state.is_open:
            try:
                with _mapped(f"incident {incident.id}"):
                    meta = self._table.create_entity(self._to_entity(incident))
            except ConflictError:
                return self.get(incident.id), False
            self.append_event(incident.id, opened)
            return incident.with_changes(etag=meta.get("etag")), True

        for _ in range(_RETRIES):
            try:
                with _mapped(f"incident {incident.id}"):
                    results = self._table.submit_transaction([
                        ("create", self._lock_entity(vm, incident.id)),
                        ("create", self._to_entity(incident)),
                    ])
            except ConflictError:
                existing = self._holder_or_clear_stale(vm, incident.id)
                if existing is None:
                    continue
                self.append_event(existing.id, TimelineEvent(
                    at=iso(now), kind=EVENT_DUPLICATE,
                    message=f"another signal from {source} for the same VM: {finding.verdict.value}",
                    data={"source": source, "verdict": finding.verdict.value},
                ))
                return existing, False
            self.append_event(incident.id, opened)
            log.info("incident opened", extra={"incident_id": incident.id, "vm_id": vm.id})
            return incident.with_changes(etag=results[1].get("etag")), True
        raise ConflictError(f"could not open an incident for {vm}: the VM's lock kept changing")

    def _holder_or_clear_stale(self, vm: VmRef, new_id: str) -> Incident | None:
        """The open incident holding the VM's lock; None if the lock is free again (retry).

        Locks and incidents change together in transactions, so a lock whose incident is gone or closed
        was left by hand-editing the table: it is deleted, guarded by its ETag, and the caller retries.
        """
        lock = self._read_lock(vm)
        if lock is None:
            if self._get_or_none(new_id) is not None:
                raise ConflictError(f"incident id {new_id} already exists (same VM and opening time)")
            return None
        holder = self._get_or_none(str(lock.get("IncidentId", "")))
        if holder is not None and holder.is_open:
            return holder
        try:
            with _mapped(f"stale lock of {vm}"):
                self._table.delete_entity(
                    lock, etag=lock.metadata.get("etag"), match_condition=MatchConditions.IfNotModified
                )
            log.warning("stale incident lock removed", extra={"vm_id": vm.id})
        except (ConflictError, NotFoundError):
            pass
        return None

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
        to = IncidentState(to)
        for _ in range(_RETRIES):
            current = self.get(incident_id)
            if etag is not None and current.etag != etag:
                raise ConflictError(f"incident {incident_id} changed since it was read (ETag moved)")
            if expected is not None and current.state not in expected:
                wanted = ", ".join(sorted(IncidentState(s).value for s in expected))
                raise ConflictError(
                    f"incident {incident_id} is {current.state.value}, expected one of: {wanted or 'none'}"
                )
            updated = current.with_changes(
                state=to,
                updated_at=_stamp(event.at),
                reason=current.reason if reason is None else reason,
                result=current.result if result is None else dict(result),
            )
            try:
                new_etag = self._write_transition(current, updated)
            except _LockHeld:
                raise
            except ConflictError:
                if etag is not None:
                    raise
                continue  # changed under us: re-read and re-check `expected`
            self.append_event(incident_id, event)
            return updated.with_changes(etag=new_etag)
        raise ConflictError(f"incident {incident_id} kept changing concurrently; try again")

    def _write_transition(self, current: Incident, updated: Incident) -> str | None:
        entity = self._to_entity(updated)
        guarded: dict[str, Any] = {
            "mode": UpdateMode.REPLACE, "etag": current.etag, "match_condition": MatchConditions.IfNotModified,
        }
        leaving = current.is_open and not updated.is_open
        entering = not current.is_open and updated.is_open
        with _mapped(f"incident {current.id}"):
            if leaving:
                lock = self._read_lock(current.vm)
                if lock is not None and lock.get("IncidentId") == current.id:
                    results = self._table.submit_transaction([
                        ("update", entity, guarded),
                        ("delete", lock, {"etag": lock.metadata.get("etag"),
                                          "match_condition": MatchConditions.IfNotModified}),
                    ])
                    return _etag(results[0])
            elif entering:
                try:
                    results = self._table.submit_transaction([
                        ("create", self._lock_entity(current.vm, current.id)),
                        ("update", entity, guarded),
                    ])
                except TableTransactionError as exc:
                    holder = self.find_open(current.vm)
                    if holder is not None and holder.id != current.id:
                        raise _LockHeld(
                            f"{current.vm} already has open incident {holder.id}; close it first"
                        ) from exc
                    raise
                return _etag(results[1])
            meta = self._table.update_entity(entity, **guarded)
            return _etag(meta)

    def set_instance(self, incident_id: str, instance_id: str, event: TimelineEvent) -> Incident:
        for _ in range(_RETRIES):
            current = self.get(incident_id)
            updated = current.with_changes(instance_id=instance_id, updated_at=_stamp(event.at))
            try:
                with _mapped(f"incident {incident_id}"):
                    meta = self._table.update_entity(
                        self._to_entity(updated), mode=UpdateMode.REPLACE, etag=current.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
            except ConflictError:
                continue
            self.append_event(incident_id, event)
            return updated.with_changes(etag=_etag(meta))
        raise ConflictError(f"incident {incident_id} kept changing concurrently; try again")


def _etag(meta: Any) -> str | None:
    if isinstance(meta, dict):
        value = meta.get("etag")
        return str(value) if value is not None else None
    return None


def _stamp(at: str) -> str:
    try:
        return iso(parse_iso(at))
    except ValueError:
        return iso(datetime.now(UTC))


def from_settings(settings: Settings) -> TableIncidentStore:
    """The store named by the settings: a connection string, or a table URL with the managed identity.

    Creates the table when it does not exist yet.
    """
    if settings.storage_connection:
        try:
            service = TableServiceClient.from_connection_string(settings.storage_connection)
        except ValueError:
            raise SettingsError(
                "REMEDIATION_STORAGE_CONNECTION / AzureWebJobsStorage: the connection string is not usable "
                "for Table Storage"
            ) from None
    elif settings.storage_table_url:
        from azure.identity import DefaultAzureCredential  # heavy: only for identity auth

        service = TableServiceClient(endpoint=settings.storage_table_url, credential=DefaultAzureCredential())
    else:
        raise SettingsError(
            "no incident storage configured: set REMEDIATION_STORAGE_CONNECTION (or AzureWebJobsStorage) to a "
            "connection string, or REMEDIATION_STORAGE_TABLE_URL to the account's table endpoint"
        )

    def create() -> None:
        with _mapped(f"table {settings.incident_table}"):
            service.create_table_if_not_exists(settings.incident_table)

    with_retries(create, what="creating the incident table")
    return TableIncidentStore(service.get_table_client(settings.incident_table))

