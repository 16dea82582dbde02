"""Domain types shared by every layer: VM references, detector findings, incidents and errors.

Pure: nothing here imports an Azure SDK or does I/O.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------- errors


class RemediationError(Exception):
    """Base of every error the product raises on purpose."""


class InvalidInput(RemediationError):
    """A user's or a caller's input is wrong; the message says what and how to fix it."""


class SettingsError(InvalidInput):
    """A setting is missing or invalid; the message names it."""


class TransientError(RemediationError):
    """Worth retrying: throttling, a 5xx, a dropped connection."""


class NotFoundError(RemediationError):
    """The resource does not exist (any more)."""


class ConflictError(RemediationError):
    """The resource exists in a state that forbids the operation (409, ETag mismatch)."""


class PermanentError(RemediationError):
    """Retrying will not help; the incident must fail with this message."""


# ---------------------------------------------------------------------------------------------- VMs

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.()\-]{0,89}"
_VM_ID = re.compile(
    rf"^/subscriptions/(?P<sub>[0-9A-Fa-f-]{{36}})/resourceGroups/(?P<rg>{_SEGMENT})"
    rf"/providers/Microsoft\.Compute/virtualMachines/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{{0,63}})$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class VmRef:
    """A virtual machine named by subscription, resource group and name."""

    subscription_id: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, resource_id: str) -> VmRef:
        """Parse an ARM resource id of a VM; raise InvalidInput if it is not one."""
        if not isinstance(resource_id, str):
            raise InvalidInput("a VM resource id must be a string")
        text = resource_id.strip().rstrip("/")
        m = _VM_ID.match(text)
        if not m:
            raise InvalidInput(
                f"not a virtual machine resource id: {text[:200]!r} (expected "
                "/subscriptions/<guid>/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>)"
            )
        return cls(m["sub"].lower(), m["rg"], m["name"])

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    @property
    def key(self) -> str:
        """Case-insensitive identity (ARM ids are case-insensitive)."""
        return self.id.lower()

    def __str__(self) -> str:
        return f"{self.resource_group}/{self.name}"


# ---------------------------------------------------------------------------------------------- detection


class Verdict(enum.StrEnum):
    """What the latest boot in a serial log shows."""

    SELINUX_POLICY_FAILURE = "selinux_policy_failure"
    SELINUX_POLICY_MISSING = "selinux_policy_missing"
    OTHER_BOOT_FAILURE = "other_boot_failure"
    BOOTED = "booted"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Evidence:
    """One serial-log line that decided a verdict (line numbers count from 1 in the text analysed)."""

    line: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "text": self.text}


@dataclass(frozen=True)
class Finding:
    """The detector's judgement of the latest boot."""

    verdict: Verdict
    evidence: tuple[Evidence, ...] = ()
    signature: str | None = None
    reason: str = ""
    policy_type: str | None = None
    policy_path: str | None = None
    boot_start_line: int | None = None

    @property
    def repairable(self) -> bool:
        return self.verdict in (Verdict.SELINUX_POLICY_FAILURE, Verdict.SELINUX_POLICY_MISSING)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "signature": self.signature,
            "reason": self.reason,
            "evidence": [e.to_dict() for e in self.evidence],
            "policy_type": self.policy_type,
            "policy_path": self.policy_path,
            "boot_start_line": self.boot_start_line,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            verdict=Verdict(data["verdict"]),
            evidence=tuple(Evidence(int(e["line"]), str(e["text"])) for e in data.get("evidence", [])),
            signature=data.get("signature"),
            reason=data.get("reason", ""),
            policy_type=data.get("policy_type"),
            policy_path=data.get("policy_path"),
            boot_start_line=data.get("boot_start_line"),
        )


# ---------------------------------------------------------------------------------------------- incidents


class IncidentState(enum.StrEnum):
    """Life of an incident. Open states block a second incident for the same VM."""

    DETECTED = "detected"
    AWAITING_APPROVAL = "awaiting_approval"
    REPAIRING = "repairing"
    RESOLVED = "resolved"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPPRESSED = "suppressed"

    @property
    def is_open(self) -> bool:
        return self in (IncidentState.DETECTED, IncidentState.AWAITING_APPROVAL, IncidentState.REPAIRING)


