"""One function per repair step. Each is short, idempotent and talks to Azure only through ports.

Idempotent means: it first looks for the end state (a resource with the deterministic name and this
incident's tag, a disk already attached, a VM already deallocated) and only acts when it is not there,
so running a step twice leaves the same state as running it once. Durable runs activities at least
once, and a host killed mid-step runs it again.

Return convention: {"ok": True, ...} on success; {"ok": False, "error": "..."} for a permanent problem
(retrying cannot help: the orchestrator rolls back at once). Transient errors are raised, so that
Durable's retry policy retries them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

from remediation import detect, steps
from remediation.incidents import IncidentStore
from remediation.model import (
    DiskInfo,
    Finding,
    IncidentState,
    PermanentError,
    PowerState,
    TimelineEvent,
    VmInfo,
    VmRef,
)
from remediation.ports import RepairCloud

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """What the activities need; built once per process from settings (remediation.wiring)."""

    cloud: RepairCloud
    events: IncidentStore
    opt_out_tag: tuple[str, str] | None = None
    rescue_image: str = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
    rescue_vm_size: str = "Standard_D2s_v5"
    rescue_subnet_id: str | None = None
    serial_tail_bytes: int = 262_144
    script_timeout_s: int = 600
    act_on_policy_missing: bool = False


def _fail(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _ours(tags: dict[str, str] | None, incident_id: str) -> bool:
    return bool(tags) and (tags or {}).get(steps.TAG_INCIDENT) == incident_id


def _rg_id(names: dict[str, Any]) -> str:
    return f"/subscriptions/{names['subscription_id']}/resourceGroups/{names['resource_group']}"


def _disk_id(names: dict[str, Any], key: str) -> str:
    return f"{_rg_id(names)}/providers/Microsoft.Compute/disks/{names[key]}"


def _nic_id(names: dict[str, Any]) -> str:
    return f"{_rg_id(names)}/providers/Microsoft.Network/networkInterfaces/{names['rescue_nic']}"


def _rescue_ref(names: dict[str, Any]) -> VmRef:
    return VmRef(names["subscription_id"], names["resource_group"], names["rescue_vm"])


def repair_script() -> str:
    """The rescue-VM repair script, shipped as package data."""
    return (resources.files("remediation") / "scripts" / "repair_selinux.sh").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ validate


def validate_target(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Check the VM is one this product may repair, still broken, and record its original state."""
    vm = VmRef.parse(p["vm_id"])
    info = d.cloud.find_vm(vm)
    if info is None:
        return _fail(f"the VM {vm} no longer exists")
    if info.os_type.lower() != "linux":
        return _fail(f"the VM runs {info.os_type}, not Linux")
    if info.os_disk_id is None:
        return _fail("the VM's OS disk is unmanaged (a VHD in a storage account): not supported")
    if d.opt_out_tag and info.tags.get(d.opt_out_tag[0], "").lower() == d.opt_out_tag[1].lower():
        return _fail(f"the VM carries the opt-out tag {d.opt_out_tag[0]}={d.opt_out_tag[1]}")
    if info.encrypted:
        return _fail("the VM uses Azure Disk Encryption: its OS disk cannot be repaired offline; repair by hand")
    disk = d.cloud.get_disk(info.os_disk_id)
    if disk is None:
        return _fail(f"the OS disk {info.os_disk_id} cannot be read")
    if disk.encrypted:
        return _fail("the OS disk is encrypted with Azure Disk Encryption: cannot be repaired offline")
    if info.provisioning_state.lower() in ("updating", "creating", "deleting"):
        raise PermanentError(f"the VM is busy ({info.provisioning_state}); try again later")

    # Nothing is repaired on a guess: the latest boot must still show the failure now.
    finding = detect.analyze_bytes(d.cloud.read_serial_tail(vm, d.serial_tail_bytes))
    repairable = finding.verdict.value == "selinux_policy_failure" or (
        d.act_on_policy_missing and finding.verdict.value == "selinux_policy_missing")
    if not repairable:
        return _fail(f"the latest boot no longer shows the SELinux failure (verdict: {finding.verdict.value})")

    nic_id = info.nic_ids[0] if info.nic_ids else None
    nic = d.cloud.get_nic(nic_id) if nic_id else None
    original = {
        "vm_id": vm.id,
        "os_disk_id": info.os_disk_id,
        "os_disk_name": info.os_disk_name,
        "power_state": info.power_state.value,
        "location": info.location,
        "zones": list(info.zones),
        "vm_size": info.vm_size,
        "subnet_id": nic.subnet_id if nic else None,
        "disk_sku": disk.sku,
        "finding": finding.to_dict(),
    }
    return {"ok": True, "original": original}


