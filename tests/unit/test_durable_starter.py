"""The slot count under the concurrency cap, as DurableStarter reads it from the durable client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from remediation.entrypoints import DurableStarter


@dataclass
class Status:
    instance_id: str
    custom_status: Any = None


class Client:
    def __init__(self, statuses: list[Status]) -> None:
        self.statuses = statuses

    async def get_status_by(self, runtime_status: Any = None) -> list[Status]:
        return self.statuses


def running(statuses: list[Status], ending: str | None = None) -> int:
    return asyncio.run(DurableStarter(Client(statuses), ending=ending).running_repairs())


def test_every_running_repair_holds_a_slot() -> None:
    assert running([Status("a", {"step": "repair"}), Status("b"), Status("c", "not json")]) == 3


def test_the_repair_handing_on_its_slot_does_not_count_itself() -> None:
    assert running([Status("a", {"step": "cleanup"}), Status("b", {"step": "swap"})], ending="a") == 1


def test_repairs_that_recorded_their_outcome_hold_no_slot() -> None:
    statuses = [Status("a", {"step": "resolved"}), Status("b", json.dumps({"step": "rolled_back"})),
                Status("c", {"step": "failed"}), Status("d", {"step": "verify"})]
    assert running(statuses) == 1
