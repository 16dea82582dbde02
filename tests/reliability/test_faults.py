"""Transient ARM faults at a seeded rate on every operation: every repairable VM still heals.

Throttling (429 on ARM, 503 ServerBusy on blobs), internal errors (500), dropped connections and
long-running operations that end in Failed are injected by the local Azure on every request with the
probability RELIABILITY_FAULTS (default 0.2), from the seeds in RELIABILITY_SEEDS. The sweep is the
periodic timer: a VM it could not read because of a fault is picked up by a later sweep, as in production.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from localazure.world import LocalWorld
from remediation import entrypoints, steps
from tests.reliability.conftest import DEFAULT_FAULT_RATE, fault_rate, seeds
from tests.reliability.invariants import check_invariants, creates_by_name, summary_line

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk, pytest.mark.slow]

@pytest.fixture
def world_time_scale() -> float:
    """Slower than the tier's 0.005: the SDKs' back-off after a 500 or a reset (0.8 s, 1.6 s, ...) is
    real time while the repair's deadlines are modelled, so at 0.005 a few back-offs in a row ate a
    30-minute preparation deadline (9 real seconds). At 0.02 it is 36 real seconds."""
    return 0.02


# The SDKs give up on a GET after 3 bad statuses in a row (retry_status=3), so at rates above the
# default a VM can be missed by several sweeps in a row; production sweeps every 5 minutes.
def max_sweeps() -> int:
    return 6 if fault_rate() <= DEFAULT_FAULT_RATE else 40


def sweep_until_all_opened(world: LocalWorld) -> None:
    """Run the timer sweep until every repairable VM has an incident (a faulted read waits for the next)."""
    wanted = {e.id.lower() for e in world.expectations.values() if e.repairable}
    for _ in range(max_sweeps()):
        world.sweep()
        opened = {i.vm.id.lower() for i in entrypoints.store().list(limit=1000)}
        if wanted <= opened:
            return
    raise AssertionError(f"after {max_sweeps()} sweeps still no incident for {sorted(wanted - opened)}")


@pytest.mark.parametrize("seed", seeds())
def test_every_repair_completes_under_transient_faults(make_world: Callable[..., LocalWorld], seed: int) -> None:
    rate = fault_rate()
    world = make_world(faults=rate, seed=seed)
    sweep_until_all_opened(world)
    world.wait_for_repairs(timeout=400)

    assert world.azure is not None
    faults = Counter(r.fault for r in world.azure.requests if r.fault)
    if rate >= 0.1:
        assert sum(faults.values()) >= 10, f"the fault plan injected too little to prove anything: {faults}"
    outcome = check_invariants(world)
    repairable = {k for k, e in world.expectations.items() if e.repairable}
    unresolved = {i.vm.name: f"{i.state.value}: {i.reason}" for i in entrypoints.store().list(limit=1000)
                  if i.vm.id.lower() in repairable and i.state.value != "resolved"}
    assert not unresolved, (seed, rate, unresolved, faults)
    assert outcome.healed == repairable, (seed, rate, summary_line(world), faults)
    # Retries and re-issued operations never invent names: everything created is some incident's.
    expected: set[str] = set()
    for inc in entrypoints.store().list(limit=1000):
        names = steps.resource_names(inc.id, inc.vm.id)
        expected |= {names["copy_disk"], names["rescue_vm"], names["rescue_nic"]}
    assert {rid.rsplit("/", 1)[-1] for rid in creates_by_name(world)} <= expected
