"""A local Durable Functions host: runs orchestrators and activities of a Python app with the real SDK.

The Durable extension normally lives inside the Functions host. Here `DurableHost` plays its part:

* the HTTP API the SDK's `DurableOrchestrationClient` talks to (start, status, list, raise event,
  terminate, purge), on plain http on 127.0.0.1;
* orchestration episodes: the orchestrator is replayed with its whole history (schema V2, so actions
  arrive as one list with `task_all` / `task_any` as compound actions), and the new actions it returns
  are scheduled: activities on a bounded thread pool, durable timers on a clock;
* persistence in Table Storage (see `durable_store`), so a host killed at any point resumes on the
  same storage: an activity scheduled without a recorded result runs again (at least once), and no
  event is recorded twice.

Task ids follow the SDK's own numbering: every activity, timer and retry step takes the next integer
in the order the orchestrator yields them, external events are matched by name. An event that makes
the SDK take an id while it replays (a retried task's failure takes a timer, the retry timer a new
attempt) is delivered alone in its episode, so that id is the next free one, as this host assigns it;
other results are delivered together.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from azure.core.exceptions import AzureError
from azure.functions._durable_functions import df_dumps

from localazure.durable_store import (
    TERMINAL,
    AlreadyExistsError,
    ConcurrencyError,
    InstanceRecord,
    Message,
    PayloadTooLargeError,
    StoreError,
    TaskHubStore,
    validate_instance_id,
)
from localazure.funchost import FunctionHost

log = logging.getLogger(__name__)

# History event types (DurableTask.Core EventType) and action types (SDK ActionType).
EXECUTION_STARTED, EXECUTION_COMPLETED, EXECUTION_TERMINATED = 0, 1, 3
TASK_SCHEDULED, TASK_COMPLETED, TASK_FAILED = 4, 5, 6
SUB_CREATED, SUB_COMPLETED, SUB_FAILED = 7, 8, 9
TIMER_CREATED, TIMER_FIRED = 10, 11
ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED = 12, 13
EVENT_RAISED = 15
EVENT_NAMES = {
    0: "ExecutionStarted", 1: "ExecutionCompleted", 2: "ExecutionFailed", 3: "ExecutionTerminated",
    4: "TaskScheduled", 5: "TaskCompleted", 6: "TaskFailed", 7: "SubOrchestrationInstanceCreated",
    8: "SubOrchestrationInstanceCompleted", 9: "SubOrchestrationInstanceFailed", 10: "TimerCreated",
    11: "TimerFired", 12: "OrchestratorStarted", 13: "OrchestratorCompleted", 14: "EventSent",
    15: "EventRaised", 16: "ContinueAsNew",
}
A_CALL_ACTIVITY, A_CALL_ACTIVITY_RETRY, A_CALL_SUB, A_CALL_SUB_RETRY = 0, 1, 2, 3
A_CONTINUE_AS_NEW, A_CREATE_TIMER, A_WAIT_EVENT = 4, 5, 6
A_WHEN_ANY, A_WHEN_ALL = 11, 12
_UNSUPPORTED_ACTIONS = {7: "call_entity", 8: "call_http", 9: "signal_entity"}

_MAX_BATCH = 50  # messages applied in one episode
_OUT_OF_PROC_LABEL = "\n\n$OutOfProcData$:"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_STATUS_CODES = {"Completed": 200, "Failed": 400, "Terminated": 400, "Canceled": 400}


def ts(dt: datetime) -> str:
    """A timestamp as the Durable extension writes it (UTC, microseconds, Z)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime(_TS_FORMAT)


def parse_ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class DurableHostError(Exception):
    """The durable host was asked for something it cannot do."""


class InstanceExistsError(DurableHostError):
    """An instance with this id exists and has not finished (Durable refuses to start it again)."""


class InstanceNotFoundError(DurableHostError):
    """No instance has this id."""


class InstanceGoneError(DurableHostError):
    """The instance has already finished (completed, failed or terminated)."""


# ---------------------------------------------------------------------------- clocks
class Clock(Protocol):
    """Where the host gets `now` (the orchestrators' `current_utc_datetime`) and how long timers wait."""

    virtual: bool

    def now(self) -> datetime: ...

    def seconds_until(self, when: datetime) -> float:
        """Real seconds to wait until `when` (0 if due; inf for a virtual clock that must be advanced)."""
        ...

    def advance_to(self, when: datetime) -> None: ...


class RealClock:
    """Wall-clock time; with timer_scale < 1 time runs faster (a 60 s timer fires after 60*scale s)."""

    virtual = False

    def __init__(self, timer_scale: float = 1.0) -> None:
        if timer_scale <= 0:
            raise ValueError("timer_scale must be positive")
        self.timer_scale = timer_scale
        self._t0 = datetime.now(UTC)
        self._m0 = time.monotonic()

    def now(self) -> datetime:
        return self._t0 + timedelta(seconds=(time.monotonic() - self._m0) / self.timer_scale)

    def seconds_until(self, when: datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds() * self.timer_scale)

    def advance_to(self, when: datetime) -> None:
        raise DurableHostError("a real clock cannot be advanced")


