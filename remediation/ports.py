"""The small interfaces through which the product's logic reaches Azure and the durable runtime.

Each port has one real adapter (remediation/azure/ or function_app.py) and, in tests, a fake that
holds state. Nothing here imports an Azure SDK.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import timedelta
from typing import Any, Protocol

from remediation.model import DiskInfo, NicInfo, RunCommandState, VmInfo, VmRef


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


class RepairCloud(VmReader, Protocol):
    """Everything the repair activities do to Azure. Calls named begin_* only start an operation."""

    def find_vm(self, vm: VmRef) -> VmInfo | None: ...

    def get_disk(self, disk_id: str) -> DiskInfo | None: ...

    def begin_copy_disk(self, source: DiskInfo, subscription_id: str, resource_group: str, name: str,
                        tags: dict[str, str]) -> None: ...

    def update_disk_tags(self, disk_id: str, *, add: dict[str, str], remove: Collection[str] = ()) -> None:
        """Add and remove tags on a disk, keeping every other tag."""
        ...

    def begin_delete_disk(self, disk_id: str) -> None: ...

    def get_nic(self, nic_id: str) -> NicInfo | None: ...

    def create_nic(self, subscription_id: str, resource_group: str, name: str, location: str, subnet_id: str,
                   tags: dict[str, str]) -> NicInfo: ...

    def begin_delete_nic(self, nic_id: str) -> None: ...

    def begin_create_rescue_vm(self, vm: VmRef, *, location: str, zones: tuple[str, ...], size: str, image: str,
                               nic_id: str, os_disk_name: str, tags: dict[str, str]) -> None: ...

    def begin_set_data_disk(self, vm: VmRef, disk_id: str | None) -> None:
        """Attach disk_id as LUN 0 (or, with None, detach every data disk)."""
        ...

    def begin_swap_os_disk(self, vm: VmRef, disk_id: str, disk_name: str) -> None: ...

    def begin_deallocate(self, vm: VmRef) -> None: ...

    def begin_start(self, vm: VmRef) -> None: ...

    def begin_delete_vm(self, vm: VmRef) -> None: ...

    def start_run_command(self, vm: VmRef, name: str, script: str, parameters: dict[str, str],
                          timeout_s: int) -> None: ...

    def get_run_command(self, vm: VmRef, name: str) -> RunCommandState | None: ...

    def serial_log_size(self, vm: VmRef) -> int: ...

    def read_serial_from(self, vm: VmRef, offset: int, max_bytes: int) -> bytes:
        """Serial log bytes after `offset` (at most the last max_bytes of them)."""
        ...
