"""Alert and event payloads -> the VMs they point at, or a clear validation error.

Pure: no Azure SDK, no I/O. Everything here treats the payload as hostile text: every field is
type-checked before use, and any malformed input ends in InvalidInput (never another exception).

Accepted payloads:

* Azure Monitor alerts in the common alert schema (`schemaId: azureMonitorCommonAlertSchema`):
  metric alerts, log search alerts (`Log Alerts V2`, `Log Analytics`, `Application Insights`),
  activity log alerts (`Activity Log - *`, `ServiceHealth`, `Resource Health`). The affected VMs come
  from `essentials.alertTargetIDs`, and for log search alerts (whose target is usually a workspace)
  from resource id dimensions (`_ResourceId`, `ResourceId`), resource id columns of embedded search
  results and `configurationItems` that are resource ids. An alert whose `monitorCondition` is
  `Resolved` opens nothing: its VMs are reported as ignored.
* Event Grid deliveries (a JSON array of events in the Event Grid schema). A
  `Microsoft.EventGrid.SubscriptionValidationEvent` yields the validation code to echo back. Health
  Resources events (`Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged` and
  `...ResourceAnnotated`) point at `data.resourceInfo.properties.targetResourceId` (else the subject,
  else `data.resourceInfo.id` without its Microsoft.ResourceHealth suffix).
* CloudEvents: the same Health Resources events in the CloudEvents 1.0 schema, single or batched.

Anything that names a resource other than a standalone VM (a disk, a scale set, a storage account, a
subscription or resource group scope) is reported in `ignored` with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from remediation.model import InvalidInput, VmRef

COMMON_ALERT_SCHEMA = "azureMonitorCommonAlertSchema"
VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
AVAILABILITY_CHANGED = "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged"
RESOURCE_ANNOTATED = "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated"
HEALTH_EVENTS = frozenset({AVAILABILITY_CHANGED.lower(), RESOURCE_ANNOTATED.lower()})

KIND_COMMON_ALERT = "common_alert"
KIND_EVENT_GRID = "event_grid"
KIND_CLOUD_EVENTS = "cloud_events"
KIND_VALIDATION = "subscription_validation"

# Dimension / column names that carry a full ARM resource id (log search alerts).
_RESOURCE_ID_NAMES = frozenset({"_resourceid", "resourceid", "resource_id", "resource"})
_MAX_VALIDATION_CODE = 512
_MAX_SHOWN = 300  # characters of a hostile string echoed back in a message

_ARM_ID = re.compile(r"^/subscriptions/[^/]+(/.*)?$", re.IGNORECASE)
_SUBSCRIPTION_SCOPE = re.compile(r"^/subscriptions/[^/]+$", re.IGNORECASE)
_RG_SCOPE = re.compile(r"^/subscriptions/[^/]+/resourcegroups/[^/]+$", re.IGNORECASE)
_PROVIDER_PART = re.compile(
    r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/(?P<ns>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+)"
    r"(?P<rest>/.*)?$",
    re.IGNORECASE,
)
# An extension resource on a VM, e.g. .../virtualMachines/vm1/providers/Microsoft.ResourceHealth/...
_VM_EXTENSION = re.compile(
    r"^(?P<vm>/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.compute/virtualmachines/[^/]+)"
    r"/providers/.+$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Ignored:
    """A resource named by the payload that will not be acted on, and why."""

    resource: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"resource": self.resource, "reason": self.reason}


@dataclass(frozen=True)
class ParsedAlert:
    """What a payload asks the product to look at."""

    kind: str
    targets: list[VmRef] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    validation_code: str | None = None
    source: str = ""  # monitoringService of an alert, or the event type(s) of an event delivery
    monitor_condition: str | None = None
    alert_rule: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "targets": [vm.id for vm in self.targets],
            "ignored": [i.to_dict() for i in self.ignored],
            "validation_code": self.validation_code,
            "source": self.source,
            "monitor_condition": self.monitor_condition,
            "alert_rule": self.alert_rule,
        }


# ---------------------------------------------------------------------------------------------- helpers


def _obj(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _lst(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _get_ci(obj: dict[str, Any], name: str) -> Any:
    """A field by name, case-insensitively (Azure payloads are not consistent about case)."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _why_not_vm(resource_id: str) -> str:
    """A short reason why an ARM id is not a standalone VM."""
    if _SUBSCRIPTION_SCOPE.match(resource_id):
        return "a subscription scope, not a virtual machine"
    if _RG_SCOPE.match(resource_id):
        return "a resource group scope, not a virtual machine"
    m = _PROVIDER_PART.match(resource_id)
    if not m:
        return "not a virtual machine resource id"
    rtype = f"{m['ns']}/{m['type']}"
    lowered = rtype.lower()
    if lowered == "microsoft.compute/virtualmachinescalesets":
        return "a virtual machine scale set (or one of its instances): only standalone VMs are repaired"
    if lowered == "microsoft.compute/virtualmachines":
        if m["rest"]:
            return "a child resource of a virtual machine, not the virtual machine itself"
        return "a malformed virtual machine id (the subscription must be a GUID; check the name characters)"
    if lowered == "microsoft.compute/disks":
        return "a managed disk, not a virtual machine"
    if lowered == "microsoft.operationalinsights/workspaces":
        return "a Log Analytics workspace (the alert's scope), not a virtual machine"
    return f"not a virtual machine (resource type {rtype})"


