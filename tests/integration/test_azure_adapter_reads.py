"""The product's serial-log reads ride out transient faults the SDKs do not retry themselves.

azure-core does not retry a connection dropped while a POST is answered (retrieveBootDiagnosticsData
is a POST), and Azure Storage throttles with 503 ServerBusy. A read the adapter gave up on would leave
a frozen VM unconfirmed until the next sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from localazure.faults import NO_FAULT, Decision
from localazure.testing import LocalAzureHandle, running
from remediation.azure.compute import READ_ATTEMPTS, AzureCloud
from remediation.model import TransientError, VmRef
from tests.integration.conftest import small_scenario

pytestmark = pytest.mark.localazure

RG = "rg-app"


@dataclass
class FirstFailures:
    """A fault plan that fails the first `count` requests of one operation, then lets everything through."""

    operation: str
    fault: str
    count: int
    seen: list[str] = field(default_factory=list)

    def decide(self, operation: str, category: str, lro: bool) -> Decision:
        if operation != self.operation:
            return NO_FAULT
        self.seen.append(operation)
        return Decision(self.fault) if len(self.seen) <= self.count else NO_FAULT


def _cloud(az: LocalAzureHandle) -> AzureCloud:
    return AzureCloud(az.credential, arm_endpoint=az.endpoint, ca_bundle=az.ca_path,
                      polling_interval=0.01, read_backoff=0.01)


@pytest.mark.parametrize(("operation", "fault", "count"), [
    # azure-core does not retry a POST whose connection dropped.
    ("virtualMachines.retrieveBootDiagnosticsData", "connection_reset", 1),
    # The blob client retries once itself: two faults in a row need the adapter's retry.
    ("blob.get", "throttle", 2),
    ("blob.properties", "server_error", 2),
])
def test_a_transient_fault_on_the_serial_read_is_read_through(operation: str, fault: str, count: int) -> None:
    with running(small_scenario(), time_scale=0.001) as az:
        vm = VmRef(az.subscription_id, RG, "app-frozen")
        plan = FirstFailures(operation, fault, count=count)
        az.server.faults = plan  # type: ignore[assignment]
        tail = _cloud(az).read_serial_tail(vm, 64 * 1024)
        assert b"Failed to load SELinux policy" in tail
        faulted = [r for r in az.requests if r.fault]
        assert [r.operation for r in faulted] == [operation] * count


def test_blob_throttling_looks_like_azure_storage() -> None:
    with running(small_scenario(), time_scale=0.001) as az:
        az.server.faults = FirstFailures("blob.properties", "throttle", count=1)  # type: ignore[assignment]
        _cloud(az).serial_log_size(VmRef(az.subscription_id, RG, "app-frozen"))
        throttled = next(r for r in az.requests if r.fault)
        assert throttled.status == 503


def test_a_read_that_keeps_failing_gives_up_with_a_transient_error() -> None:
    with running(small_scenario(), time_scale=0.001) as az:
        plan = FirstFailures("virtualMachines.retrieveBootDiagnosticsData", "connection_reset", count=100)
        az.server.faults = plan  # type: ignore[assignment]
        with pytest.raises(TransientError, match="boot diagnostics of rg-app/app-frozen: connection problem"):
            _cloud(az).read_serial_tail(VmRef(az.subscription_id, RG, "app-frozen"), 1024)
        # azure-core makes one attempt per POST on a dropped connection; the adapter makes READ_ATTEMPTS.
        assert len(plan.seen) == READ_ATTEMPTS
