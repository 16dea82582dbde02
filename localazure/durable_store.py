"""Durable task hub state in Azure Table Storage: instances, history and the inbox of pending messages.

Three tables per hub, each partitioned by instance id:

* ``<hub>Instances``: one row per instance (status, input, output, custom status, history length).
  The row is updated with its ETag, and its ``HistoryLength`` is the commit point of an episode.
* ``<hub>History``: one row per history event, RowKey ``<execution id>-<zero-padded sequence>``.
  Rows past ``HistoryLength`` are leftovers of an episode that never committed and are ignored.
* ``<hub>Inbox``: messages not yet applied to history (activity results, fired timers, raised
  events, terminate requests). A message is deleted after the episode that applied it commits;
  one left behind by a crash is recognised as already applied and dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient, UpdateMode

_CHUNK = 30_000  # characters per string property (Table Storage caps a property at 64 KiB of UTF-16)
_MAX_CHUNKS = 15
_HUB_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{2,40}")
_BAD_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")

TERMINAL = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


class StoreError(Exception):
    """The task hub storage refused or lost an operation."""


class ConcurrencyError(StoreError):
    """The instance row changed since it was read (ETag mismatch)."""


class PayloadTooLargeError(ValueError):
    """A value does not fit in one table row (about 900 KB of JSON)."""


class AlreadyExistsError(StoreError):
    """An instance with this id already exists and is not in a final state."""


def validate_hub(hub: str) -> str:
    if not _HUB_RE.fullmatch(hub):
        raise ValueError(f"task hub name {hub!r} must be 3-41 letters or digits, starting with a letter")
    return hub


def validate_instance_id(instance_id: str) -> str:
    if not instance_id or len(instance_id) > 256 or _BAD_KEY_CHARS.search(instance_id):
        raise ValueError(
            f"instance id {instance_id!r} must be 1-256 characters without '/', '\\', '#', '?' or control characters"
        )
    return instance_id


def _pack(entity: dict[str, Any], text: str | None, prefix: str) -> None:
    if text is None:
        entity[f"{prefix}N"] = 0
        return
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
    if len(chunks) > _MAX_CHUNKS:
        raise PayloadTooLargeError(
            f"a payload of {len(text)} characters is too large for the task hub (limit {_CHUNK * _MAX_CHUNKS})"
        )
    entity[f"{prefix}N"] = len(chunks)
    for i, chunk in enumerate(chunks):
        entity[f"{prefix}{i}"] = chunk


def _unpack(entity: dict[str, Any], prefix: str) -> str | None:
    n = int(entity.get(f"{prefix}N", 0) or 0)
    if n == 0:
        return None
    return "".join(str(entity.get(f"{prefix}{i}", "")) for i in range(n))


@dataclass(frozen=True)
class InstanceRecord:
    """One orchestration instance as stored in the Instances table."""

    instance_id: str
    name: str
    status: str
    execution_id: str
    input: str | None  # JSON text
    output: str | None  # JSON text
    custom_status: str | None  # JSON text
    created: str
    updated: str
    history_length: int = 0
    parent_instance_id: str | None = None
    parent_task_id: int | None = None
    parent_execution_id: str | None = None
    etag: str | None = None

    def with_(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class Message:
    """A message waiting in an instance's inbox."""

    instance_id: str
    message_id: str
    body: dict[str, Any]