class _Collector:
    """Accumulates VM targets and ignored resources, deduplicated case-insensitively."""

    def __init__(self) -> None:
        self.targets: dict[str, VmRef] = {}
        self.ignored: dict[str, Ignored] = {}

    def ignore(self, resource: str, reason: str) -> None:
        key = resource.lower()
        if key not in self.ignored and key not in self.targets:
            self.ignored[key] = Ignored(_shown(resource), reason)

    def add(self, value: Any, *, report_non_vm: bool = True, strip_extension: bool = False) -> bool:
        """Add a resource id; True if it named a VM. Non-VM ids go to `ignored` when report_non_vm."""
        text = _text(value)
        if text is None:
            return False
        text = text.rstrip("/")
        if strip_extension:
            m = _VM_EXTENSION.match(text)
            if m:
                text = m["vm"]
        try:
            vm = VmRef.parse(text)
        except InvalidInput:
            if report_non_vm:
                if _ARM_ID.match(text):
                    self.ignore(text, _why_not_vm(text))
                else:
                    self.ignore(text, "not an Azure resource id")
            return False
        self.targets.setdefault(vm.key, vm)
        self.ignored.pop(vm.key, None)
        return True

    def vm_or_extension_parent(self, value: Any) -> bool:
        """Add only if the id is a VM, or an extension resource (`.../providers/...`) on a VM."""
        text = _text(value)
        if text is None or not _ARM_ID.match(text):
            return False
        if self.add(text, report_non_vm=False):
            return True
        m = _VM_EXTENSION.match(text.rstrip("/"))
        return m is not None and self.add(m["vm"], report_non_vm=False)


# ---------------------------------------------------------------------------------------------- entry point