class VirtualClock:
    """Time that moves only when advanced (by run_until_idle, to the next due timer, or by hand)."""

    virtual = True

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC).replace(microsecond=0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def seconds_until(self, when: datetime) -> float:
        return 0.0 if when <= self.now() else math.inf

    def advance_to(self, when: datetime) -> None:
        with self._lock:
            self._now = max(self._now, when)

    def advance(self, delta: timedelta) -> None:
        self.advance_to(self.now() + delta)


Observer = Callable[[str, str, dict[str, Any]], None]


@dataclass
class _Delivery:
    """What one episode applies: new history events and the inbox messages they came from."""

    events: list[dict[str, Any]]
    consumed: list[Message]
    terminate_reason: str | None = None


def _event(event_type: int, when: datetime, event_id: int = -1, **fields: Any) -> dict[str, Any]:
    return {"EventType": event_type, "EventId": event_id, "Timestamp": ts(when), **fields}


def _next_task_id(history: list[dict[str, Any]]) -> int:
    ids = [e["EventId"] for e in history if e["EventType"] in (TASK_SCHEDULED, TIMER_CREATED, SUB_CREATED)]
    return max(ids, default=-1) + 1


def _action_count(history: list[dict[str, Any]]) -> int:
    for e in reversed(history):
        if e["EventType"] == ORCHESTRATOR_COMPLETED:
            return int(e.get("ActionCount", 0))
    return 0


def _cancelled_timers(history: list[dict[str, Any]]) -> set[int]:
    out: set[int] = set()
    for e in history:
        if e["EventType"] == ORCHESTRATOR_COMPLETED:
            out.update(int(i) for i in e.get("CancelledTimers", []))
    return out


def _applied_key(body: dict[str, Any]) -> tuple[str, Any]:
    kind = body.get("kind")
    if kind in ("TaskCompleted", "TaskFailed", "SubCompleted", "SubFailed"):
        return ("task", int(body["TaskScheduledId"]))
    if kind == "TimerFired":
        return ("timer", int(body["TimerId"]))
    return ("msg", body.get("MessageId"))


def _applied_keys(history: list[dict[str, Any]]) -> set[tuple[str, Any]]:
    keys: set[tuple[str, Any]] = set()
    for e in history:
        t = e["EventType"]
        if t in (TASK_COMPLETED, TASK_FAILED, SUB_COMPLETED, SUB_FAILED):
            keys.add(("task", int(e["TaskScheduledId"])))
        elif t == TIMER_FIRED:
            keys.add(("timer", int(e["TimerId"])))
        if e.get("MessageId"):
            keys.add(("msg", e["MessageId"]))
    return keys


def _decode(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class DurableHost:
    """Runs one task hub's orchestrations for the app loaded by a FunctionHost."""

    def __init__(
        self,
        funchost: FunctionHost,
        connection_string: str,
        *,
        hub: str = "SelinuxRemediation",
        clock: Clock | None = None,
        max_concurrent_activities: int = 4,
        observer: Observer | None = None,
    ) -> None:
        if max_concurrent_activities < 1:
            raise ValueError("max_concurrent_activities must be at least 1")
        self.funchost = funchost
        self.hub = hub
        self.store = TaskHubStore(connection_string, hub)
        self.clock: Clock = clock or RealClock()
        self.observer = observer
        self._max_activities = max_concurrent_activities
        self._cv = threading.Condition()
        self._dirty: dict[str, None] = {}
        self._timers: dict[tuple[str, str, int], datetime] = {}
        self._running: set[tuple[str, str, int]] = set()
        self._busy = 0
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._server: ThreadingHTTPServer | None = None
        self._base = ""
        self._worker_error: BaseException | None = None
        self._history_cache: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Start the HTTP API and the worker (resuming unfinished work in storage); return the rpc base URL."""
        if self._worker is not None:
            return self.rpc_base_url
        self.store.create_tables()
        self._pool = ThreadPoolExecutor(self._max_activities, thread_name_prefix="durable-activity")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="durable-http", daemon=True).start()
        self._recover()
        self._stopping = False
        self._worker = threading.Thread(target=self._work_loop, name="durable-worker", daemon=True)
        self._worker.start()
        if self.funchost.durable_client_binding is None:
            self.funchost.durable_client_binding = self.client_binding
        if self.funchost.durable_api is None:
            self.funchost.durable_api = lambda: self.rpc_base_url
        return self.rpc_base_url

    def stop(self) -> None:
        """Stop the worker and the HTTP API; running activities finish in the background."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        with self._cv:
            # Storage is the truth: a later start() rebuilds pending work from it.
            self._dirty.clear()
            self._timers.clear()
            self._running.clear()
            self._history_cache.clear()
        if self.funchost.durable_client_binding == self.client_binding:
            self.funchost.durable_client_binding = None
            self.funchost.durable_api = None

    def __enter__(self) -> DurableHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rpc_base_url(self) -> str:
        return f"{self._base}/durabletask/"

    def client_binding(self) -> str:
        """The durable client binding (JSON) the host gives functions with a durable client input."""
        if not self._base:
            raise DurableHostError("the durable host is not started")
        hook = f"{self._base}/runtime/webhooks/durabletask/"
        query = f"taskHub={self.hub}&connection=Storage"
        inst = f"{hook}instances/INSTANCEID"
        return json.dumps({
            "taskHubName": self.hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{hook}orchestrators/{{functionName}}[/{{instanceId}}]?{query}",
                "createAndWaitOnNewInstancePostUri": (
                    f"{hook}orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}"
                    f"&pollingInterval={{intervalInSeconds}}&{query}"
                ),
            },
            "managementUrls": {
                "id": "INSTANCEID",
                "statusQueryGetUri": f"{inst}?{query}",
                "sendEventPostUri": f"{inst}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{inst}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{inst}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{inst}?{query}",
                "restartPostUri": f"{inst}/restart?{query}",
                "suspendPostUri": f"{inst}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{inst}/resume?reason={{text}}&{query}",
            },
            "rpcBaseUrl": self.rpc_base_url,
        })

    def _notify(self, point: str, instance_id: str, details: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer(point, instance_id, details)

    def _mark_dirty(self, instance_id: str) -> None:
        with self._cv:
            self._dirty[instance_id] = None
            self._cv.notify_all()

    # ------------------------------------------------------------------ client operations
    def start_new(self, orchestrator: str, instance_id: str | None = None, input: Any = None) -> str:
        """Start an orchestration (input: a JSON-serialisable value); return its instance id."""
        return self._start(orchestrator, instance_id, None if input is None else str(df_dumps(input)))

    def _start(self, orchestrator: str, instance_id: str | None, input_json: str | None) -> str:
        if not self.funchost.has_function(orchestrator, "orchestrator"):
            raise DurableHostError(
                f"The function '{orchestrator}' doesn't exist, is disabled, or is not an orchestrator function."
            )
        iid = validate_instance_id(instance_id) if instance_id else uuid.uuid4().hex
        now = ts(self.clock.now())
        rec = InstanceRecord(
            instance_id=iid, name=orchestrator, status="Pending", execution_id=uuid.uuid4().hex,
            input=input_json, output=None, custom_status=None, created=now, updated=now,
        )
        try:
            self.store.create_instance(rec)
        except AlreadyExistsError as exc:
            raise InstanceExistsError(str(exc)) from None
        except ConcurrencyError as exc:
            raise InstanceExistsError(f"instance {iid!r} is being started concurrently") from exc
        self._mark_dirty(iid)
        return iid

    def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver an external event (data: a JSON-serialisable value) to a running instance."""
        self._raise(instance_id, name, str(df_dumps(data)))

    def _raise(self, instance_id: str, name: str, data_json: str | None) -> None:
        rec = self.store.get_instance(instance_id)
        if rec is None:
            raise InstanceNotFoundError(f"No instance with ID {instance_id} found.")
        if rec.status in TERMINAL:
            raise InstanceGoneError(f"Instance with ID {instance_id} is gone: either completed or failed")
        if not name:
            raise DurableHostError("event name must be a non-empty string")
        self.store.post_message(instance_id, {"kind": "EventRaised", "Name": name, "Input": data_json})
        self._mark_dirty(instance_id)

    def terminate(self, instance_id: str, reason: str = "") -> None:
        """Terminate a running instance (its status becomes Terminated with the reason as output)."""
        rec = self.store.get_instance(instance_id)
        if rec is None:
            raise InstanceNotFoundError(f"No instance with ID '{instance_id}' found.")
        if rec.status in TERMINAL:
            raise InstanceGoneError(f"Instance {instance_id} has already finished ({rec.status})")
        self.store.post_message(instance_id, {"kind": "Terminate", "Reason": reason})
        self._mark_dirty(instance_id)

    def purge(self, instance_id: str) -> int:
        """Delete a finished instance and its history; return how many instances were deleted."""
        rec = self.store.get_instance(instance_id)
        if rec is None:
            return 0
        if rec.status not in TERMINAL:
            raise DurableHostError(f"instance {instance_id} is {rec.status}: only finished instances are purged")
        self.store.delete_instance(rec)
        return 1

    def status(self, instance_id: str, *, show_history: bool = False) -> dict[str, Any] | None:
        """The instance's status as the Durable HTTP API reports it, or None if unknown."""
        rec = self.store.get_instance(instance_id)
        if rec is None:
            return None
        return self._status_json(rec, show_input=True, show_history=show_history)

    def _status_json(self, rec: InstanceRecord, *, show_input: bool, show_history: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": rec.name,
            "instanceId": rec.instance_id,
            "runtimeStatus": rec.status,
            "input": _decode(rec.input) if show_input else None,
            "customStatus": _decode(rec.custom_status),
            "output": _decode(rec.output),
            "createdTime": rec.created,
            "lastUpdatedTime": rec.updated,
        }
        if show_history:
            out["history"] = [
                {"EventType": EVENT_NAMES.get(e["EventType"], str(e["EventType"])),
                 **{k: v for k, v in e.items() if k not in ("EventType", "IsPlayed")}}
                for e in self.store.load_history(rec)
            ]
        return out

    def list_instances(self, runtime_status: Iterable[str] | None = None,
                       instance_id_prefix: str | None = None,
                       created_from: datetime | None = None,
                       created_to: datetime | None = None) -> list[dict[str, Any]]:
        """Status of every instance matching the filters."""
        wanted = {s.lower() for s in runtime_status} if runtime_status else None
        out = []
        for rec in self.store.list_instances():
            if wanted is not None and rec.status.lower() not in wanted:
                continue
            if instance_id_prefix and not rec.instance_id.startswith(instance_id_prefix):
                continue
            created = parse_ts(rec.created)
            if (created_from and created < created_from) or (created_to and created > created_to):
                continue
            out.append(self._status_json(rec, show_input=True, show_history=False))
        return out

    # ------------------------------------------------------------------ waiting (tests, demo)
    def _quiet_locked(self) -> bool:
        due = any(self.clock.seconds_until(t) <= 0 for t in self._timers.values())
        return not self._dirty and self._busy == 0 and not self._running and not due

    def run_until_idle(self, timeout: float = 60, *, advance_clock: bool = True) -> None:
        """Process until nothing can run; with a virtual clock, jump to each next timer (unless told not to)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                while not self._quiet_locked():
                    self._check_worker_locked()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"durable host still busy after {timeout:.0f} s "
                            f"({len(self._running)} activities running, {len(self._dirty)} instances waiting)"
                        )
                    self._cv.wait(timeout=min(left, 0.5))
                self._check_worker_locked()
                if not (advance_clock and self.clock.virtual and self._timers):
                    return
                self.clock.advance_to(min(self._timers.values()))
                self._cv.notify_all()

    def wait_for(self, instance_id: str, statuses: Iterable[str] = TERMINAL, timeout: float = 60) -> dict[str, Any]:
        """Poll until the instance reaches one of `statuses`; return its status."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(instance_id)
            if st is not None and st["runtimeStatus"] in wanted:
                return st
            if time.monotonic() > deadline:
                now = st["runtimeStatus"] if st else "unknown"
                raise TimeoutError(f"instance {instance_id} is still {now} after {timeout:.0f} s")
            with self._cv:
                self._check_worker_locked()
            time.sleep(0.05)

    def _check_worker_locked(self) -> None:
        if self._worker_error is not None:
            raise DurableHostError(f"the durable worker stopped: {self._worker_error!r}")
        if self._worker is None or not self._worker.is_alive():
            raise DurableHostError("the durable host is not running (call start())")

    # ------------------------------------------------------------------ worker
    def _work_loop(self) -> None:
        try:
            self._work_loop_inner()
        except BaseException as exc:
            log.exception("durable worker stopped")
            with self._cv:
                self._worker_error = exc
                self._cv.notify_all()
            raise

    def _work_loop_inner(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopping:
                        return
                    due = [k for k, t in self._timers.items() if self.clock.seconds_until(t) <= 0]
                    if due or self._dirty:
                        break
                    waits = [self.clock.seconds_until(t) for t in self._timers.values()]
                    wait = min([*waits, 1.0])
                    self._cv.wait(timeout=max(wait, 0.001))
                fired = [(k, self._timers.pop(k)) for k in due]
                instance_id = None
                if not fired:
                    instance_id = next(iter(self._dirty))
                    del self._dirty[instance_id]
                self._busy += 1
            try:
                if fired:
                    for (iid, execution_id, timer_id), fire_at in fired:
                        self.store.post_message(iid, {
                            "kind": "TimerFired", "ExecutionId": execution_id,
                            "TimerId": timer_id, "FireAt": ts(fire_at),
                        })
                        self._mark_dirty(iid)
                elif instance_id is not None:
                    self._process(instance_id)
            except (AzureError, ConcurrencyError) as exc:
                log.warning("durable host storage error, will retry: %s", exc)
                time.sleep(0.5)
                with self._cv:
                    for (iid, execution_id, timer_id), fire_at in fired:
                        self._timers[(iid, execution_id, timer_id)] = fire_at
                    if instance_id is not None:
                        self._dirty[instance_id] = None
            except Exception as exc:  # one broken instance must not stop the others
                log.exception("durable host failed to process %s", instance_id)
                if instance_id is not None:
                    self._fail_instance(instance_id, f"local durable host error: {exc}")
            finally:
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def _recover(self) -> None:
        """Re-arm timers and re-run activities that storage shows as scheduled but unfinished."""
        inbox: dict[str, list[Message]] = {}
        for msg in self.store.messages():
            inbox.setdefault(msg.instance_id, []).append(msg)
        for rec in self.store.list_instances():
            if rec.status in TERMINAL:
                continue
            history = self.store.load_history(rec)
            waiting = {
                _applied_key(m.body) for m in inbox.get(rec.instance_id, [])
                if m.body.get("ExecutionId") in (None, rec.execution_id)
            }
            done = _applied_keys(history) | waiting
            cancelled = _cancelled_timers(history)
            for e in history:
                if e["EventType"] == TASK_SCHEDULED and ("task", e["EventId"]) not in done:
                    log.info("resuming activity %s (task %s) of %s", e["Name"], e["EventId"], rec.instance_id)
                    self._dispatch_activity(rec, e)
                elif e["EventType"] == SUB_CREATED and ("task", e["EventId"]) not in done:
                    self._ensure_child(rec, e)
                elif (e["EventType"] == TIMER_CREATED and ("timer", e["EventId"]) not in done
                      and e["EventId"] not in cancelled):
                    self._timers[(rec.instance_id, rec.execution_id, e["EventId"])] = parse_ts(e["FireAt"])
            self._dirty[rec.instance_id] = None
        for iid in inbox:
            self._dirty[iid] = None

    def _process(self, instance_id: str) -> None:
        rec = self.store.get_instance(instance_id)
        msgs = self.store.messages(instance_id)
        if rec is None or rec.status in TERMINAL:
            for m in msgs:  # results that arrive after the end (e.g. the loser of a task_any) are dropped
                self.store.delete_message(m)
            return
        cached = self._history_cache.get(instance_id)
        if cached is not None and cached[0] == rec.etag and rec.etag is not None:
            history = cached[1]
        else:
            history = self.store.load_history(rec)
        now = self.clock.now()
        if rec.history_length == 0:
            log.info("orchestration %s (%s) started", instance_id, rec.name)
            started = _event(EXECUTION_STARTED, now, Name=rec.name, Input=rec.input, Version="",
                             OrchestrationInstance={"InstanceId": rec.instance_id, "ExecutionId": rec.execution_id},
                             ParentInstance=rec.parent_instance_id)
            self._episode(rec, history, _Delivery([started], []))
            if msgs:
                self._mark_dirty(instance_id)
            return
        applied = _applied_keys(history)
        scheduled = {e["EventId"]: e for e in history if e["EventType"] in (TASK_SCHEDULED, TIMER_CREATED, SUB_CREATED)}
        live: list[Message] = []
        for m in msgs:
            execution = m.body.get("ExecutionId")
            key = _applied_key(m.body)
            stale = execution not in (None, rec.execution_id)
            unknown = key[0] in ("task", "timer") and key[1] not in scheduled
            if stale or key in applied or unknown:
                if unknown and not stale:
                    log.warning("dropping message for unknown task %s of %s", key, instance_id)
                self.store.delete_message(m)
            else:
                live.append(m)
        if not live:
            return
        terminate = next((m for m in live if m.body.get("kind") == "Terminate"), None)
        if terminate is not None:
            reason = str(terminate.body.get("Reason", ""))
            self._terminate(rec, now, reason, [m for m in live if m.body.get("kind") == "Terminate"])
            return
        batch = self._next_batch(live, scheduled)
        self._episode(rec, history, _Delivery([self._message_event(m, now) for m in batch], batch))
        if len(live) > len(batch):
            self._mark_dirty(instance_id)

    @staticmethod
    def _next_batch(live: list[Message], scheduled: dict[int, dict[str, Any]]) -> list[Message]:
        """The messages one episode applies: a retry step alone, otherwise every result up to the next one.

        Replaying a retried task's failure (or its retry timer) makes the SDK take the next task id
        itself; with that event alone in its episode, the id is the next free one, as the host assumes.
        """
        def retry_step(m: Message) -> bool:
            key = _applied_key(m.body)
            event = scheduled.get(key[1]) if key[0] in ("task", "timer") else None
            if event is None:
                return False
            if m.body.get("kind") == "TimerFired":
                return "RetryOf" in event
            return m.body.get("kind") in ("TaskFailed", "SubFailed") and "RetryOptions" in event

        if retry_step(live[0]):
            return live[:1]
        batch: list[Message] = []
        for m in live[:_MAX_BATCH]:
            if retry_step(m):
                break
            batch.append(m)
        return batch

    @staticmethod
    def _message_event(msg: Message, now: datetime) -> dict[str, Any]:
        b = msg.body
        kind = b.get("kind")
        if kind == "TaskCompleted":
            return _event(TASK_COMPLETED, now, TaskScheduledId=b["TaskScheduledId"], Result=b.get("Result"))
        if kind == "TaskFailed":
            return _event(TASK_FAILED, now, TaskScheduledId=b["TaskScheduledId"],
                          Reason=b.get("Reason"), Details=b.get("Details"))
        if kind == "SubCompleted":
            return _event(SUB_COMPLETED, now, TaskScheduledId=b["TaskScheduledId"], Result=b.get("Result"))
        if kind == "SubFailed":
            return _event(SUB_FAILED, now, TaskScheduledId=b["TaskScheduledId"],
                          Reason=b.get("Reason"), Details=b.get("Details"))
        if kind == "TimerFired":
            return _event(TIMER_FIRED, now, TimerId=b["TimerId"], FireAt=b.get("FireAt"))
        if kind == "EventRaised":
            return _event(EVENT_RAISED, now, Name=b["Name"], Input=b.get("Input"), MessageId=msg.message_id)
        raise DurableHostError(f"unknown inbox message kind {kind!r}")

    def _terminate(self, rec: InstanceRecord, now: datetime, reason: str, consumed: list[Message]) -> None:
        events = [_event(EXECUTION_TERMINATED, now, Input=reason, MessageId=consumed[0].message_id)]
        length = self.store.append_history(rec, events)
        self.store.update_instance(rec.with_(
            history_length=length, status="Terminated", output=json.dumps(reason), updated=ts(now)))
        self._after_finish(rec, "Terminated", json.dumps(reason))
        for m in consumed:
            self.store.delete_message(m)
        self._notify("committed", rec.instance_id, {"events": events, "status": "Terminated"})

    def _retry_steps(self, rec: InstanceRecord, history: list[dict[str, Any]], event: dict[str, Any],
                     now: datetime, next_id: int) -> list[dict[str, Any]]:
        """What the Durable retry policy adds when a retried task fails or its retry timer fires."""
        by_id = {e["EventId"]: e for e in history if e["EventType"] in (TASK_SCHEDULED, TIMER_CREATED, SUB_CREATED)}
        if event["EventType"] in (TASK_FAILED, SUB_FAILED):
            sched = by_id.get(event["TaskScheduledId"])
            if sched is None or "RetryOptions" not in sched:
                return []
            interval = int(sched["RetryOptions"].get("firstRetryIntervalInMilliseconds", 1000))
            fire_at = now + timedelta(milliseconds=interval)
            return [_event(TIMER_CREATED, now, next_id, FireAt=ts(fire_at), RetryOf=sched["EventId"])]
        if event["EventType"] == TIMER_FIRED:
            timer = by_id.get(event["TimerId"])
            if timer is None or "RetryOf" not in timer:
                return []
            failed = by_id[timer["RetryOf"]]
            group = failed.get("RetryGroup", failed["EventId"])
            attempts = sum(1 for e in by_id.values()
                           if e["EventType"] == failed["EventType"] and e.get("RetryGroup") == group)
            if attempts >= int(failed["RetryOptions"].get("maxNumberOfAttempts", 1)):
                return []  # the SDK now raises the last failure into the orchestrator
            again = {k: v for k, v in failed.items() if k not in ("EventType", "EventId", "Timestamp")}
            if failed["EventType"] == SUB_CREATED and not failed.get("ExplicitId"):
                again["InstanceId"] = self._child_id(rec, next_id)
            return [_event(failed["EventType"], now, next_id, **again)]
        return []

    @staticmethod
    def _child_id(rec: InstanceRecord, task_id: int) -> str:
        return f"{rec.instance_id}:{task_id:04d}"

    def _run_orchestrator(
        self, rec: InstanceRecord, history: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], str | None]:
        """Replay the orchestrator; return its state and, if it failed, the error message."""
        context = {
            "history": history,
            "input": rec.input,
            "instanceId": rec.instance_id,
            "isReplaying": False,
            "parentInstanceId": rec.parent_instance_id,
            "upperSchemaVersion": 1,
        }
        try:
            handle = self.funchost.orchestrator_handle(rec.name)
            out = handle(json.dumps(context))
        except Exception as exc:  # noqa: BLE001 - the user's orchestrator failing fails the instance
            text = str(exc)
            if _OUT_OF_PROC_LABEL in text:
                message, _, state_json = text.partition(_OUT_OF_PROC_LABEL)
                try:
                    state = json.loads(state_json)
                except json.JSONDecodeError:
                    state = {}
                return state, state.get("error") or message
            return {}, f"{type(exc).__name__}: {exc}"
        return json.loads(out), None

    def _schedule(self, rec: InstanceRecord, actions: list[dict[str, Any]], path: str, now: datetime,
                  next_id: int, out: list[dict[str, Any]], start: int = 0) -> int:
        """Turn new actions into TaskScheduled/TimerCreated/SubOrchestrationInstanceCreated events."""
        for i, action in enumerate(actions, start):
            where = f"{path}{i}"
            kind = action.get("actionType")
            if kind in (A_WHEN_ALL, A_WHEN_ANY):
                next_id = self._schedule(rec, action.get("compoundActions", []), where + ".", now, next_id, out)
            elif kind in (A_CALL_ACTIVITY, A_CALL_ACTIVITY_RETRY):
                fields: dict[str, Any] = {"Name": action["functionName"], "Input": action.get("input"),
                                          "ActionPath": where}
                if kind == A_CALL_ACTIVITY_RETRY:
                    fields["RetryOptions"] = action.get("retryOptions", {})
                    fields["RetryGroup"] = next_id
                out.append(_event(TASK_SCHEDULED, now, next_id, **fields))
                next_id += 1
            elif kind == A_CREATE_TIMER:
                out.append(_event(TIMER_CREATED, now, next_id, FireAt=action["fireAt"], ActionPath=where))
                next_id += 1
            elif kind in (A_WAIT_EVENT, A_CONTINUE_AS_NEW):
                continue
            elif kind in (A_CALL_SUB, A_CALL_SUB_RETRY):
                name = str(action["functionName"])
                if not self.funchost.has_function(name, "orchestrator"):
                    raise DurableHostError(f"The function '{name}' doesn't exist or is not an orchestrator function.")
                explicit = action.get("instanceId")
                fields = {"Name": name, "Input": action.get("input"), "ActionPath": where,
                          "InstanceId": validate_instance_id(explicit) if explicit else self._child_id(rec, next_id),
                          "ExplicitId": bool(explicit)}
                if kind == A_CALL_SUB_RETRY:
                    fields["RetryOptions"] = action.get("retryOptions", {})
                    fields["RetryGroup"] = next_id
                out.append(_event(SUB_CREATED, now, next_id, **fields))
                next_id += 1
            else:
                api = _UNSUPPORTED_ACTIONS.get(int(kind or -1), f"action type {kind}")
                raise DurableHostError(f"{api} is not supported by the local durable host")
        return next_id

    @staticmethod
    def _timer_paths(actions: list[dict[str, Any]], path: str = "") -> dict[str, bool]:
        """Action path -> isCanceled for every timer action (to stop timers the orchestrator cancelled)."""
        out: dict[str, bool] = {}
        for i, action in enumerate(actions):
            where = f"{path}{i}"
            if action.get("actionType") in (A_WHEN_ALL, A_WHEN_ANY):
                out.update(DurableHost._timer_paths(action.get("compoundActions", []), where + "."))
            elif action.get("actionType") == A_CREATE_TIMER:
                out[where] = bool(action.get("isCanceled"))
        return out

    def _episode(self, rec: InstanceRecord, history: list[dict[str, Any]], delivery: _Delivery) -> None:
        now = self.clock.now()
        started = _event(ORCHESTRATOR_STARTED, now)
        next_id = _next_task_id(history)
        new_events = [started, *delivery.events]
        steps: list[dict[str, Any]] = []
        for ev in delivery.events:
            more = self._retry_steps(rec, history + steps, ev, now, next_id)
            next_id += len(more)
            steps.extend(more)
        replay = [{**e, "IsPlayed": True} for e in history] + [{**e, "IsPlayed": False} for e in new_events]
        state, error = self._run_orchestrator(rec, replay)
        actions = [a for group in state.get("actions", []) for a in (group if isinstance(group, list) else [group])]
        known = _action_count(history)
        scheduled: list[dict[str, Any]] = []
        continue_as_new: dict[str, Any] | None = None
        if error is None:
            if len(actions) < known:
                error = (f"Non-deterministic orchestrator: replay produced {len(actions)} actions "
                         f"where the history records {known}")
            else:
                try:
                    next_id = self._schedule(rec, actions[known:], "", now, next_id, scheduled, known)
                except DurableHostError as exc:
                    error = str(exc)
                continue_as_new = next((a for a in actions[known:] if a.get("actionType") == A_CONTINUE_AS_NEW), None)
        all_created = {e["ActionPath"]: e["EventId"] for e in history + steps + scheduled
                       if e["EventType"] == TIMER_CREATED and "ActionPath" in e}
        cancelled_before = _cancelled_timers(history)
        newly_cancelled = sorted(
            all_created[p] for p, c in self._timer_paths(actions).items()
            if c and p in all_created and all_created[p] not in cancelled_before
        )
        custom = state.get("customStatus")
        completed = _event(ORCHESTRATOR_COMPLETED, now, ActionCount=len(actions) if error is None else known,
                           CancelledTimers=newly_cancelled)
        events = [*new_events, *steps, *scheduled, completed]
        status, output = "Running", rec.output
        if error is not None:
            status = "Failed"
            output = json.dumps(f"Orchestrator function '{rec.name}' failed: {error}")
            events.append(_event(EXECUTION_COMPLETED, now, OrchestrationStatus="Failed", Result=output))
        elif state.get("isDone") and continue_as_new is None:
            status = "Completed"
            output = json.dumps(state.get("output"))
            events.append(_event(EXECUTION_COMPLETED, now, OrchestrationStatus="Completed", Result=output))
        length = self.store.append_history(rec, events)
        self._notify("appended", rec.instance_id, {"events": events})
        updated = rec.with_(
            history_length=length, status=status, output=output, updated=ts(now),
            custom_status=json.dumps(custom) if custom is not None else rec.custom_status,
        )
        if continue_as_new is not None:
            updated = updated.with_(execution_id=uuid.uuid4().hex, history_length=0,
                                    input=continue_as_new.get("input"))
        committed = self.store.update_instance(updated)  # the commit point of the episode
        if continue_as_new is None and status not in TERMINAL:
            # The worker is the only writer of history: the next episode can skip re-reading it.
            self._history_cache[rec.instance_id] = (committed.etag, [*history, *events])
        else:
            self._history_cache.pop(rec.instance_id, None)
        self._notify("committed", rec.instance_id, {"events": events, "status": status})
        for m in delivery.consumed:
            self.store.delete_message(m)
        if status in TERMINAL:
            log.info("orchestration %s (%s) %s", rec.instance_id, rec.name, status.lower())
            self._after_finish(rec, status, output)
            return
        if continue_as_new is not None:
            self._after_finish(rec, "ContinuedAsNew", None)
            self._mark_dirty(rec.instance_id)
            return
        with self._cv:
            for timer_id in newly_cancelled:
                self._timers.pop((rec.instance_id, rec.execution_id, timer_id), None)
            for e in [*steps, *scheduled]:
                if e["EventType"] == TIMER_CREATED and e["EventId"] not in newly_cancelled:
                    self._timers[(rec.instance_id, rec.execution_id, e["EventId"])] = parse_ts(e["FireAt"])
            self._cv.notify_all()
        for e in [*steps, *scheduled]:
            if e["EventType"] == TASK_SCHEDULED:
                self._dispatch_activity(rec, e)
            elif e["EventType"] == SUB_CREATED:
                self._ensure_child(rec, e)

    def _fail_instance(self, instance_id: str, message: str) -> None:
        try:
            rec = self.store.get_instance(instance_id)
            if rec is not None and rec.status not in TERMINAL:
                self.store.update_instance(rec.with_(status="Failed", output=json.dumps(message),
                                                     updated=ts(self.clock.now())))
                self._after_finish(rec, "Failed", json.dumps(message))
        except (AzureError, StoreError) as exc:
            log.warning("could not mark %s failed: %s", instance_id, exc)

    def _after_finish(self, rec: InstanceRecord, status: str, output: str | None) -> None:
        with self._cv:
            for key in [k for k in self._timers if k[0] == rec.instance_id and k[1] == rec.execution_id]:
                del self._timers[key]
            self._cv.notify_all()
        if rec.parent_instance_id and rec.parent_task_id is not None and status in TERMINAL:
            self._report_to_parent(rec, status, output)

    def _report_to_parent(self, child: InstanceRecord, status: str, output: str | None) -> None:
        """Tell the parent orchestration how its sub-orchestration ended."""
        assert child.parent_instance_id is not None
        body: dict[str, Any] = {"ExecutionId": child.parent_execution_id, "TaskScheduledId": child.parent_task_id}
        if status == "Completed":
            body.update(kind="SubCompleted", Result=output)
        else:
            reason = _decode(output)
            if status == "Terminated":
                reason = f"Sub-orchestration '{child.name}' ({child.instance_id}) was terminated: {reason}"
            body.update(kind="SubFailed", Reason=str(reason), Details="")
        self.store.post_message(child.parent_instance_id, body)
        self._mark_dirty(child.parent_instance_id)

    def _ensure_child(self, rec: InstanceRecord, event: dict[str, Any]) -> None:
        """Create the sub-orchestration an episode scheduled (or report it, if it already ended)."""
        child_id = str(event["InstanceId"])
        task_id = int(event["EventId"])
        child = self.store.get_instance(child_id)
        ours = (child is not None and child.parent_instance_id == rec.instance_id
                and child.parent_task_id == task_id and child.parent_execution_id == rec.execution_id)
        if child is not None and ours:
            if child.status in TERMINAL:
                self._report_to_parent(child, child.status, child.output)
            else:
                self._mark_dirty(child_id)
            return
        now = ts(self.clock.now())
        try:
            self.store.create_instance(InstanceRecord(
                instance_id=child_id, name=str(event["Name"]), status="Pending", execution_id=uuid.uuid4().hex,
                input=event.get("Input"), output=None, custom_status=None, created=now, updated=now,
                parent_instance_id=rec.instance_id, parent_task_id=task_id, parent_execution_id=rec.execution_id,
            ))
        except (AlreadyExistsError, ConcurrencyError) as exc:
            self.store.post_message(rec.instance_id, {
                "kind": "SubFailed", "ExecutionId": rec.execution_id, "TaskScheduledId": task_id,
                "Reason": f"cannot start sub-orchestration {child_id}: {exc}", "Details": "",
            })
            self._mark_dirty(rec.instance_id)
            return
        self._mark_dirty(child_id)

    # ------------------------------------------------------------------ activities
    def _dispatch_activity(self, rec: InstanceRecord, event: dict[str, Any]) -> None:
        key = (rec.instance_id, rec.execution_id, int(event["EventId"]))
        with self._cv:
            if key in self._running or self._pool is None:
                return
            self._running.add(key)
        self._pool.submit(self._run_activity, key, str(event["Name"]), event.get("Input"))

    def _run_activity(self, key: tuple[str, str, int], name: str, input_json: str | None) -> None:
        iid, execution_id, task_id = key
        try:
            self._notify("activity_started", iid, {"name": name, "task_id": task_id})
            body: dict[str, Any] = {"ExecutionId": execution_id, "TaskScheduledId": task_id}
            try:
                body.update(kind="TaskCompleted", Result=self.funchost.call_activity_json(name, input_json))
            except Exception as exc:  # noqa: BLE001 - any activity error becomes TaskFailed, as in Durable
                log.info("activity %s (task %s) of %s failed: %s", name, task_id, iid, exc)
                body.update(kind="TaskFailed", Reason=f"Activity function '{name}' failed: {exc}",
                            Details="".join(traceback.format_exception_only(type(exc), exc)).strip())
            for attempt in range(5):
                try:
                    self.store.post_message(iid, body)
                    break
                except PayloadTooLargeError as exc:
                    body = {"ExecutionId": execution_id, "TaskScheduledId": task_id, "kind": "TaskFailed",
                            "Reason": f"Activity function '{name}' failed: its result is too large: {exc}",
                            "Details": ""}
                except AzureError as exc:
                    log.warning("cannot record the result of activity %s (attempt %d): %s", name, attempt + 1, exc)
                    time.sleep(0.5 * (attempt + 1))
            self._notify("activity_completed", iid, {"name": name, "task_id": task_id, "kind": body["kind"]})
        finally:
            with self._cv:
                self._running.discard(key)
                self._dirty[iid] = None
                self._cv.notify_all()

    # ------------------------------------------------------------------ HTTP API
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("durable http: " + format, *args)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    status, payload, headers = host._api(self.command, self.path, body)
                except (AzureError, StoreError) as exc:
                    status, payload, headers = 503, {"Message": f"task hub storage unavailable: {exc}"}, {}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        return Handler

    def _management_payload(self, instance_id: str) -> dict[str, str]:
        urls = dict(json.loads(self.client_binding())["managementUrls"])
        return {k: v.replace("INSTANCEID", quote(instance_id, safe="")) for k, v in urls.items()}

    def _api(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query))
        path = parts.path
        for prefix in ("/durabletask/", "/runtime/webhooks/durabletask/"):
            if path.startswith(prefix):
                path = path[len(prefix):]
                break
        else:
            return 404, {"Message": f"no durable API at {parts.path}"}, {}
        segs = [unquote(s) for s in path.split("/")]
        if segs and segs[-1] == "":
            segs = segs[:-1]

        def error(
            status: int, message: str, exc_type: str = "System.InvalidOperationException"
        ) -> tuple[int, Any, dict[str, str]]:
            return status, {"Message": message, "ExceptionMessage": message, "ExceptionType": exc_type}, {}

        try:
            if segs[:1] == ["orchestrators"] and len(segs) in (2, 3) and method == "POST":
                input_json = self._request_input(body)
                try:
                    iid = self._start(segs[1], segs[2] if len(segs) == 3 else None, input_json)
                except InstanceExistsError as exc:
                    return error(409, str(exc))
                except DurableHostError as exc:
                    return error(400, str(exc), "System.ArgumentException")
                payload = self._management_payload(iid)
                return 202, payload, {"Location": payload["statusQueryGetUri"]}
            if segs[:1] == ["instances"] and len(segs) == 1:
                if method == "GET":
                    statuses = [s for s in query.get("runtimeStatus", "").split(",") if s] or None
                    return 200, self.list_instances(
                        statuses, query.get("instanceIdPrefix"),
                        parse_ts(query["createdTimeFrom"]) if query.get("createdTimeFrom") else None,
                        parse_ts(query["createdTimeTo"]) if query.get("createdTimeTo") else None,
                    ), {}
                if method == "DELETE":
                    statuses = [s for s in query.get("runtimeStatus", "").split(",") if s] or sorted(TERMINAL)
                    deleted = sum(self.purge(s["instanceId"]) for s in self.list_instances(
                        statuses, None,
                        parse_ts(query["createdTimeFrom"]) if query.get("createdTimeFrom") else None,
                        parse_ts(query["createdTimeTo"]) if query.get("createdTimeTo") else None,
                    ) if s["runtimeStatus"] in TERMINAL)
                    return (200 if deleted else 404), {"instancesDeleted": deleted}, {}
            if segs[:1] == ["instances"] and len(segs) == 2:
                iid = segs[1]
                if method == "GET":
                    rec = self.store.get_instance(iid)
                    if rec is None:
                        return 404, None, {}
                    st = self._status_json(rec, show_input=query.get("showInput", "true").lower() != "false",
                                           show_history=query.get("showHistory", "").lower() == "true")
                    if "history" in st:
                        st["historyEvents"] = st.pop("history")
                    return _STATUS_CODES.get(rec.status, 202), st, {}
                if method == "DELETE":
                    deleted = self.purge(iid)
                    return (200 if deleted else 404), {"instancesDeleted": deleted}, {}
            if segs[:1] == ["instances"] and len(segs) == 4 and segs[2] == "raiseEvent" and method == "POST":
                try:
                    data_json = self._request_input(body)
                except DurableHostError:
                    return error(400, "Only application/json request content is supported")
                self._raise(segs[1], segs[3], data_json)
                return 202, None, {}
            if segs[:1] == ["instances"] and len(segs) == 3 and segs[2] == "terminate" and method == "POST":
                self.terminate(segs[1], query.get("reason", ""))
                return 202, None, {}
            if segs[:1] == ["instances"] and len(segs) == 3 and segs[2] in ("suspend", "resume", "rewind", "restart"):
                return error(501, f"{segs[2]} is not supported by the local durable host",
                             "System.NotSupportedException")
        except InstanceNotFoundError as exc:
            return error(404, str(exc))
        except InstanceGoneError as exc:
            return error(410, str(exc))
        except (DurableHostError, ValueError) as exc:
            return error(400, str(exc), "System.ArgumentException")
        return error(404, f"no durable API for {method} {parts.path}")

    @staticmethod
    def _request_input(body: bytes) -> str | None:
        """A start input or event payload as JSON text; the SDK posts it as a JSON string holding the JSON."""
        if not body.strip():
            return None
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            raise DurableHostError(f"the request body is not JSON: {exc.msg}") from None
        if value is None:
            return None
        if isinstance(value, str):
            try:
                json.loads(value)
                return value
            except json.JSONDecodeError:
                pass
        return json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    """`python -m localazure.durable`: serve a Functions app's HTTP triggers and run its orchestrations."""
    import argparse
    import contextlib
    import os
    import signal
    from pathlib import Path

    from localazure import azurite
    from localazure.funchost import FunctionHostError, read_local_settings

    parser = argparse.ArgumentParser(
        prog="python -m localazure.durable",
        description="Run a Functions app locally: HTTP triggers on /api, the Durable HTTP API, orchestrations.",
    )
    parser.add_argument("--app", default="function_app", help="module (or .py file) holding the app object")
    parser.add_argument("--settings", type=Path, help="local.settings.json whose Values become app settings")
    parser.add_argument("--connection-string", help="Table Storage for the task hub (default: AzureWebJobsStorage, "
                                                    "else a private Azurite)")
    parser.add_argument("--hub", default="SelinuxRemediation", help="task hub name")
    parser.add_argument("--port", type=int, default=7071, help="port of the HTTP triggers (0 picks a free one)")
    parser.add_argument("--timer-scale", type=float, default=1.0,
                        help="durable timers wait this fraction of their time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    emulator = None
    try:
        settings = read_local_settings(args.settings) if args.settings else {}
        conn = (args.connection_string or settings.get("AzureWebJobsStorage")
                or os.environ.get("AzureWebJobsStorage"))  # noqa: SIM112 - the Functions setting's own name
        if not conn or conn == "UseDevelopmentStorage=true":
            emulator = azurite.start(prefix="durable-azurite-")
            conn = emulator.connection_string
        funchost = FunctionHost(args.app, settings={**settings, "AzureWebJobsStorage": conn})
        host = DurableHost(funchost, conn, hub=args.hub, clock=RealClock(args.timer_scale))
        rpc = host.start()
        base = funchost.serve_http(args.port)
    except (FunctionHostError, DurableHostError, ValueError, RuntimeError, OSError) as exc:
        sys.stderr.write(f"durable host: {exc}\n")
        if emulator is not None:
            emulator.stop()
        return 2
    for info in funchost.functions().values():
        if info.kind == "http":
            print(f"  {info.name}: {'|'.join(info.methods) or 'ANY'} {base}/api/{info.route}", flush=True)
    print(f"durable HTTP API: {rpc}  (task hub {args.hub}); Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    funchost.stop_http()
    host.stop()
    if emulator is not None:
        emulator.stop()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main())