class TaskHubStore:
    """Reads and writes one task hub's tables; safe to share between threads."""

    def __init__(self, connection_string: str, hub: str) -> None:
        self.hub = validate_hub(hub)
        self._conn = connection_string
        self._local = threading.local()
        self.instances_table = f"{hub}Instances"
        self.history_table = f"{hub}History"
        self.inbox_table = f"{hub}Inbox"

    def _service(self) -> TableServiceClient:
        svc = getattr(self._local, "svc", None)
        if svc is None:
            svc = TableServiceClient.from_connection_string(self._conn)
            self._local.svc = svc
        return svc

    def _table(self, name: str) -> Any:
        return self._service().get_table_client(name)

    def create_tables(self) -> None:
        svc = self._service()
        for name in (self.instances_table, self.history_table, self.inbox_table):
            svc.create_table_if_not_exists(name)

    # ------------------------------------------------------------------ instances
    @staticmethod
    def _record(entity: Any) -> InstanceRecord:
        parent_task = entity.get("ParentTaskId")
        return InstanceRecord(
            instance_id=str(entity["PartitionKey"]),
            name=str(entity.get("Name", "")),
            status=str(entity.get("RuntimeStatus", "Pending")),
            execution_id=str(entity.get("ExecutionId", "")),
            input=_unpack(entity, "In"),
            output=_unpack(entity, "Out"),
            custom_status=_unpack(entity, "Cs"),
            created=str(entity.get("CreatedTime", "")),
            updated=str(entity.get("LastUpdatedTime", "")),
            history_length=int(entity.get("HistoryLength", 0) or 0),
            parent_instance_id=entity.get("ParentInstanceId") or None,
            parent_task_id=int(parent_task) if parent_task not in (None, "") else None,
            parent_execution_id=entity.get("ParentExecutionId") or None,
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )

    @staticmethod
    def _entity(rec: InstanceRecord) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": rec.instance_id,
            "RowKey": "",
            "Name": rec.name,
            "RuntimeStatus": rec.status,
            "ExecutionId": rec.execution_id,
            "CreatedTime": rec.created,
            "LastUpdatedTime": rec.updated,
            "HistoryLength": rec.history_length,
            "ParentInstanceId": rec.parent_instance_id or "",
            "ParentTaskId": "" if rec.parent_task_id is None else str(rec.parent_task_id),
            "ParentExecutionId": rec.parent_execution_id or "",
        }
        _pack(entity, rec.input, "In")
        _pack(entity, rec.output, "Out")
        _pack(entity, rec.custom_status, "Cs")
        return entity

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        try:
            entity = self._table(self.instances_table).get_entity(instance_id, "")
        except ResourceNotFoundError:
            return None
        return self._record(entity)

    def create_instance(self, rec: InstanceRecord) -> InstanceRecord:
        """Create the instance, or replace one in a final state; AlreadyExistsError if one is live."""
        table = self._table(self.instances_table)
        try:
            meta = table.create_entity(self._entity(rec))
            return rec.with_(etag=meta.get("etag"))
        except ResourceExistsError:
            pass
        existing = self.get_instance(rec.instance_id)
        if existing is None:
            raise ConcurrencyError(f"instance {rec.instance_id!r} changed while it was being created")
        if existing.status not in TERMINAL:
            raise AlreadyExistsError(
                f"An Orchestration instance with the status {existing.status} already exists."
            )
        updated = self.update_instance(rec.with_(etag=existing.etag))
        self.delete_history(existing.instance_id, existing.execution_id)
        return updated

    def update_instance(self, rec: InstanceRecord) -> InstanceRecord:
        """Replace the row if it has not changed since it was read (ETag); ConcurrencyError otherwise."""
        table = self._table(self.instances_table)
        try:
            meta = table.update_entity(
                self._entity(rec), mode=UpdateMode.REPLACE, etag=rec.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceNotFoundError, ResourceExistsError) as exc:
            raise ConcurrencyError(f"instance {rec.instance_id!r} changed concurrently") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise ConcurrencyError(f"instance {rec.instance_id!r} changed concurrently") from exc
            raise
        return rec.with_(etag=meta.get("etag"))

    def list_instances(self) -> list[InstanceRecord]:
        return [self._record(e) for e in self._table(self.instances_table).list_entities()]

    def delete_instance(self, rec: InstanceRecord) -> None:
        self.delete_history(rec.instance_id, None)
        for msg in self.messages(rec.instance_id):
            self.delete_message(msg)
        with contextlib.suppress(ResourceNotFoundError):
            self._table(self.instances_table).delete_entity(rec.instance_id, "")

    # ------------------------------------------------------------------ history
    def load_history(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        """The committed history of the instance's current execution, in order."""
        if rec.history_length == 0:
            return []
        prefix = f"{rec.execution_id}-"
        rows = self._table(self.history_table).query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": rec.instance_id, "lo": prefix, "hi": prefix + "~"},
        )
        events: dict[int, dict[str, Any]] = {}
        for row in rows:
            seq = int(str(row["RowKey"])[len(prefix):])
            if seq < rec.history_length:
                text = _unpack(row, "E")
                if text is not None:
                    events[seq] = json.loads(text)
        missing = [i for i in range(rec.history_length) if i not in events]
        if missing:
            raise StoreError(f"history of {rec.instance_id!r} lacks events {missing[:5]}")
        return [events[i] for i in range(rec.history_length)]

    def append_history(self, rec: InstanceRecord, events: Iterable[dict[str, Any]]) -> int:
        """Write events after the committed history (not yet committed); return the new length."""
        ops: list[tuple[str, dict[str, Any]]] = []
        seq = rec.history_length
        for event in events:
            entity: dict[str, Any] = {
                "PartitionKey": rec.instance_id,
                "RowKey": f"{rec.execution_id}-{seq:08d}",
                "EventType": int(event.get("EventType", -1)),
            }
            _pack(entity, json.dumps(event, separators=(",", ":")), "E")
            ops.append(("upsert", entity))
            seq += 1
        table = self._table(self.history_table)
        for i in range(0, len(ops), 50):
            table.submit_transaction(ops[i : i + 50])
        return seq

    def delete_history(self, instance_id: str, execution_id: str | None) -> None:
        table = self._table(self.history_table)
        rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id}, select=["RowKey"])
        keys = [str(r["RowKey"]) for r in rows]
        if execution_id is not None:
            keys = [k for k in keys if k.startswith(f"{execution_id}-")]
        for i in range(0, len(keys), 50):
            table.submit_transaction(
                [("delete", {"PartitionKey": instance_id, "RowKey": k}) for k in keys[i : i + 50]]
            )

    # ------------------------------------------------------------------ inbox
    def post_message(self, instance_id: str, body: dict[str, Any]) -> str:
        """Queue a message for an instance; return its id (sortable by arrival)."""
        message_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        entity: dict[str, Any] = {"PartitionKey": instance_id, "RowKey": message_id}
        _pack(entity, json.dumps(body, separators=(",", ":")), "M")
        self._table(self.inbox_table).create_entity(entity)
        return message_id

    def messages(self, instance_id: str | None = None) -> list[Message]:
        """Messages of one instance (or of all), oldest first."""
        table = self._table(self.inbox_table)
        if instance_id is None:
            rows: Iterable[Any] = table.list_entities()
        else:
            rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
        out = []
        for row in rows:
            text = _unpack(row, "M")
            if text is not None:
                out.append(Message(str(row["PartitionKey"]), str(row["RowKey"]), json.loads(text)))
        out.sort(key=lambda m: (m.instance_id, m.message_id))
        return out

    def delete_message(self, msg: Message) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._table(self.inbox_table).delete_entity(msg.instance_id, msg.message_id)