def parse_payload(body: bytes, *, max_bytes: int) -> ParsedAlert:
    """Parse an alert or event delivery; raise InvalidInput saying what is wrong with it."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise InvalidInput("payload must be bytes")
    data = bytes(body)
    if len(data) > max_bytes:
        raise InvalidInput(f"payload too large ({len(data)} bytes > {max_bytes} bytes)")
    if not data.strip():
        raise InvalidInput("empty payload (expected a JSON alert or event delivery)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"payload is not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise InvalidInput("not JSON: nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"not JSON: {exc}") from None
    try:
        return _dispatch(doc)
    except InvalidInput:
        raise
    except RecursionError:
        raise InvalidInput("payload nested too deeply") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # Defence in depth: a shape this parser did not foresee is still the caller's bad input.
        raise InvalidInput(f"unsupported payload structure ({type(exc).__name__})") from None


def _dispatch(doc: Any) -> ParsedAlert:
    if isinstance(doc, list):
        return _parse_event_array(doc)
    if not isinstance(doc, dict):
        raise InvalidInput(
            f"unsupported payload: a JSON {type(doc).__name__} (expected an Azure Monitor alert object "
            "or an Event Grid array of events)"
        )
    if any(isinstance(k, str) and k.lower() == "schemaid" for k in doc):
        schema = _get_ci(doc, "schemaId")
        if not isinstance(schema, str) or schema.strip().lower() != COMMON_ALERT_SCHEMA.lower():
            shown = _shown(schema) if isinstance(schema, str) else repr(schema)[:_MAX_SHOWN]
            raise InvalidInput(
                f"unsupported schemaId {shown!r} (expected '{COMMON_ALERT_SCHEMA}': enable the common alert "
                "schema on the action group)"
            )
        return _parse_common_alert(doc)
    if "specversion" in doc:
        return _parse_event_array([doc])
    if "eventType" in doc:
        return _parse_event_array([doc])
    raise InvalidInput(
        "unsupported payload: no 'schemaId' (Azure Monitor common alert schema), no 'eventType' (Event Grid) "
        "and no 'specversion' (CloudEvents)"
    )


# ---------------------------------------------------------------------------------------------- common alert schema


def _parse_common_alert(doc: dict[str, Any]) -> ParsedAlert:
    data = _obj(doc.get("data"))
    if data is None:
        raise InvalidInput("common alert schema payload has no 'data' object")
    essentials = _obj(data.get("essentials"))
    if essentials is None:
        raise InvalidInput("common alert schema payload has no 'data.essentials' object")
    raw_targets = essentials.get("alertTargetIDs")
    if raw_targets is not None and not isinstance(raw_targets, list):
        raise InvalidInput("'data.essentials.alertTargetIDs' must be a list of resource ids")
    service = _text(essentials.get("monitoringService")) or ""
    condition = _text(essentials.get("monitorCondition"))
    rule = _text(essentials.get("alertRule"))
    context = _obj(data.get("alertContext")) or {}

    found = _Collector()
    for target in _lst(raw_targets):
        found.add(target)

    # Log search alerts target a workspace; the VMs are in resource id dimensions or results.
    condition_obj = _obj(context.get("condition")) or {}
    for criterion in _lst(condition_obj.get("allOf")):
        crit = _obj(criterion)
        if crit is not None:
            _collect_dimensions(found, crit.get("dimensions"))
    _collect_dimensions(found, _get_ci(context, "Dimensions"))
    _collect_search_results(found, _get_ci(context, "SearchResults"))
    for item in _lst(essentials.get("configurationItems")) + _lst(_get_ci(context, "AffectedConfigurationItems")):
        found.vm_or_extension_parent(item)

    # Activity log alerts: the operation's scope and entity name the resource the event is about.
    authorization = _obj(context.get("authorization")) or {}
    found.vm_or_extension_parent(authorization.get("scope"))
    props = _obj(context.get("properties")) or {}
    for name in ("entity", "resourceId", "resourceUri"):
        found.vm_or_extension_parent(props.get(name))

    targets = list(found.targets.values())
    ignored = list(found.ignored.values())
    if condition is not None and condition.lower() == "resolved":
        ignored = [Ignored(vm.id, "alert resolved (monitorCondition Resolved): nothing to repair") for vm in targets]
        ignored += list(found.ignored.values())
        targets = []
    return ParsedAlert(
        kind=KIND_COMMON_ALERT,
        targets=targets,
        ignored=ignored,
        source=service,
        monitor_condition=condition,
        alert_rule=rule,
    )


def _collect_dimensions(found: _Collector, dimensions: Any) -> None:
    for dim in _lst(dimensions):
        d = _obj(dim)
        if d is None:
            continue
        name = _text(d.get("name"))
        value = d.get("value")
        if name is not None and name.lower() in _RESOURCE_ID_NAMES:
            text = _text(value)
            # A metric alert's ResourceId dimension holds the VM's GUID, not an ARM id: skip it quietly.
            if text is not None and _ARM_ID.match(text):
                found.add(text)
        else:
            found.vm_or_extension_parent(value)


def _collect_search_results(found: _Collector, results: Any) -> None:
    res = _obj(results)
    if res is None:
        return
    for table in _lst(res.get("tables")):
        t = _obj(table)
        if t is None:
            continue
        columns = _lst(t.get("columns"))
        wanted = []
        for index, column in enumerate(columns):
            col = _obj(column)
            name = _text(col.get("name")) if col is not None else None
            if name is not None and name.lower() in _RESOURCE_ID_NAMES:
                wanted.append(index)
        if not wanted:
            continue
        for row in _lst(t.get("rows")):
            cells = _lst(row)
            for index in wanted:
                if index < len(cells):
                    text = _text(cells[index])
                    if text is not None and _ARM_ID.match(text):
                        found.add(text)


# ------------------------------------------------------------------------------ Event Grid / CloudEvents


def _parse_event_array(events: list[Any]) -> ParsedAlert:
    if not events:
        raise InvalidInput("empty event array (expected at least one Event Grid event or CloudEvent)")
    found = _Collector()
    types: list[str] = []
    cloud = False
    for index, raw in enumerate(events):
        event = _obj(raw)
        if event is None:
            raise InvalidInput(f"event {index} is a JSON {type(raw).__name__}, not an object")
        if "specversion" in event:
            cloud = True
            etype = _text(event.get("type"))
            if etype is None:
                raise InvalidInput(f"CloudEvent {index} has no 'type'")
        else:
            etype = _text(event.get("eventType"))
            if etype is None:
                raise InvalidInput(
                    f"event {index} has neither 'eventType' (Event Grid schema) nor 'specversion' (CloudEvents)"
                )
        if etype not in types:
            types.append(etype)
        if etype.lower() == VALIDATION_EVENT.lower():
            code = _text((_obj(event.get("data")) or {}).get("validationCode"))
            if code is None:
                raise InvalidInput(f"subscription validation event {index} has no 'data.validationCode'")
            if len(code) > _MAX_VALIDATION_CODE:
                raise InvalidInput(f"subscription validation code is too long ({len(code)} characters)")
            return ParsedAlert(kind=KIND_VALIDATION, validation_code=code, source=VALIDATION_EVENT)
        if etype.lower() in HEALTH_EVENTS:
            _collect_health_event(found, event, index, etype)
        else:
            subject = _text(event.get("subject")) or etype
            found.ignore(subject, f"event type {_shown(etype)!r} is not one this service acts on")
    return ParsedAlert(
        kind=KIND_CLOUD_EVENTS if cloud else KIND_EVENT_GRID,
        targets=list(found.targets.values()),
        ignored=list(found.ignored.values()),
        source=",".join(types),
    )


def _collect_health_event(found: _Collector, event: dict[str, Any], index: int, etype: str) -> None:
    data = _obj(event.get("data"))
    if data is None:
        raise InvalidInput(f"event {index} ({etype}) has no 'data' object")
    info = _obj(data.get("resourceInfo")) or {}
    props = _obj(info.get("properties")) or {}
    for candidate in (props.get("targetResourceId"), event.get("subject"), info.get("id")):
        if _text(candidate) is not None:
            found.add(candidate, strip_extension=True)
            return
    raise InvalidInput(
        f"event {index} ({etype}) names no resource (no data.resourceInfo.properties.targetResourceId, "
        "subject or data.resourceInfo.id)"
    )