def incident_id_for(vm: VmRef, opened_at_iso: str) -> str:
    """A short, stable id: the same VM and opening time always give the same id."""
    digest = hashlib.sha256(f"{vm.key}|{opened_at_iso}".encode()).hexdigest()
    return f"inc-{digest[:12]}"


def instance_id_for(incident_id: str) -> str:
    """The durable orchestration instance id of an incident: one repair per incident, by construction."""
    return f"repair-{incident_id}"


@dataclass(frozen=True)
class TimelineEvent:
    """One entry of an incident's append-only timeline."""

    at: str
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "message": self.message, "data": self.data}


# ---------------------------------------------------------------------------------------------- VM state


class PowerState(enum.StrEnum):
    """The power states ARM reports in a VM's instance view (`PowerState/<x>`)."""

    RUNNING = "running"
    STARTING = "starting"
    STOPPED = "stopped"
    STOPPING = "stopping"
    DEALLOCATED = "deallocated"
    DEALLOCATING = "deallocating"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class VmInfo:
    """What the product needs to know about a VM, read from ARM."""

    ref: VmRef
    location: str
    vm_size: str
    os_type: str  # "Linux" / "Windows"
    os_disk_name: str
    os_disk_id: str | None  # None: unmanaged (VHD) disk, not supported
    zones: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    nic_ids: tuple[str, ...] = ()
    power_state: PowerState = PowerState.UNKNOWN
    agent_ready: bool | None = None  # None: unknown (no instance view read)
    encrypted: bool = False
    provisioning_state: str = "Succeeded"
    data_disk_ids: tuple[str, ...] = ()
    hyper_v_generation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.ref.id,
            "location": self.location,
            "vm_size": self.vm_size,
            "os_type": self.os_type,
            "os_disk_name": self.os_disk_name,
            "os_disk_id": self.os_disk_id,
            "zones": list(self.zones),
            "tags": dict(self.tags),
            "nic_ids": list(self.nic_ids),
            "power_state": self.power_state.value,
            "agent_ready": self.agent_ready,
            "encrypted": self.encrypted,
            "provisioning_state": self.provisioning_state,
            "data_disk_ids": list(self.data_disk_ids),
            "hyper_v_generation": self.hyper_v_generation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmInfo:
        return cls(
            ref=VmRef.parse(data["id"]),
            location=data["location"],
            vm_size=data["vm_size"],
            os_type=data["os_type"],
            os_disk_name=data["os_disk_name"],
            os_disk_id=data.get("os_disk_id"),
            zones=tuple(data.get("zones") or ()),
            tags=dict(data.get("tags") or {}),
            nic_ids=tuple(data.get("nic_ids") or ()),
            power_state=PowerState(data.get("power_state", "unknown")),
            agent_ready=data.get("agent_ready"),
            encrypted=bool(data.get("encrypted", False)),
            provisioning_state=data.get("provisioning_state", "Succeeded"),
            data_disk_ids=tuple(data.get("data_disk_ids") or ()),
            hyper_v_generation=data.get("hyper_v_generation"),
        )


@dataclass(frozen=True)
class DiskInfo:
    """A managed disk as the repair needs it."""

    id: str
    name: str
    location: str
    sku: str | None = None
    zones: tuple[str, ...] = ()
    os_type: str | None = None
    hyper_v_generation: str | None = None
    size_gb: int | None = None
    provisioning_state: str = "Succeeded"
    disk_state: str | None = None  # Attached / Unattached / Reserved
    managed_by: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    encrypted: bool = False  # Azure Disk Encryption (guest-side): cannot be repaired offline


@dataclass(frozen=True)
class NicInfo:
    """A network interface: where a rescue VM can be placed."""

    id: str
    name: str
    location: str
    subnet_id: str | None
    vm_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunCommandState:
    """A managed Run Command's execution as the instance view reports it."""

    execution_state: str  # Pending / Running / Succeeded / Failed / TimedOut / Canceled / Unknown
    exit_code: int | None = None
    output: str = ""
    error: str = ""
    provisioning_state: str | None = None

    @property
    def finished(self) -> bool:
        return self.execution_state.lower() in ("succeeded", "failed", "timedout", "canceled")
