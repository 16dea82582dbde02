"""What the Functions bindings call: wiring of settings, adapters and the durable client.

Dependencies are built on first use and cached per process (the host reuses a warm worker), never at
import. Every HTTP answer for bad input is a 4xx with a JSON body that says what was wrong.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from remediation import steps
from remediation.model import InvalidInput, NotFoundError, RemediationError, SettingsError, instance_id_for
from remediation.settings import Settings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ wiring


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def credential() -> Any:
    from remediation.azure.credentials import default_credential

    return default_credential()


@functools.cache
def cloud() -> Any:
    from remediation.azure.compute import AzureCloud

    s = settings()
    return AzureCloud(credential(), arm_endpoint=s.arm_endpoint, ca_bundle=s.ca_bundle)


@functools.cache
def heartbeats() -> Any:
    s = settings()
    if not s.heartbeat_workspace_ids:
        return None
    from remediation.azure.heartbeats import LogAnalyticsHeartbeats

    return LogAnalyticsHeartbeats(credential(), list(s.heartbeat_workspace_ids), endpoint=s.logs_endpoint,
                                  ca_bundle=s.ca_bundle)


def store() -> Any:
    return _installed.get("store") or _table_store()


@functools.cache
def _table_store() -> Any:
    from remediation.azure import tables

    return tables.from_settings(settings())


@functools.cache
def activity_deps() -> Any:
    from remediation.activities import Deps

    s = settings()
    return Deps(
        cloud=cloud(),
        events=store(),
        opt_out_tag=(s.opt_out_tag.name, s.opt_out_tag.value),
        rescue_image=s.rescue_image,
        rescue_vm_size=s.rescue_vm_size,
        rescue_subnet_id=s.rescue_subnet_id,
        serial_tail_bytes=s.serial_tail_bytes,
        act_on_policy_missing=s.repair_policy_missing,
    )


_installed: dict[str, Any] = {}


def reset() -> None:
    """Forget cached settings, clients and installed dependencies (the demo and tests switch environments)."""
    _installed.clear()
    for fn in (settings, credential, cloud, heartbeats, _table_store, activity_deps):
        fn.cache_clear()


def install(*, deps: Any = None, incident_store: Any = None) -> None:
    """Use these dependencies instead of building them from settings (fakes in the orchestration tests)."""
    if deps is not None:
        _installed["deps"] = deps
    if incident_store is not None:
        _installed["store"] = incident_store


class _Lazy:
    """Builds its target on first use, so a bad or empty payload is answered without any client or I/O."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._target: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._target is None:
            self._target = self._factory()
        return getattr(self._target, name)


# ------------------------------------------------------------------------------------------ durable


class DurableStarter:
    """RepairStarter over the durable client: the instance id comes from the incident, so a repeat is refused."""

    def __init__(self, client: Any, *, ending: str | None = None) -> None:
        self._client = client
        self._ending = ending  # a repair that is finishing and no longer holds a slot

    async def start_repair(self, instance_id: str, payload: dict[str, Any]) -> bool:
        existing = await self._client.get_status(instance_id)
        if existing is not None and getattr(existing, "runtime_status", None) is not None:
            return False
        try:
            await self._client.start_new(steps.ORCHESTRATOR, instance_id, payload)
        except Exception as exc:  # the SDK raises a bare Exception for a 409 (instance exists)
            if "409" in str(exc) or "already exists" in str(exc).lower():
                return False
            raise
        return True

    async def running_repairs(self) -> int:
        import azure.durable_functions as df

        statuses = [df.OrchestrationRuntimeStatus.Running, df.OrchestrationRuntimeStatus.Pending]
        running = await self._client.get_status_by(runtime_status=statuses)
        return sum(1 for st in running if getattr(st, "instance_id", None) != self._ending
                   and not _finishing(getattr(st, "custom_status", None)))


def _finishing(custom_status: Any) -> bool:
    """The repair recorded its outcome and is only handing its slot on: it no longer counts."""
    from remediation.orchestration import FINAL_STEPS

    if isinstance(custom_status, str):
        try:
            custom_status = json.loads(custom_status)
        except ValueError:
            return False
    return isinstance(custom_status, dict) and custom_status.get("step") in FINAL_STEPS


# ------------------------------------------------------------------------------------------ HTTP


