"""The small interfaces through which the product's logic reaches Azure and the durable runtime.

Each port has one real adapter (remediation/azure/ or function_app.py) and, in tests, a fake that
holds state. Nothing here imports an Azure SDK.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

from remediation.model import VmInfo, VmRef


class VmReader(Protocol):
    """Read-only view of VMs, as the signal side needs it."""

    def get_vm(self, vm: VmRef) -> VmInfo:
        """The VM with its instance view (power state, agent); NotFoundError if it does not exist."""
        ...

    def list_vm_statuses(self, subscription_id: str) -> Iterable[VmInfo]:
        """Every VM of a subscription with its power state and agent readiness (one paged read)."""
        ...

    def read_serial_tail(self, vm: VmRef, max_bytes: int) -> bytes:
        """The last max_bytes of the VM's serial console log (boot diagnostics); PermanentError if off."""
        ...


class HeartbeatSource(Protocol):
    """Log Analytics heartbeats: the cheap way to find VMs whose guest stopped talking."""

    def stale_vms(self, stale_after: timedelta) -> list[str]:
        """Resource ids (any case) of VMs whose last heartbeat is older than stale_after."""
        ...


class RepairStarter(Protocol):
    """Starts the durable repair orchestration for an incident."""

    async def start_repair(self, instance_id: str, payload: dict[str, Any]) -> bool:
        """Start it; False if an orchestration with this instance id already exists (not started twice)."""
        ...

    async def running_repairs(self) -> int:
        """How many repair orchestrations are running now (for the concurrency cap)."""
        ...
