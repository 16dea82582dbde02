"""Long-running operations that end in Failed ("internal execution error, retry later"), each the
first time it is issued: the repair issues it again and completes.

Regression: a failed disk copy, rescue VM creation, NIC creation, VM update, power change or deletion
used to end the repair (rolled back or failed) although Azure asks the caller to retry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from localazure.demo import log_alert
from localazure.faults import Decision, FaultPlan
from localazure.world import LocalWorld
from remediation import entrypoints
from tests.reliability.invariants import check_invariants, snapshot

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk, pytest.mark.slow]


class FirstAttemptFails(FaultPlan):
    """Every kind of long-running operation fails the first time (per operation and resource)."""

    def __init__(self, operations: set[str] | None = None) -> None:
        super().__init__({}, 0)
        self.only = operations
        self.failed: list[str] = []
        self._seen: set[str] = set()
        self._guard = threading.Lock()

    def decide(self, operation: str, category: str, lro: bool) -> Decision:
        if not lro or operation.endswith(".runCommand") or (self.only is not None and operation not in self.only):
            return Decision()
        with self._guard:
            if operation in self._seen:
                return Decision()
            self._seen.add(operation)
            self.failed.append(operation)
        return Decision(None, lro_failure=True)


def test_each_failed_operation_is_issued_again_and_the_repair_heals(make_world: Callable[..., LocalWorld]) -> None:
    world = make_world()
    assert world.azure is not None
    plan = FirstAttemptFails()
    world.azure.server.faults = plan
    before = snapshot(world)
    target = next(e for e in world.expectations.values() if e.id.lower().endswith("/web-03"))
    status, body = world.post_alert(log_alert(target.id))
    assert status == 202, body
    world.wait_for_repairs(timeout=240)

    (incident,) = entrypoints.store().list()
    assert incident.state.value == "resolved", (incident.state, incident.reason, plan.failed)
    # Every operation of a repair failed once: the copy, the NIC, the rescue VM, power changes,
    # VM updates (attach, detach, swap) and deletions.
    for op in ("disks.create", "networkInterfaces.create", "virtualMachines.create", "virtualMachines.deallocate",
               "virtualMachines.update", "virtualMachines.start", "virtualMachines.delete"):
        assert any(f.startswith(op.split(".")[0]) and op.split(".")[1] in f for f in plan.failed), (op, plan.failed)
    outcome = check_invariants(world, before)
    assert outcome.healed == {target.id.lower()}
