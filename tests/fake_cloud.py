"""A stateful in-memory RepairCloud for unit tests of the activities.

Operations complete at once (the local Azure covers latency and LRO polling); what matters here is
the resulting state, so tests assert on it rather than on which calls were made.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from remediation.model import (
    ConflictError,
    DiskInfo,
    NicInfo,
    NotFoundError,
    PowerState,
    RunCommandState,
    VmInfo,
    VmRef,
)

SUB = "00000000-0000-0000-0000-000000000001"
RG = "prod-rg"
SUBNET = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default"

FROZEN_LOG = (
    b"[    0.000000] Linux version 5.14.0-362.el9.x86_64\n"
    b"[    1.200000] systemd[1]: Failed to load SELinux policy.\n"
    b"[!!!!!!] Failed to load SELinux policy.\n"
    b"[    1.210000] systemd[1]: Freezing execution.\n"
)
BOOTED_LOG = (
    b"[    0.000000] Linux version 5.14.0-362.el9.x86_64\n"
    b"[    2.000000] systemd[1]: Successfully loaded SELinux policy in 30.1ms.\n"
    b"[  OK  ] Reached target Multi-User System.\n"
    b"\nRed Hat Enterprise Linux 9.3 (Plow)\nKernel 5.14.0-362.el9.x86_64 on an x86_64\n\nvm1 login: "
)


def disk_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/{name}"


def nic_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces/{name}"


@dataclass
class FakeCloud:
    vms: dict[str, VmInfo] = field(default_factory=dict)
    disks: dict[str, DiskInfo] = field(default_factory=dict)
    nics: dict[str, NicInfo] = field(default_factory=dict)
    serial: dict[str, bytearray] = field(default_factory=dict)
    run_commands: dict[tuple[str, str], RunCommandState] = field(default_factory=dict)
    script_output: str = (
        '{"status": "repaired", "changes": [{"key": "SELINUXTYPE", "old": "disabled", "new": "targeted"}]}'
    )
    boots_heal: bool = True
    deleted: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ scenario helpers

    def add_broken_vm(self, name: str = "vm1", **overrides: Any) -> VmRef:
        ref = VmRef(SUB, RG, name)
        os_disk = self.add_disk(f"{name}-osdisk", managed_by=ref.id)
        nic = NicInfo(nic_id(f"{name}-nic"), f"{name}-nic", "eastus", SUBNET, vm_id=ref.id)
        self.nics[nic.id.lower()] = nic
        info = VmInfo(ref=ref, location="eastus", vm_size="Standard_D2s_v5", os_type="Linux",
                      os_disk_name=os_disk.name, os_disk_id=os_disk.id, nic_ids=(nic.id,),
                      power_state=PowerState.RUNNING, agent_ready=False, zones=("1",))
        self.vms[ref.key] = replace(info, **overrides)
        self.serial[ref.key] = bytearray(FROZEN_LOG)
        return ref

    def add_disk(self, name: str, **kw: Any) -> DiskInfo:
        disk = DiskInfo(id=disk_id(name), name=name, location="eastus", sku="Premium_LRS", zones=("1",),
                        os_type="Linux", **kw)
        self.disks[disk.id.lower()] = disk
        return disk

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({"vms": self.vms, "disks": self.disks, "nics": self.nics,
                              "run_commands": self.run_commands, "deleted": self.deleted})

    # ------------------------------------------------------------ VmReader

    def get_vm(self, vm: VmRef) -> VmInfo:
        try:
            return self.vms[vm.key]
        except KeyError:
            raise NotFoundError(str(vm)) from None

    def find_vm(self, vm: VmRef) -> VmInfo | None:
        return self.vms.get(vm.key)

    def list_vm_statuses(self, subscription_id: str) -> list[VmInfo]:
        return [v for v in self.vms.values() if v.ref.subscription_id == subscription_id]

    def read_serial_tail(self, vm: VmRef, max_bytes: int) -> bytes:
        return bytes(self.serial.get(vm.key, b""))[-max_bytes:]

    def serial_log_size(self, vm: VmRef) -> int:
        return len(self.serial.get(vm.key, b""))

    def read_serial_from(self, vm: VmRef, offset: int, max_bytes: int) -> bytes:
        return bytes(self.serial.get(vm.key, b""))[offset:][-max_bytes:]

    # ------------------------------------------------------------ disks and NICs

    def get_disk(self, disk_id: str) -> DiskInfo | None:
        return self.disks.get(disk_id.lower())

    def begin_copy_disk(self, source: DiskInfo, subscription_id: str, resource_group: str, name: str,
                        tags: dict[str, str]) -> None:
        new = replace(source, id=disk_id(name), name=name, managed_by=None, tags=dict(tags))
        if new.id.lower() in self.disks:
            raise ConflictError(name)
        self.disks[new.id.lower()] = new

    def update_disk_tags(self, disk_id: str, *, add: dict[str, str], remove: Collection[str] = ()) -> None:
        d = self.disks[disk_id.lower()]
        self.disks[disk_id.lower()] = replace(d, tags={k: v for k, v in d.tags.items() if k not in remove} | add)

    def begin_delete_disk(self, disk_id: str) -> None:
        d = self.disks[disk_id.lower()]
        if d.managed_by:
            raise ConflictError(f"disk {d.name} is attached")
        del self.disks[disk_id.lower()]
        self.deleted.append(disk_id.lower())

    def get_nic(self, nic_id: str) -> NicInfo | None:
        return self.nics.get(nic_id.lower())

    def create_nic(self, subscription_id: str, resource_group: str, name: str, location: str, subnet_id: str,
                   tags: dict[str, str]) -> NicInfo:
        nic = NicInfo(nic_id(name), name, location, subnet_id, tags=dict(tags))
        self.nics[nic.id.lower()] = nic
        return nic

    def begin_delete_nic(self, nic_id: str) -> None:
        del self.nics[nic_id.lower()]
        self.deleted.append(nic_id.lower())

    # ------------------------------------------------------------ VMs

    def begin_create_rescue_vm(self, vm: VmRef, *, location: str, zones: tuple[str, ...], size: str, image: str,
                               nic_id: str, os_disk_name: str, tags: dict[str, str]) -> None:
        os_disk = self.add_disk(os_disk_name, managed_by=vm.id, tags=dict(tags))
        self.vms[vm.key] = VmInfo(ref=vm, location=location, vm_size=size, os_type="Linux",
                                  os_disk_name=os_disk_name, os_disk_id=os_disk.id, zones=zones, tags=dict(tags),
                                  nic_ids=(nic_id,), power_state=PowerState.RUNNING, agent_ready=True)

    def begin_set_data_disk(self, vm: VmRef, disk_id: str | None) -> None:
        info = self.vms[vm.key]
        for old in info.data_disk_ids:
            self.disks[old.lower()] = replace(self.disks[old.lower()], managed_by=None)
        if disk_id:
            self.disks[disk_id.lower()] = replace(self.disks[disk_id.lower()], managed_by=vm.id)
        self.vms[vm.key] = replace(info, data_disk_ids=(disk_id,) if disk_id else ())

    def begin_swap_os_disk(self, vm: VmRef, disk_id: str, disk_name: str) -> None:
        info = self.vms[vm.key]
        if info.power_state != PowerState.DEALLOCATED:
            raise ConflictError("VM must be deallocated")
        old = info.os_disk_id or ""
        self.disks[old.lower()] = replace(self.disks[old.lower()], managed_by=None)
        self.disks[disk_id.lower()] = replace(self.disks[disk_id.lower()], managed_by=vm.id)
        self.vms[vm.key] = replace(info, os_disk_id=disk_id, os_disk_name=disk_name)

    def begin_deallocate(self, vm: VmRef) -> None:
        self.vms[vm.key] = replace(self.vms[vm.key], power_state=PowerState.DEALLOCATED, agent_ready=False)

    def begin_start(self, vm: VmRef) -> None:
        info = self.vms[vm.key]
        healed = self.boots_heal and "fix" in (info.os_disk_name or "")
        self.serial.setdefault(vm.key, bytearray()).extend(BOOTED_LOG if healed else FROZEN_LOG)
        self.vms[vm.key] = replace(info, power_state=PowerState.RUNNING, agent_ready=healed)

    def begin_delete_vm(self, vm: VmRef) -> None:
        info = self.vms.pop(vm.key)
        self.deleted.append(vm.key)
        for d in (info.os_disk_id, *info.data_disk_ids):
            if d and d.lower() in self.disks:
                self.disks[d.lower()] = replace(self.disks[d.lower()], managed_by=None)

    # ------------------------------------------------------------ run command

    def start_run_command(self, vm: VmRef, name: str, script: str, parameters: dict[str, str],
                          timeout_s: int) -> None:
        assert "REPAIR_INCIDENT" in parameters
        self.run_commands[(vm.key, name)] = RunCommandState("Succeeded", 0, self.script_output + "\n", "")

    def get_run_command(self, vm: VmRef, name: str) -> RunCommandState | None:
        return self.run_commands.get((vm.key, name))
