"""The slot count under the concurrency cap, as DurableStarter reads it from the durable client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus

from remediation.entrypoints import DurableStarter


def status(instance_id: str, custom_status: Any = None) -> DurableOrchestrationStatus:
    """A status as the SDK builds it from the durable HTTP API's JSON."""
    return DurableOrchestrationStatus.from_json({"instanceId": instance_id, "runtimeStatus": "Running",
                                                 "customStatus": custom_status})


class Client:
    def __init__(self, statuses: list[DurableOrchestrationStatus]) -> None:
        self.statuses = statuses

    async def get_status_by(self, runtime_status: Any = None) -> list[DurableOrchestrationStatus]:
        return self.statuses


def running(statuses: list[DurableOrchestrationStatus], ending: str | None = None) -> int:
    return asyncio.run(DurableStarter(Client(statuses), ending=ending).running_repairs())


def test_every_running_repair_holds_a_slot() -> None:
    assert running([status("a", {"step": "repair"}), status("b"), status("c", "not json")]) == 3


def test_the_repair_handing_on_its_slot_does_not_count_itself() -> None:
    assert running([status("a", {"step": "cleanup"}), status("b", {"step": "swap"})], ending="a") == 1


def test_repairs_that_recorded_their_outcome_hold_no_slot() -> None:
    statuses = [status("a", {"step": "resolved"}), status("b", json.dumps({"step": "rolled_back"})),
                status("c", {"step": "failed"}), status("d", {"step": "verify"})]
    assert running(statuses) == 1