def _json(status: int, body: Any) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, sort_keys=True, default=str), status_code=status,
                             mimetype="application/json")


def _now() -> datetime:
    return datetime.now(UTC)


async def alert_webhook(req: func.HttpRequest, client: Any) -> func.HttpResponse:
    from remediation import intake

    if req.method.upper() == "OPTIONS":  # CloudEvents webhook validation handshake
        origin = req.headers.get("WebHook-Request-Origin")
        if not origin:
            return _json(400, {"error": "OPTIONS without a WebHook-Request-Origin header"})
        return func.HttpResponse(status_code=200, headers={"WebHook-Allowed-Origin": origin, "Allow": "POST"})
    try:
        s = settings()
        outcome = await intake.handle_alert(req.get_body(), settings=s, vms=_Lazy(cloud), store=_Lazy(store),
                                            starter=DurableStarter(client), now=_now())
    except SettingsError as exc:
        log.error("configuration error: %s", exc)
        return _json(500, {"error": f"the app is misconfigured: {exc}"})
    except InvalidInput as exc:
        return _json(413 if "too large" in str(exc) else 400, {"error": str(exc)})
    body = outcome.to_dict()
    if body.get("validation_response"):
        return _json(200, {"validationResponse": body["validation_response"]})
    return _json(202, body)


async def sweep(client: Any, *, past_due: bool = False) -> dict[str, Any]:
    if past_due:
        log.warning("sweep is running late (the timer was past due)")
    return await run_sweep(DurableStarter(client))


async def run_sweep(starter: Any) -> dict[str, Any]:
    from remediation import intake

    outcome = await intake.sweep(settings=settings(), vms=cloud(), heartbeats=heartbeats(), store=store(),
                                 starter=starter, now=_now())
    result: dict[str, Any] = outcome.to_dict()
    log.info("sweep: %s", {k: v for k, v in result.items() if not isinstance(v, list)})
    return result


def incidents_api(req: func.HttpRequest) -> func.HttpResponse:
    incident_id = req.route_params.get("incident_id")
    try:
        if incident_id:
            incident = store().get(incident_id)
            return _json(200, {**incident.to_dict(),
                               "timeline": [e.to_dict() for e in store().timeline(incident_id)]})
        return _json(200, {"incidents": [i.to_dict() for i in store().list()]})
    except NotFoundError:
        return _json(404, {"error": f"no incident {incident_id!r}"})


async def approve_repair(req: func.HttpRequest, client: Any) -> func.HttpResponse:
    from remediation.orchestration import APPROVAL_EVENT

    incident_id = req.route_params.get("incident_id", "")
    try:
        body = req.get_json()
    except ValueError:
        return _json(400, {"error": "body must be JSON: {\"approved\": true|false, \"by\": \"name\"}"})
    if not isinstance(body, dict) or not isinstance(body.get("approved"), bool):
        return _json(400, {"error": "body must be {\"approved\": true|false, \"by\": \"name\"}"})
    try:
        incident = store().get(incident_id)
    except (NotFoundError, RemediationError):
        return _json(404, {"error": f"no incident {incident_id!r}"})
    if incident.state.value != "awaiting_approval":
        return _json(409, {"error": f"incident {incident_id} is {incident.state.value}, not awaiting approval"})
    decision = {"approved": body["approved"], "by": str(body.get("by") or "")[:100]}
    await client.raise_event(instance_id_for(incident_id), APPROVAL_EVENT, decision)
    return _json(202, {"incident_id": incident_id, "decision": decision})


# ------------------------------------------------------------------------------------------ activities


async def start_queued_repairs(payload: dict[str, Any], client: Any) -> dict[str, Any]:
    """A repair has ended: start the repairs the concurrency cap held back, oldest first."""
    from remediation import intake

    ending = str(payload.get("instance_id") or "") or None
    results = await intake.start_queued(settings=settings(), vms=_Lazy(cloud), store=store(),
                                        starter=DurableStarter(client, ending=ending), now=_now())
    return {"results": [r.to_dict() for r in results],
            "started": sum(1 for r in results if r.action == intake.REPAIR_STARTED)}


def run_activity(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    from remediation import activities

    return activities.run(name, payload, _installed.get("deps") or activity_deps())