# ------------------------------------------------------------------------------------------ prepare


def copy_os_disk(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Start a copy of the OS disk (same zone, generation, SKU), tagged with the incident."""
    names, original = p["names"], p["original"]
    copy_id = _disk_id(names, "copy_disk")
    existing = d.cloud.get_disk(copy_id)
    if existing is not None and not _ours(existing.tags, p["incident_id"]):
        return _fail(f"a disk named {names['copy_disk']} exists and does not belong to this incident")
    if existing is None or _failed(existing.provisioning_state):  # a failed copy is issued again
        source = d.cloud.get_disk(original["os_disk_id"])
        if source is None:
            return _fail(f"the OS disk {original['os_disk_id']} disappeared")
        d.cloud.begin_copy_disk(source, names["subscription_id"], names["resource_group"], names["copy_disk"],
                                steps.tags_for(p["incident_id"], p["vm_id"], steps.ROLE_COPY))
    return {"ok": True, "probe": {"kind": "disk", "id": copy_id}}


def create_rescue_vm(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Create the rescue VM (no public IP) in the VM's region, zone and subnet, or a configured subnet."""
    names, original = p["names"], p["original"]
    subnet = d.rescue_subnet_id or original.get("subnet_id")
    if not subnet:
        return _fail("the VM has no NIC in a subnet and no rescue subnet is configured")
    rescue = _rescue_ref(names)
    existing = d.cloud.find_vm(rescue)
    if existing is not None:
        if not _ours(existing.tags, p["incident_id"]):
            return _fail(f"a VM named {names['rescue_vm']} exists and does not belong to this incident")
        if _failed(existing.provisioning_state) or existing.provisioning_state.lower() == "deleting":
            # Its creation failed: delete it, then the orchestrator calls this step again to create it anew.
            if existing.provisioning_state.lower() != "deleting":
                d.cloud.begin_delete_vm(rescue)
            return {"ok": True, "again": True, "probe": {"kind": "gone", "type": "vm", "id": rescue.id}}
        return {"ok": True, "probe": {"kind": "vm_ready", "id": rescue.id}}
    nic = d.cloud.get_nic(_nic_id(names))
    if nic is None:
        nic = d.cloud.create_nic(names["subscription_id"], names["resource_group"], names["rescue_nic"],
                                 original["location"], subnet,
                                 steps.tags_for(p["incident_id"], p["vm_id"], steps.ROLE_RESCUE_NIC))
    elif not _ours(nic.tags, p["incident_id"]):
        return _fail(f"a NIC named {names['rescue_nic']} exists and does not belong to this incident")
    d.cloud.begin_create_rescue_vm(
        rescue, location=original["location"], zones=tuple(original.get("zones") or ()), size=d.rescue_vm_size,
        image=d.rescue_image, nic_id=nic.id, os_disk_name=names["rescue_os_disk"],
        tags=steps.tags_for(p["incident_id"], p["vm_id"], steps.ROLE_RESCUE_VM),
    )
    return {"ok": True, "probe": {"kind": "vm_ready", "id": rescue.id}}


def deallocate_vm(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Deallocate the broken VM (an OS disk can only be swapped while the VM is deallocated)."""
    vm = VmRef.parse(p["vm_id"])
    info = d.cloud.get_vm(vm)
    if info.power_state not in (PowerState.DEALLOCATED, PowerState.DEALLOCATING):
        d.cloud.begin_deallocate(vm)
    return {"ok": True, "probe": {"kind": "vm_power", "id": vm.id, "state": PowerState.DEALLOCATED.value}}


# ------------------------------------------------------------------------------------------ polling


_NOT_ON_THE_WAY = {
    PowerState.DEALLOCATED.value: (PowerState.RUNNING, PowerState.STARTING, PowerState.STOPPED),
    PowerState.RUNNING.value: (PowerState.DEALLOCATED, PowerState.STOPPED),
}


def _failed(state: str) -> bool:
    return state.lower() == "failed"


def _check(probe: dict[str, Any], d: Deps) -> tuple[bool, str | None]:
    """(done, failure) for one probe."""
    kind = probe["kind"]
    if kind == "disk":
        disk = d.cloud.get_disk(probe["id"])
        if disk is None:
            return False, None
        state = disk.provisioning_state.lower()
        return state == "succeeded", (f"disk {disk.name} provisioning {disk.provisioning_state}"
                                      if state in ("failed", "canceled") else None)
    if kind == "gone":
        found: Any
        if probe["type"] == "vm":
            found = d.cloud.find_vm(VmRef.parse(probe["id"]))
        elif probe["type"] == "disk":
            found = d.cloud.get_disk(probe["id"])
        else:
            found = d.cloud.get_nic(probe["id"])
        if found is not None and str(getattr(found, "provisioning_state", "")).lower() == "failed":
            return False, f"deleting {probe['id'].rsplit('/', 1)[-1]} failed"  # delete it again
        return found is None, None
    if kind == "run_command":
        rc = d.cloud.get_run_command(VmRef.parse(probe["id"]), probe["name"])
        return (rc is not None and rc.finished), None
    info = d.cloud.find_vm(VmRef.parse(probe["id"]))
    if info is None:
        return False, f"VM {probe['id']} disappeared"
    prov = info.provisioning_state.lower()
    if prov in ("failed", "canceled"):
        return False, f"VM {info.ref.name} provisioning {info.provisioning_state}"
    settled = prov == "succeeded"
    if kind == "vm_ready":
        return settled and info.power_state == PowerState.RUNNING and bool(info.agent_ready), None
    if kind == "vm_power":
        # A power operation that failed leaves the VM settled where it was: neither at the target nor on
        # its way (while the operation runs, ARM reports provisioning Updating, so this never fires early).
        if settled and info.power_state in _NOT_ON_THE_WAY.get(probe["state"], ()):
            return False, f"VM {info.ref.name} is {info.power_state.value}, not going to {probe['state']}"
        return settled and info.power_state.value == probe["state"], None
    if kind == "vm_data_disk":
        attached = any(x.lower() == probe["disk_id"].lower() for x in info.data_disk_ids)
        return settled and attached == probe["attached"], None
    if kind == "vm_os_disk":
        return settled and (info.os_disk_id or "").lower() == probe["disk_id"].lower(), None
    raise PermanentError(f"unknown probe kind {kind!r}")


def check_ready(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Look once at every probe; the orchestrator waits on a durable timer between looks."""
    pending, failed = [], []
    for probe in p["probes"]:
        done, failure = _check(probe, d)
        if failure:
            failed.append(failure)
        elif not done:
            pending.append(f"{probe['kind']}:{probe['id'].rsplit('/', 1)[-1]}")
    return {"ok": True, "done": not pending and not failed, "pending": pending, "failed": failed}


# ------------------------------------------------------------------------------------------ repair


def attach_repair_disk(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Attach the copy to the rescue VM as data disk LUN 0, where the script looks for it."""
    names = p["names"]
    rescue, copy_id = _rescue_ref(names), _disk_id(names, "copy_disk")
    info = d.cloud.get_vm(rescue)
    attached = any(x.lower() == copy_id.lower() for x in info.data_disk_ids)
    if not attached or _failed(info.provisioning_state):  # a failed update is issued again
        d.cloud.begin_set_data_disk(rescue, copy_id)
    return {"ok": True, "probe": {"kind": "vm_data_disk", "id": rescue.id, "disk_id": copy_id, "attached": True}}


def start_repair_script(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Run the repair script through Run Command; values go as parameters, never spliced into the script."""
    names = p["names"]
    rescue = _rescue_ref(names)
    if d.cloud.get_run_command(rescue, names["run_command"]) is None:
        d.cloud.start_run_command(rescue, names["run_command"], repair_script(),
                                  {"REPAIR_INCIDENT": p["incident_id"], "REPAIR_DRY_RUN": "false"},
                                  d.script_timeout_s)
    return {"ok": True, "probe": {"kind": "run_command", "id": rescue.id, "name": names["run_command"]}}


def parse_script_report(output: str) -> dict[str, Any] | None:
    """The script's last stdout line is one JSON object (Run Command keeps only the output's tail)."""
    for raw in reversed(output.strip().splitlines()):
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) and "status" in value else None
    return None


def read_repair_result(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Read the script's JSON report from the Run Command's instance view."""
    names = p["names"]
    rc = d.cloud.get_run_command(_rescue_ref(names), names["run_command"])
    if rc is None or not rc.finished:
        raise PermanentError("the repair script's run command is missing or unfinished")
    report = parse_script_report(rc.output)
    if report is None:
        tail = (rc.error or rc.output)[-400:]
        return _fail(f"the repair script ended {rc.execution_state} (exit {rc.exit_code}) without a report: {tail}")
    if report.get("status") == "failed":
        return _fail(f"the repair script failed: {report.get('error', 'no reason given')}")
    return {"ok": True, "report": report}


def detach_repair_disk(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Detach the repaired copy from the rescue VM."""
    names = p["names"]
    rescue, copy_id = _rescue_ref(names), _disk_id(names, "copy_disk")
    info = d.cloud.find_vm(rescue)
    if info is not None and (any(x.lower() == copy_id.lower() for x in info.data_disk_ids)
                             or _failed(info.provisioning_state)):
        d.cloud.begin_set_data_disk(rescue, None)
    return {"ok": True, "probe": {"kind": "vm_data_disk", "id": rescue.id, "disk_id": copy_id, "attached": False}}


def swap_os_disk(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Make the copy (or, on rollback, the original) the VM's OS disk. The VM must be deallocated."""
    names, original = p["names"], p["original"]
    vm = VmRef.parse(p["vm_id"])
    ours = steps.tags_for(p["incident_id"], p["vm_id"], steps.ROLE_ORIGINAL)
    if p["to"] == "copy":
        target_id, target_name = _disk_id(names, "copy_disk"), names["copy_disk"]
        d.cloud.update_disk_tags(original["os_disk_id"], add=ours)
    else:
        # Rolling back: the original is the OS disk again, so it loses the marks this incident gave it.
        target_id, target_name = original["os_disk_id"], original["os_disk_name"]
        disk = d.cloud.get_disk(target_id)
        if disk is not None and _ours(disk.tags, p["incident_id"]):
            d.cloud.update_disk_tags(target_id, add={}, remove=list(ours))
    probe = {"kind": "vm_os_disk", "id": vm.id, "disk_id": target_id}
    info = d.cloud.get_vm(vm)
    if (info.os_disk_id or "").lower() == target_id.lower() and not _failed(info.provisioning_state):
        return {"ok": True, "probe": probe}
    if info.power_state != PowerState.DEALLOCATED:
        return _fail(f"the VM is {info.power_state.value}, not deallocated: the OS disk cannot be swapped")
    d.cloud.begin_swap_os_disk(vm, target_id, target_name)
    return {"ok": True, "probe": probe}


def start_vm(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Start the VM; remember where its serial log ended so verification judges only the new boot."""
    vm = VmRef.parse(p["vm_id"])
    info = d.cloud.get_vm(vm)
    offset = d.cloud.serial_log_size(vm)
    if info.power_state not in (PowerState.RUNNING, PowerState.STARTING):
        d.cloud.begin_start(vm)
    return {"ok": True, "serial_offset": offset,
            "probe": {"kind": "vm_power", "id": vm.id, "state": PowerState.RUNNING.value}}


def verify_boot(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Judge the boot that started after the swap, from the serial log written since then."""
    vm = VmRef.parse(p["vm_id"])
    finding: Finding = detect.analyze_bytes(d.cloud.read_serial_from(vm, int(p["since"]), d.serial_tail_bytes))
    verdict = finding.verdict.value
    final = verdict in ("selinux_policy_failure", "other_boot_failure")
    return {"ok": True, "verdict": verdict, "final": final, "reason": finding.reason,
            "evidence": [e.to_dict() for e in finding.evidence[:5]]}


def restore_power_state(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Bring the VM back to the power state it had before the incident."""
    vm = VmRef.parse(p["vm_id"])
    original = p.get("original") or {}
    info = d.cloud.find_vm(vm)
    if info is None or not original:
        return {"ok": True, "probe": None}
    if original.get("power_state") in (PowerState.RUNNING.value, PowerState.STARTING.value):
        if info.power_state not in (PowerState.RUNNING, PowerState.STARTING):
            d.cloud.begin_start(vm)
        return {"ok": True, "probe": {"kind": "vm_power", "id": vm.id, "state": PowerState.RUNNING.value}}
    return {"ok": True, "probe": None}


def delete_rescue_resources(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Delete what this incident created, and only that: every deletion checks the incident tag first."""
    names, incident = p["names"], p["incident_id"]
    probes: list[dict[str, Any]] = []
    rescue = _rescue_ref(names)
    vm = d.cloud.find_vm(rescue)
    if vm is not None:
        if not _ours(vm.tags, incident):
            return _fail(f"refusing to delete VM {rescue.name}: it does not carry this incident's tag")
        if vm.provisioning_state.lower() != "deleting":
            d.cloud.begin_delete_vm(rescue)
        return {"ok": True, "probes": [{"kind": "gone", "type": "vm", "id": rescue.id}]}
    nic = d.cloud.get_nic(_nic_id(names))
    if nic is not None and _ours(nic.tags, incident):
        d.cloud.begin_delete_nic(nic.id)
        probes.append({"kind": "gone", "type": "nic", "id": nic.id})
    disk_keys = ["rescue_os_disk"] if p.get("keep_copy") else ["rescue_os_disk", "copy_disk"]
    for key in disk_keys:
        disk = d.cloud.get_disk(_disk_id(names, key))
        if disk is None or not _ours(disk.tags, incident) or disk.managed_by:
            continue  # absent, not ours, or still attached (e.g. the copy serving as OS disk)
        if disk.provisioning_state.lower() != "deleting":
            d.cloud.begin_delete_disk(disk.id)
        probes.append({"kind": "gone", "type": "disk", "id": disk.id})
    return {"ok": True, "probes": probes}


def record_event(p: dict[str, Any], d: Deps) -> dict[str, Any]:
    """Write one timeline event (and a state change) to the incident; a repeat with the same id is a no-op."""
    event_id = str(p["event_id"])
    event = TimelineEvent(at=p["at"], kind=p["kind"], message=p["message"],
                          data={**(p.get("data") or {}), "event_id": event_id})
    log.info("%s: %s", p["kind"], p["message"], extra={"incident_id": p["incident_id"], "vm_id": p["vm_id"]})
    incident_id = p["incident_id"]
    state = IncidentState(p["state"]) if p.get("state") else None
    if any(e.data.get("event_id") == event_id for e in d.events.timeline(incident_id)):
        return {"ok": True, "state": d.events.get(incident_id).state.value}
    current = d.events.get(incident_id)
    if state is None or current.state == state:
        d.events.append_event(incident_id, event)
        return {"ok": True, "state": current.state.value}
    updated = d.events.transition(incident_id, state, expected=None, event=event, reason=p.get("reason"),
                                  result=p.get("result"))
    return {"ok": True, "state": updated.state.value}


ACTIVITIES = {
    steps.VALIDATE_TARGET: validate_target,
    steps.COPY_OS_DISK: copy_os_disk,
    steps.CREATE_RESCUE_VM: create_rescue_vm,
    steps.DEALLOCATE_VM: deallocate_vm,
    steps.CHECK_READY: check_ready,
    steps.ATTACH_REPAIR_DISK: attach_repair_disk,
    steps.START_REPAIR_SCRIPT: start_repair_script,
    steps.REPAIR_RESULT: read_repair_result,
    steps.DETACH_REPAIR_DISK: detach_repair_disk,
    steps.SWAP_OS_DISK: swap_os_disk,
    steps.START_VM: start_vm,
    steps.VERIFY_BOOT: verify_boot,
    steps.RESTORE_POWER_STATE: restore_power_state,
    steps.DELETE_RESCUE_RESOURCES: delete_rescue_resources,
    steps.RECORD_EVENT: record_event,
}


def run(name: str, payload: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """Run one activity by name, turning permanent domain errors into a result the orchestrator reads."""
    try:
        return ACTIVITIES[name](payload, deps)
    except PermanentError as exc:
        log.warning("%s failed permanently: %s", name, exc,
                    extra={"incident_id": payload.get("incident_id"), "vm_id": payload.get("vm_id")})
        return _fail(str(exc))


__all__ = ["ACTIVITIES", "Deps", "DiskInfo", "VmInfo", "run"]
