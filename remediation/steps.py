"""Names shared by the orchestrator and the activities: activity names, resource names and tags.

Pure and deterministic: every resource the repair creates is named from the incident id, so a
retried or replayed step finds what an earlier attempt made instead of making it twice.
"""

from __future__ import annotations

import re
from typing import Any

from remediation.model import VmRef

# Activity names (the function names registered in function_app.py).
VALIDATE_TARGET = "validate_target"
COPY_OS_DISK = "copy_os_disk"
CREATE_RESCUE_VM = "create_rescue_vm"
DEALLOCATE_VM = "deallocate_vm"
CHECK_READY = "check_ready"
ATTACH_REPAIR_DISK = "attach_repair_disk"
START_REPAIR_SCRIPT = "start_repair_script"
REPAIR_RESULT = "read_repair_result"
DETACH_REPAIR_DISK = "detach_repair_disk"
SWAP_OS_DISK = "swap_os_disk"
START_VM = "start_vm"
VERIFY_BOOT = "verify_boot"
RESTORE_POWER_STATE = "restore_power_state"
DELETE_RESCUE_RESOURCES = "delete_rescue_resources"
RECORD_EVENT = "record_event"
# Not a repair step: registered with a durable client, it starts repairs the concurrency cap queued.
START_QUEUED = "start_queued_repairs"

ALL_ACTIVITIES = (
    VALIDATE_TARGET, COPY_OS_DISK, CREATE_RESCUE_VM, DEALLOCATE_VM, CHECK_READY, ATTACH_REPAIR_DISK,
    START_REPAIR_SCRIPT, REPAIR_RESULT, DETACH_REPAIR_DISK, SWAP_OS_DISK, START_VM, VERIFY_BOOT,
    RESTORE_POWER_STATE, DELETE_RESCUE_RESOURCES, RECORD_EVENT,
)

ORCHESTRATOR = "repair_vm_orchestrator"

# Tags on everything the repair creates or keeps, linking it to its incident and source VM.
TAG_INCIDENT = "selinux-remediation-incident"
TAG_SOURCE_VM = "selinux-remediation-source-vm"
TAG_ROLE = "selinux-remediation-role"
ROLE_COPY = "repaired-os-disk"
ROLE_RESCUE_VM = "rescue-vm"
ROLE_RESCUE_NIC = "rescue-nic"
ROLE_RESCUE_DISK = "rescue-os-disk"
ROLE_ORIGINAL = "original-os-disk"

RUN_COMMAND_NAME = "selinux-repair"

_INCIDENT = re.compile(r"^inc-[0-9a-f]{12}$")


def resource_names(incident_id: str, vm_id: str) -> dict[str, Any]:
    """The names of every resource a repair creates, derived from the incident id only."""
    if not _INCIDENT.match(incident_id):
        raise ValueError(f"not an incident id: {incident_id!r}")
    vm = VmRef.parse(vm_id)
    short = incident_id.removeprefix("inc-")
    return {
        "subscription_id": vm.subscription_id,
        "resource_group": vm.resource_group,
        "copy_disk": f"{vm.name[:40]}-osdisk-fix-{short}",
        "rescue_vm": f"rescue-{short}",
        "rescue_nic": f"rescue-{short}-nic",
        "rescue_os_disk": f"rescue-{short}-osdisk",
        "run_command": RUN_COMMAND_NAME,
    }


def tags_for(incident_id: str, vm_id: str, role: str) -> dict[str, str]:
    """Tags that link a resource to its incident; cleanup deletes only what carries them."""
    return {TAG_INCIDENT: incident_id, TAG_SOURCE_VM: vm_id, TAG_ROLE: role}
