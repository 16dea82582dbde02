"""Fuzzing the alert webhook through function_app: whatever arrives, the answer is never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localazure import azurite as azurite_mod
from localazure.world import LocalWorld

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk]

SUB = "3f2b6c1d-8a4e-4f7b-9c2d-1e5a7b9c0d24"  # the default scenario's subscription
VM_IDS = [
    f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01",
    f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/ghost",
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Compute/virtualMachines/win-01",
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Compute/disks/db-01-osdisk",
    "/subscriptions/not-a-guid/resourceGroups/x/providers/Microsoft.Compute/virtualMachines/y",
]


@pytest.fixture(scope="module")
def world(azurite: azurite_mod.Azurite) -> Iterator[LocalWorld]:
    # Dry run: the fuzzer may name real VMs; it must never start a repair.
    with LocalWorld(storage=azurite, hub="Fuzz", time_scale=0.01, settings={"REMEDIATION_DRY_RUN": "true"}) as w:
        yield w


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(VM_IDS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=4),
    max_leaves=20,
)


def _common_alert(ids: list[str], condition: str, extra: Any) -> dict[str, Any]:
    return {"schemaId": "azureMonitorCommonAlertSchema",
            "data": {"essentials": {"alertTargetIDs": ids, "monitorCondition": condition,
                                    "monitoringService": "Platform", "extra": extra},
                     "alertContext": extra}}


def _event_grid(ids: list[str], event_type: str, extra: Any) -> list[dict[str, Any]]:
    return [{"id": str(i), "eventType": event_type, "subject": vm, "eventTime": "2026-11-27T10:00:00Z",
             "dataVersion": "1", "data": {"resourceInfo": {"id": vm}, "extra": extra}} for i, vm in enumerate(ids)]


payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(_common_alert, st.lists(st.sampled_from(VM_IDS), max_size=3),
              st.sampled_from(["Fired", "Resolved", "", "x"]), json_values).map(lambda v: json.dumps(v).encode()),
    st.builds(_event_grid, st.lists(st.sampled_from(VM_IDS), max_size=3),
              st.sampled_from(["Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged",
                               "Microsoft.EventGrid.SubscriptionValidationEvent", "Other.Event"]),
              json_values).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payloads)
def test_the_webhook_never_answers_500(world: LocalWorld, body: bytes) -> None:
    status, answer = world.post_alert(body)
    assert status in (200, 202, 400, 413), (status, answer)
    if status >= 400:
        assert answer.get("error"), answer
    assert world.durable is not None
    assert world.durable.list_instances() == []  # dry run: never a repair
