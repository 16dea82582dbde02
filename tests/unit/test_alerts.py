"""Alert and event payload parsing: every accepted kind, and clear errors for everything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation import alerts
from remediation.alerts import parse_payload
from remediation.model import InvalidInput

DATA = Path(__file__).resolve().parent.parent / "data" / "alerts"
SUB = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
MAX = 1 << 20


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse(name: str) -> alerts.ParsedAlert:
    return parse_payload(load(name), max_bytes=MAX)


def names(parsed: alerts.ParsedAlert) -> list[str]:
    return sorted(f"{vm.resource_group.lower()}/{vm.name.lower()}" for vm in parsed.targets)


def reasons(parsed: alerts.ParsedAlert) -> dict[str, str]:
    return {i.resource.rsplit("/", 1)[-1].lower(): i.reason for i in parsed.ignored}


def common(targets: Any, *, condition: str = "Fired", service: str = "Platform", context: Any = None) -> bytes:
    return json.dumps({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertRule": "r", "monitorCondition": condition, "monitoringService": service,
                "alertTargetIDs": targets,
            },
            "alertContext": context or {},
        },
    }).encode()


def vm(name: str, rg: str = "rg1") -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


# ------------------------------------------------------------------------------ common alert schema


def test_metric_alert_targets_the_vm() -> None:
    parsed = parse("common_metric_fired.json")
    assert parsed.kind == alerts.KIND_COMMON_ALERT
    assert names(parsed) == ["app-prod/web-01"]
    assert parsed.targets[0].subscription_id == SUB
    assert parsed.ignored == []
    assert parsed.source == "Platform"
    assert parsed.monitor_condition == "Fired"
    assert parsed.validation_code is None


def test_metric_alert_guid_resource_id_dimension_is_not_a_target() -> None:
    # The ResourceId dimension of a platform metric holds the VM's GUID: neither a target nor noise.
    parsed = parse("common_metric_fired.json")
    assert len(parsed.targets) == 1
    assert all("5e0c8a1f" not in i.resource for i in parsed.ignored)


def test_resolved_alert_opens_nothing_and_says_why() -> None:
    parsed = parse("common_metric_resolved.json")
    assert parsed.targets == []
    assert parsed.monitor_condition == "Resolved"
    assert len(parsed.ignored) == 1
    assert parsed.ignored[0].resource.lower().endswith("/virtualmachines/web-01")
    assert "resolved" in parsed.ignored[0].reason.lower()


def test_log_alert_v2_takes_vms_from_resource_id_dimensions_deduplicated() -> None:
    parsed = parse("common_log_v2_dimensions.json")
    assert parsed.source == "Log Alerts V2"
    # Two criteria name db-02 in different case, configurationItems names it a third time: one target.
    assert names(parsed) == ["app-prod/db-02"]
    assert "workspace" in reasons(parsed)["ops-logs"]


def test_log_analytics_alert_takes_vms_from_search_results() -> None:
    parsed = parse("common_log_analytics_results.json")
    assert names(parsed) == ["app-prod/app-03", "app-prod/app-04"]
    why = reasons(parsed)
    assert "scale set" in why["3"]
    assert "workspace" in why["ops-logs"]


def test_activity_log_alert() -> None:
    parsed = parse("common_activity_administrative.json")
    assert parsed.source == "Activity Log - Administrative"
    assert names(parsed) == ["app-prod/web-01"]


def test_activity_log_scope_and_entity_are_used_when_targets_are_missing() -> None:
    body = common(None, service="Activity Log - Administrative", context={
        "authorization": {"action": "Microsoft.Compute/virtualMachines/restart/action", "scope": vm("a")},
        "properties": {"entity": vm("b")},
    })
    assert names(parse_payload(body, max_bytes=MAX)) == ["rg1/a", "rg1/b"]


def test_resource_health_alert_ignores_the_disk() -> None:
    parsed = parse("common_resource_health.json")
    assert parsed.source == "Resource Health"
    assert names(parsed) == ["app-prod/api-07"]
    assert "managed disk" in reasons(parsed)["api-07_osdisk"]


def test_service_health_alert_has_a_subscription_scope_only() -> None:
    parsed = parse("common_service_health.json")
    assert parsed.targets == []
    assert "subscription scope" in reasons(parsed)[SUB]


def test_storage_account_target_is_ignored_with_its_type() -> None:
    parsed = parse("common_storage_metric.json")
    assert parsed.targets == []
    assert "Microsoft.Storage/storageAccounts" in reasons(parsed)["opsdiag01"]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachineScaleSets/ss",
         "scale set"),
        (f"/subscriptions/{SUB}/resourceGroups/rg1", "resource group scope"),
        (f"/subscriptions/{SUB}", "subscription scope"),
        (vm("x") + "/extensions/CustomScript", "child resource"),
        ("/subscriptions/<subscription ID>/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/x",
         "subscription must be a GUID"),
        ("not-an-id", "not an Azure resource id"),
    ],
)
def test_non_vm_targets_are_ignored_with_a_reason(target: str, words: str) -> None:
    parsed = parse_payload(common([target]), max_bytes=MAX)
    assert parsed.targets == []
    assert len(parsed.ignored) == 1
    assert words in parsed.ignored[0].reason


def test_targets_are_deduplicated_case_insensitively_keeping_order() -> None:
    body = common([vm("B"), vm("a"), vm("b").upper().replace("/SUBSCRIPTIONS/", "/subscriptions/"), vm("A", "RG1")])
    parsed = parse_payload(body, max_bytes=MAX)
    assert [t.name for t in parsed.targets] == ["B", "a"]


def test_null_and_odd_typed_fields_do_not_break_parsing() -> None:
    body = common([None, 42, {"id": vm("x")}, vm("ok")], context={"condition": {"allOf": [None, 3, {"dimensions": 7}]}})
    parsed = parse_payload(body, max_bytes=MAX)
    assert names(parsed) == ["rg1/ok"]


def test_budget_alert_without_targets_parses_to_nothing() -> None:
    parsed = parse_payload(common(None, service="CostAlerts"), max_bytes=MAX)
    assert parsed.targets == [] and parsed.ignored == []


# ------------------------------------------------------------------------------ Event Grid / CloudEvents


def test_event_grid_validation_handshake_returns_the_code() -> None:
    parsed = parse("eventgrid_validation.json")
    assert parsed.kind == alerts.KIND_VALIDATION
    assert parsed.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    assert parsed.targets == []


def test_event_grid_health_resources_events() -> None:
    parsed = parse("eventgrid_health_resources.json")
    assert parsed.kind == alerts.KIND_EVENT_GRID
    assert names(parsed) == ["app-prod/web-01"]
    assert "scale set" in reasons(parsed)["workers"]
    assert alerts.AVAILABILITY_CHANGED in parsed.source and alerts.RESOURCE_ANNOTATED in parsed.source


def test_health_event_falls_back_to_resource_info_id_without_its_health_suffix() -> None:
    event = {
        "id": "1", "eventType": alerts.AVAILABILITY_CHANGED, "subject": "", "dataVersion": "1",
        "data": {"resourceInfo": {
            "id": vm("fallback") + "/providers/Microsoft.ResourceHealth/availabilityStatuses/ev1",
            "properties": {"availabilityState": "Unavailable"},
        }},
    }
    parsed = parse_payload(json.dumps([event]).encode(), max_bytes=MAX)
    assert names(parsed) == ["rg1/fallback"]


def test_single_cloud_event() -> None:
    parsed = parse("cloudevent_resource_annotated.json")
    assert parsed.kind == alerts.KIND_CLOUD_EVENTS
    assert names(parsed) == ["app-prod/api-07"]


def test_cloud_events_batch_and_unknown_event_types() -> None:
    events = [
        json.loads(load("cloudevent_resource_annotated.json")),
        {"specversion": "1.0", "type": "Microsoft.Storage.BlobCreated", "source": "/x", "id": "2",
         "subject": "/blobServices/default/containers/c/blobs/b"},
    ]
    parsed = parse_payload(json.dumps(events).encode(), max_bytes=MAX)
    assert parsed.kind == alerts.KIND_CLOUD_EVENTS
    assert names(parsed) == ["app-prod/api-07"]
    assert "not one this service acts on" in parsed.ignored[0].reason


def test_dry_run_alert_summary() -> None:
    from remediation.intake import dry_run_alert

    summary = dry_run_alert(load("common_resource_health.json"), max_bytes=MAX)
    assert summary["kind"] == "common_alert"
    assert [t.lower() for t in summary["targets"]] == [vm("api-07", "app-prod").lower()]
    assert summary["ignored"][0]["reason"].startswith("a managed disk")
    json.dumps(summary)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty payload"),
        (b"   \n", "empty payload"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"42", "a JSON int"),
        (b'"text"', "a JSON str"),
        (b"[]", "empty event array"),
        (b"[1, 2]", "event 0 is a JSON int"),
        (b'[{"id": "1"}]', "neither 'eventType'"),
        (b'{"schemaId": "AzureMonitorMetricAlert", "data": {}}', "unsupported schemaId 'AzureMonitorMetricAlert'"),
        (b'{"schemaId": 7}', "unsupported schemaId"),
        (b'{"schemaId": "azureMonitorCommonAlertSchema"}', "no 'data' object"),
        (b'{"schemaId": "azureMonitorCommonAlertSchema", "data": {}}', "no 'data.essentials'"),
        (b'{"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {"alertTargetIDs": "x"}}}',
         "must be a list"),
        (b'{"hello": "world"}', "no 'schemaId'"),
        (b'[{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]', "validationCode"),
        (b'[{"eventType": "' + alerts.AVAILABILITY_CHANGED.encode() + b'", "data": {"resourceInfo": {}}}]',
         "names no resource"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
    ],
)
def test_malformed_payloads_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=None) as info:
        parse_payload(body, max_bytes=MAX)
    assert message in str(info.value)


def test_payload_size_limit() -> None:
    body = common([vm("a")])
    with pytest.raises(InvalidInput) as info:
        parse_payload(body, max_bytes=100)
    assert str(info.value) == f"payload too large ({len(body)} bytes > 100 bytes)"
    assert parse_payload(body, max_bytes=len(body)).targets


# ---------------------------------------------------------------------------------------------- fuzz

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
    | st.sampled_from([vm("f"), f"/subscriptions/{SUB}", "azureMonitorCommonAlertSchema", alerts.VALIDATION_EVENT,
                       alerts.AVAILABILITY_CHANGED, "Resolved", "_ResourceId"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(
        st.sampled_from(["schemaId", "data", "essentials", "alertTargetIDs", "alertContext", "condition", "allOf",
                         "dimensions", "name", "value", "eventType", "specversion", "type", "subject",
                         "resourceInfo", "properties", "targetResourceId", "id", "validationCode",
                         "monitorCondition", "SearchResults", "tables", "columns", "rows", "authorization",
                         "scope", "configurationItems"]) | st.text(max_size=8),
        children, max_size=6,
    ),
    max_leaves=30,
)


def _structured_payloads() -> st.SearchStrategy[bytes]:
    common_shape = _json_values.map(
        lambda v: {"schemaId": "azureMonitorCommonAlertSchema", "data": v}
    )
    event_shape = st.lists(_json_values, max_size=4)
    return st.one_of(_json_values, common_shape, event_shape).map(lambda v: json.dumps(v).encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), _structured_payloads()))
def test_fuzz_only_invalid_input_is_ever_raised(body: bytes) -> None:
    try:
        parsed = parse_payload(body, max_bytes=4096)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert parsed.kind in {alerts.KIND_COMMON_ALERT, alerts.KIND_EVENT_GRID, alerts.KIND_CLOUD_EVENTS,
                           alerts.KIND_VALIDATION}
    assert len({t.key for t in parsed.targets}) == len(parsed.targets)
    json.dumps(parsed.to_dict())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(node))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copy


_SAMPLES = {p.name: json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))}


@st.composite
def _mutated_samples(draw: st.DrawFn) -> bytes:
    doc = _SAMPLES[draw(st.sampled_from(sorted(_SAMPLES)))]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        doc = _replace(doc, path, draw(_json_values))
    return json.dumps(doc).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_samples())
def test_fuzz_mutated_samples_only_raise_invalid_input(body: bytes) -> None:
    try:
        parsed = parse_payload(body, max_bytes=MAX)
    except InvalidInput as exc:
        assert str(exc)
        return
    for target in parsed.targets:
        assert target.key.startswith("/subscriptions/")
    json.dumps(parsed.to_dict())
