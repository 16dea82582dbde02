"""Resources of the local Azure and the rules ARM enforces on them.

Everything lives in one `State` guarded by one lock. Long-running operations are records with a
ready time: `advance()` (called before every request is served, and by a ticker) applies every
operation whose modelled duration has passed and whose worker (a disk copy, a script, a boot) has
finished. So state moves with time, not with polling: a client that starts an operation with
polling=False and GETs the resource later sees it done.

Times: absolute times are real wall-clock times. Durations (operation lengths, heartbeat ages, the
window of a Log Analytics `ago()`) are multiplied by the time scale.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localazure import bootmodel
from localazure.faults import LatencyModel

log = logging.getLogger(__name__)

COMPUTE = "Microsoft.Compute"
NETWORK = "Microsoft.Network"
SERIAL_LIMIT = 4 * 1024 * 1024
RUN_OUTPUT_LIMIT = 4096
OPERATION_LIMIT = 20_000
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class ArmError(Exception):
    """An ARM error answer: HTTP status plus {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(kind: str, name: str, rg: str) -> ArmError:
    return ArmError(
        404, "ResourceNotFound", f"The Resource '{kind}/{name}' under resource group '{rg}' was not found."
    )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def arm_id(sub: str, rg: str, provider: str, rtype: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider}/{rtype}/{name}"


def split_id(resource_id: str) -> dict[str, str]:
    """{"subscriptions": ..., "resourceGroups": ..., "<type>": name, "provider": ...} from an ARM id."""
    parts = [p for p in resource_id.split("/") if p]
    out: dict[str, str] = {}
    i = 0
    while i + 1 < len(parts):
        key = parts[i]
        if key.lower() == "providers":
            out["provider"] = parts[i + 1]
        else:
            out[key.lower()] = parts[i + 1]
        i += 2
    return out


# ---------------------------------------------------------------------------------------------- resources


@dataclass
class Subscription:
    id: str
    display_name: str

    def to_arm(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.id}",
            "subscriptionId": self.id,
            "tenantId": TENANT_ID,
            "displayName": self.display_name,
            "state": "Enabled",
            "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01",
                                     "spendingLimit": "Off"},
            "authorizationSource": "RoleBased",
        }


@dataclass
class ResourceGroup:
    subscription: str
    name: str
    location: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.name}"

    def to_arm(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "type": "Microsoft.Resources/resourceGroups",
            "location": self.location, "tags": dict(self.tags), "properties": {"provisioningState": "Succeeded"},
        }


@dataclass
class Disk:
    """A managed disk or a snapshot; `path` is its raw image when it has real content."""

    id: str
    name: str
    location: str
    kind: str = "disks"  # or "snapshots"
    zones: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    sku: str = "Premium_LRS"
    size_gb: int = 30
    os_type: str | None = "Linux"
    hyperv: str = "V2"
    managed_by: str | None = None
    provisioning: str = "Succeeded"
    path: Path | None = None
    declared: str = "healthy"
    ade: bool = False
    creation_data: dict[str, Any] = field(default_factory=lambda: {"createOption": "Empty"})
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)
    preexisting: bool = False

    @property
    def arm_type(self) -> str:
        return f"{COMPUTE}/{self.kind}"

    def to_arm(self, state: State) -> dict[str, Any]:
        props: dict[str, Any] = {
            "osType": self.os_type,
            "hyperVGeneration": self.hyperv,
            "creationData": dict(self.creation_data),
            "diskSizeGB": self.size_gb,
            "diskSizeBytes": self.size_gb * 1024**3,
            "uniqueId": self.unique_id,
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
            "networkAccessPolicy": "AllowAll",
            "publicNetworkAccess": "Enabled",
            "timeCreated": iso(self.created),
            "provisioningState": self.provisioning,
            "diskState": self.disk_state(state),
        }
        if self.os_type is None:
            del props["osType"]
        if self.ade:
            props["encryptionSettingsCollection"] = {
                "enabled": True,
                "encryptionSettingsVersion": "1.1",
                "encryptionSettings": [{
                    "diskEncryptionKey": {
                        "sourceVault": {"id": self.id.split("/providers/")[0]
                                        + "/providers/Microsoft.KeyVault/vaults/ade-vault"},
                        "secretUrl": "https://ade-vault.vault.azure.net/secrets/ade/0123456789abcdef",
                    }
                }],
            }
        if self.kind == "snapshots":
            props["incremental"] = False
        body: dict[str, Any] = {
            "id": self.id, "name": self.name, "type": self.arm_type, "location": self.location,
            "tags": dict(self.tags), "sku": {"name": self.sku, "tier": self.sku.split("_")[0]},
            "properties": props,
        }
        if self.kind == "disks" and self.managed_by:
            body["managedBy"] = self.managed_by
        if self.zones:
            body["zones"] = list(self.zones)
        return body

    def disk_state(self, state: State) -> str:
        if self.kind == "snapshots" or not self.managed_by:
            return "Unattached"
        vm = state.vms.get(self.managed_by.lower())
        if vm is not None and vm.power in ("deallocated", "deallocating"):
            return "Reserved"
        return "Attached"


@dataclass
class DataDisk:
    lun: int
    disk_id: str
    name: str
    caching: str = "None"
    delete_option: str = "Detach"


@dataclass
class Vm:
    id: str
    name: str
    subscription: str
    resource_group: str
    location: str
    vm_size: str = "Standard_D2s_v5"
    os_type: str = "Linux"
    zones: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    os_disk_id: str | None = None
    os_disk_name: str = ""
    os_disk_delete_option: str = "Detach"
    os_disk_create_option: str = "FromImage"
    vhd_uri: str | None = None
    data_disks: list[DataDisk] = field(default_factory=list)
    nic_ids: list[str] = field(default_factory=list)
    nic_delete_options: dict[str, str] = field(default_factory=dict)
    image_reference: dict[str, Any] | None = None
    computer_name: str = ""
    admin_username: str = "azureuser"
    power: str = "running"
    provisioning: str = "Succeeded"
    agent_ready: bool = True
    monitored: bool = True  # sends Log Analytics heartbeats when the guest runs
    heartbeat_at: float | None = None  # None: reporting now (live)
    boot_diagnostics: bool = True
    serial: bytearray = field(default_factory=bytearray)
    serial_updated: float = field(default_factory=time.time)
    vm_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: float = field(default_factory=time.time)
    last_outcome: str | None = None
    booting: bool = False
    busy: str | None = None  # id of the operation that changes this VM now
    run_command_busy: bool = False
    preexisting: bool = False
    rescue: bool = False
    declared: str = "healthy"  # the OS state of an unmanaged (VHD) disk, which has no Disk resource
    serial_seed: Callable[[], str] | None = None  # renders the log on first read (large synthetic scenarios)

    def serial_bytes(self) -> bytes:
        if self.serial_seed is not None:
            seed, self.serial_seed = self.serial_seed, None
            self.serial[:0] = seed().encode()
        return bytes(self.serial)

    @functools.cached_property
    def blob_key(self) -> str:
        return hashlib.sha256(f"{self.id.lower()}|{self.vm_uuid}".encode()).hexdigest()[:24]

    def append_serial(self, text: str) -> None:
        self.serial_bytes()
        self.serial += text.encode()
        if len(self.serial) > SERIAL_LIMIT:
            del self.serial[: len(self.serial) - SERIAL_LIMIT]
        self.serial_updated = time.time()

    def storage_profile(self, state: State) -> dict[str, Any]:
        os_disk: dict[str, Any] = {
            "osType": self.os_type, "name": self.os_disk_name, "createOption": self.os_disk_create_option,
            "caching": "ReadWrite", "deleteOption": self.os_disk_delete_option,
        }
        disk = state.disks.get(self.os_disk_id.lower()) if self.os_disk_id else None
        if self.os_disk_id:
            os_disk["managedDisk"] = {"id": self.os_disk_id,
                                      "storageAccountType": disk.sku if disk else "Premium_LRS"}
            if disk is not None:
                os_disk["diskSizeGB"] = disk.size_gb
                if disk.ade:
                    os_disk["encryptionSettings"] = {"enabled": True}
        elif self.vhd_uri:
            os_disk["vhd"] = {"uri": self.vhd_uri}
        profile: dict[str, Any] = {"osDisk": os_disk, "dataDisks": []}
        if self.image_reference:
            profile["imageReference"] = dict(self.image_reference)
        for dd in sorted(self.data_disks, key=lambda d: d.lun):
            d = state.disks.get(dd.disk_id.lower())
            profile["dataDisks"].append({
                "lun": dd.lun, "name": dd.name, "createOption": "Attach", "caching": dd.caching,
                "managedDisk": {"id": dd.disk_id, "storageAccountType": d.sku if d else "Premium_LRS"},
                "diskSizeGB": d.size_gb if d else 0, "toBeDetached": False, "deleteOption": dd.delete_option,
            })
        return profile

    def instance_view(self, state: State) -> dict[str, Any]:
        now = iso(time.time())
        if self.power == "running" and self.agent_ready:
            agent = {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Ready",
                     "message": "Guest Agent is running", "time": now}
        else:
            agent = {"code": "ProvisioningState/Unavailable", "level": "Warning", "displayStatus": "Not Ready",
                     "message": "VM status blob is found but not yet populated.", "time": now}
        power_display = {"running": "VM running", "deallocated": "VM deallocated", "stopped": "VM stopped",
                         "starting": "VM starting", "deallocating": "VM deallocating", "stopping": "VM stopping"}
        prov = self.provisioning.lower()
        statuses = [
            {"code": f"ProvisioningState/{prov}", "level": "Info" if prov != "failed" else "Error",
             "displayStatus": f"Provisioning {prov}", "time": iso(self.created)},
            {"code": f"PowerState/{self.power}", "level": "Info", "displayStatus": power_display[self.power]},
        ]
        disks = []
        for disk_id in [self.os_disk_id, *[d.disk_id for d in self.data_disks]]:
            if disk_id:
                disks.append({"name": disk_id.rsplit("/", 1)[-1], "statuses": [
                    {"code": "ProvisioningState/succeeded", "level": "Info",
                     "displayStatus": "Provisioning succeeded", "time": now}]})
        view: dict[str, Any] = {
            "computerName": self.computer_name,
            "osName": "Windows Server 2022 Datacenter" if self.os_type == "Windows" else "redhat",
            "osVersion": "10.0.20348" if self.os_type == "Windows" else "9.4",
            "vmAgent": {"vmAgentVersion": "2.11.1.12" if self.agent_ready else "Unknown", "statuses": [agent]},
            "disks": disks,
            "hyperVGeneration": "V2",
            "statuses": statuses,
        }
        if self.boot_diagnostics:
            view["bootDiagnostics"] = {}
        return view

    def to_arm(self, state: State, instance_view: bool = False) -> dict[str, Any]:
        nics = [{"id": n, "properties": {"primary": i == 0, "deleteOption": self.nic_delete_options.get(n, "Detach")}}
                for i, n in enumerate(self.nic_ids)]
        props: dict[str, Any] = {
            "vmId": self.vm_uuid,
            "hardwareProfile": {"vmSize": self.vm_size},
            "storageProfile": self.storage_profile(state),
            "networkProfile": {"networkInterfaces": nics},
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": self.boot_diagnostics}},
            "provisioningState": self.provisioning,
            "timeCreated": iso(self.created),
        }
        if self.computer_name:
            os_profile: dict[str, Any] = {"computerName": self.computer_name, "adminUsername": self.admin_username}
            if self.os_type == "Linux":
                os_profile["linuxConfiguration"] = {"disablePasswordAuthentication": True,
                                                    "provisionVMAgent": True}
            else:
                os_profile["windowsConfiguration"] = {"provisionVMAgent": True}
            props["osProfile"] = os_profile
        if instance_view:
            props["instanceView"] = self.instance_view(state)
        body: dict[str, Any] = {
            "id": self.id, "name": self.name, "type": f"{COMPUTE}/virtualMachines", "location": self.location,
            "tags": dict(self.tags), "properties": props,
        }
        if self.zones:
            body["zones"] = list(self.zones)
        return body


@dataclass
class Subnet:
    id: str
    name: str
    prefix: str

    def to_arm(self, state: State) -> dict[str, Any]:
        configs = [{"id": f"{n.id}/ipConfigurations/ipconfig1"} for n in state.nics.values()
                   if n.subnet_id.lower() == self.id.lower()]
        return {
            "id": self.id, "name": self.name, "type": f"{NETWORK}/virtualNetworks/subnets",
            "etag": f'W/"{uuid.uuid5(uuid.NAMESPACE_URL, self.id)}"',
            "properties": {"addressPrefix": self.prefix, "provisioningState": "Succeeded",
                           "ipConfigurations": configs, "privateEndpointNetworkPolicies": "Disabled",
                           "privateLinkServiceNetworkPolicies": "Enabled"},
        }


@dataclass
class Vnet:
    id: str
    name: str
    location: str
    prefixes: list[str]
    subnets: dict[str, Subnet] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_arm(self, state: State) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "type": f"{NETWORK}/virtualNetworks", "location": self.location,
            "tags": dict(self.tags), "etag": f'W/"{uuid.uuid5(uuid.NAMESPACE_URL, self.id)}"',
            "properties": {"addressSpace": {"addressPrefixes": list(self.prefixes)}, "provisioningState": "Succeeded",
                           "subnets": [s.to_arm(state) for s in self.subnets.values()],
                           "resourceGuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.id))},
        }


@dataclass
class Nic:
    id: str
    name: str
    location: str
    subnet_id: str
    private_ip: str
    tags: dict[str, str] = field(default_factory=dict)
    vm_id: str | None = None
    provisioning: str = "Succeeded"
    mac: str = ""
    preexisting: bool = False

    def to_arm(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "provisioningState": self.provisioning,
            "resourceGuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.id)),
            "ipConfigurations": [{
                "id": f"{self.id}/ipConfigurations/ipconfig1", "name": "ipconfig1",
                "type": f"{NETWORK}/networkInterfaces/ipConfigurations",
                "properties": {"privateIPAddress": self.private_ip, "privateIPAllocationMethod": "Dynamic",
                               "privateIPAddressVersion": "IPv4", "subnet": {"id": self.subnet_id},
                               "primary": True, "provisioningState": self.provisioning},
            }],
            "enableAcceleratedNetworking": False, "enableIPForwarding": False, "nicType": "Standard",
        }
        if self.mac:
            props["macAddress"] = self.mac
        if self.vm_id:
            props["virtualMachine"] = {"id": self.vm_id}
            props["primary"] = True
        return {"id": self.id, "name": self.name, "type": f"{NETWORK}/networkInterfaces",
                "location": self.location, "tags": dict(self.tags),
                "etag": f'W/"{uuid.uuid5(uuid.NAMESPACE_URL, self.id + self.provisioning)}"', "properties": props}


@dataclass
class ScriptRun:
    """One execution of a Run Command script (classic or managed)."""

    script: str
    parameters: dict[str, str]
    timeout: float
    start_after: float  # monotonic time at which the extension starts the script
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def execution_state(self) -> str:
        if not self.done.is_set():
            return "Running" if self.started is not None else "Pending"
        if self.timed_out:
            return "TimedOut"
        return "Succeeded" if self.exit_code == 0 else "Failed"


@dataclass
class RunCommand:
    id: str
    name: str
    vm_id: str
    location: str
    tags: dict[str, str]
    source: dict[str, Any]
    parameters: list[dict[str, str]]
    async_execution: bool
    timeout_seconds: int
    run: ScriptRun
    provisioning: str = "Creating"

    def to_arm(self, instance_view: bool) -> dict[str, Any]:
        props: dict[str, Any] = {
            "source": dict(self.source), "parameters": list(self.parameters),
            "asyncExecution": self.async_execution, "timeoutInSeconds": self.timeout_seconds,
            "treatFailureAsDeploymentFailure": False, "provisioningState": self.provisioning,
        }
        if instance_view:
            r = self.run
            state = r.execution_state
            props["instanceView"] = {
                "executionState": state,
                "executionMessage": {"Succeeded": "", "Failed": "Script execution failed",
                                     "TimedOut": "Script execution timed out"}.get(state, ""),
                "exitCode": r.exit_code if r.exit_code is not None else 0,
                "output": tail(r.stdout),
                "error": tail(r.stderr),
                "startTime": iso(_wall(r.started)),
                "endTime": iso(_wall(r.ended)),
            }
        return {"id": self.id, "name": self.name, "type": f"{COMPUTE}/virtualMachines/runCommands",
                "location": self.location, "tags": dict(self.tags), "properties": props}


def tail(text: str, limit: int = RUN_OUTPUT_LIMIT) -> str:
    """The last `limit` bytes of a script's output, as Run Command keeps them."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[-limit:].decode("utf-8", "ignore")


_MONO_TO_WALL = time.time() - time.monotonic()


def _wall(mono: float | None) -> float | None:
    return None if mono is None else mono + _MONO_TO_WALL


@dataclass
class Operation:
    """A long-running operation: done once `ready_at` has passed and its worker (if any) finished."""

    id: str
    name: str
    resource_id: str
    subscription: str
    location: str
    provider: str
    ready_at: float
    started: float = field(default_factory=time.time)
    status: str = "InProgress"
    ended: float | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    will_fail: bool = False
    on_success: Callable[[Operation], None] | None = None
    on_failure: Callable[[Operation], None] | None = None
    worker: threading.Event | None = None

    def to_arm(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.id, "status": self.status, "startTime": iso(self.started)}
        if self.ended is not None:
            body["endTime"] = iso(self.ended)
        if self.error:
            body["error"] = self.error
        if self.result is not None and self.status == "Succeeded":
            body["properties"] = {"output": self.result}
        return body


@dataclass
class Reply:
    """What a state method answers: HTTP status, JSON body, and the operation behind it if long-running."""

    status: int
    body: Any
    op: Operation | None = None


# ---------------------------------------------------------------------------------------------- state


ScriptRunner = Callable[[ScriptRun, list[tuple[int, Path]]], None]
BootRunner = Callable[["State", Vm, Path], None]


class State:
    """All resources, the operations in flight, and the rules between them."""

    def __init__(
        self,
        latency: LatencyModel,
        data_dir: Path,
        script_runner: ScriptRunner | None = None,
        boot_runner: BootRunner | None = None,
        disk_reader: bootmodel.DiskReader | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.latency = latency
        self.data_dir = data_dir
        self.script_runner = script_runner
        self.boot_runner = boot_runner
        self.disk_reader = disk_reader
        self.subscriptions: dict[str, Subscription] = {}
        self.groups: dict[str, ResourceGroup] = {}
        self.vms: dict[str, Vm] = {}
        self.disks: dict[str, Disk] = {}
        self.nics: dict[str, Nic] = {}
        self.vnets: dict[str, Vnet] = {}
        self.run_commands: dict[str, RunCommand] = {}
        self.ops: dict[str, Operation] = {}
        self.deleted: list[str] = []
        self.workspace_id = "00000000-0000-0000-0000-000000000000"
        self._ip_counter = 10
        self._boots: dict[str, bootmodel.Transcript | None] = {}

    # ------------------------------------------------------------------ time

    def now(self) -> float:
        return time.monotonic()

    def advance(self) -> None:
        """Apply every operation whose time has come (and whose worker finished)."""
        with self.lock:
            now = self.now()
            due = [op for op in self.ops.values() if op.status == "InProgress" and op.ready_at <= now]
            for op in sorted(due, key=lambda o: o.ready_at):
                if op.worker is not None and not op.worker.is_set():
                    continue
                self._finish(op)
            if len(self.ops) > OPERATION_LIMIT:
                # Forget the oldest finished operations (ARM, too, answers 404 for old operation ids).
                done = [k for k, o in self.ops.items() if o.status != "InProgress"]
                for key in done[: len(self.ops) - OPERATION_LIMIT]:
                    del self.ops[key]

    def _finish(self, op: Operation) -> None:
        op.ended = time.time()
        if op.will_fail:
            op.status = "Failed"
            op.error = {"code": "InternalExecutionError",
                        "message": "An internal execution error occurred. Please retry later."}
            if op.on_failure:
                op.on_failure(op)
            return
        try:
            if op.on_success:
                op.on_success(op)
            op.status = "Succeeded"
        except ArmError as exc:
            op.status = "Failed"
            op.error = {"code": exc.code, "message": exc.message}
            if op.on_failure:
                op.on_failure(op)

    def start_op(
        self, name: str, resource_id: str, duration_kind: str, will_fail: bool,
        on_success: Callable[[Operation], None] | None = None,
        on_failure: Callable[[Operation], None] | None = None,
        worker: threading.Event | None = None, provider: str = COMPUTE, location: str = "eastus",
    ) -> Operation:
        op = Operation(
            id=str(uuid.uuid4()), name=name, resource_id=resource_id,
            subscription=split_id(resource_id).get("subscriptions", ""), location=location, provider=provider,
            ready_at=self.now() + self.latency.seconds(duration_kind), will_fail=will_fail,
            on_success=on_success, on_failure=on_failure, worker=worker,
        )
        self.ops[op.id] = op
        return op

    def operation(self, op_id: str) -> Operation:
        op = self.ops.get(op_id)
        if op is None:
            raise ArmError(404, "NotFound", f"Operation {op_id} was not found.")
        return op

    # ------------------------------------------------------------------ lookups

    def subscription(self, sub: str) -> Subscription:
        s = self.subscriptions.get(sub.lower())
        if s is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        return s

    def group(self, sub: str, rg: str) -> ResourceGroup:
        self.subscription(sub)
        g = self.groups.get(f"/subscriptions/{sub}/resourcegroups/{rg}".lower())
        if g is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return g

    def vm(self, sub: str, rg: str, name: str) -> Vm:
        g = self.group(sub, rg)
        v = self.vms.get(arm_id(sub, rg, COMPUTE, "virtualMachines", name).lower())
        if v is None:
            raise not_found(f"{COMPUTE}/virtualMachines", name, g.name)
        return v

    def disk(self, sub: str, rg: str, name: str, kind: str = "disks") -> Disk:
        g = self.group(sub, rg)
        d = self.disks.get(arm_id(sub, rg, COMPUTE, kind, name).lower())
        if d is None or d.kind != kind:
            raise not_found(f"{COMPUTE}/{kind}", name, g.name)
        return d

    def disk_by_id(self, disk_id: str, what: str) -> Disk:
        d = self.disks.get(disk_id.lower().rstrip("/"))
        if d is None:
            parts = split_id(disk_id)
            raise ArmError(404, "NotFound", f"{what} '{disk_id}' was not found"
                           + (f" in resource group '{parts.get('resourcegroups')}'." if parts else "."))
        return d

    def nic(self, sub: str, rg: str, name: str) -> Nic:
        g = self.group(sub, rg)
        n = self.nics.get(arm_id(sub, rg, NETWORK, "networkInterfaces", name).lower())
        if n is None:
            raise not_found(f"{NETWORK}/networkInterfaces", name, g.name)
        return n

    def vnet(self, sub: str, rg: str, name: str) -> Vnet:
        g = self.group(sub, rg)
        v = self.vnets.get(arm_id(sub, rg, NETWORK, "virtualNetworks", name).lower())
        if v is None:
            raise not_found(f"{NETWORK}/virtualNetworks", name, g.name)
        return v

    def subnet_by_id(self, subnet_id: str) -> Subnet:
        parts = split_id(subnet_id)
        vnet_id = subnet_id.lower().split("/subnets/")[0]
        vnet = self.vnets.get(vnet_id)
        sub = vnet.subnets.get(parts.get("subnets", "").lower()) if vnet else None
        if sub is None:
            raise ArmError(400, "InvalidResourceReference",
                           f"Resource {subnet_id} referenced by resource networkInterfaces was not found.")
        return sub

    # ------------------------------------------------------------------ listing

    def vms_in(self, sub: str, rg: str | None = None) -> list[Vm]:
        self.subscription(sub)
        prefix = f"/subscriptions/{sub}/resourcegroups/".lower()
        if rg is not None:
            self.group(sub, rg)
            prefix += f"{rg.lower()}/"
        return [v for k, v in self.vms.items() if k.startswith(prefix)]

    def disks_in(self, sub: str, rg: str | None, kind: str) -> list[Disk]:
        self.subscription(sub)
        prefix = f"/subscriptions/{sub}/resourcegroups/".lower()
        if rg is not None:
            self.group(sub, rg)
            prefix += f"{rg.lower()}/"
        return [d for k, d in self.disks.items() if k.startswith(prefix) and d.kind == kind]

    def all_resources(self, sub: str, rg: str | None = None) -> list[dict[str, Any]]:
        """Generic resource entries (id, name, type, location, tags) for /resources listings."""
        self.subscription(sub)
        prefix = f"/subscriptions/{sub}/resourcegroups/".lower()
        if rg is not None:
            self.group(sub, rg)
            prefix += f"{rg.lower()}/"
        out: list[dict[str, Any]] = []
        items: Iterable[Vm | Disk | Nic | Vnet] = [*self.vms.values(), *self.disks.values(),
                                                   *self.nics.values(), *self.vnets.values()]
        for r in items:
            if not r.id.lower().startswith(prefix):
                continue
            rtype = (r.arm_type if isinstance(r, Disk) else f"{COMPUTE}/virtualMachines" if isinstance(r, Vm)
                     else f"{NETWORK}/networkInterfaces" if isinstance(r, Nic) else f"{NETWORK}/virtualNetworks")
            entry: dict[str, Any] = {"id": r.id, "name": r.name, "type": rtype, "location": r.location,
                                     "tags": dict(r.tags)}
            if isinstance(r, Disk | Vm) and r.zones:
                entry["zones"] = list(r.zones)
            out.append(entry)
        return out

    # ------------------------------------------------------------------ helpers

    def _check_location(self, body: dict[str, Any], where: str) -> str:
        loc = body.get("location")
        if not isinstance(loc, str) or not loc:
            raise ArmError(400, "LocationRequired", f"The location property is required for this definition ({where}).")
        return loc.lower().replace(" ", "")

    def _tags(self, body: dict[str, Any]) -> dict[str, str]:
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ArmError(400, "InvalidTagFormat", "Tags must be an object of string names to string values.")
        if len(tags) > 50:
            raise ArmError(400, "InvalidTemplate", "A resource can have at most 50 tags.")
        return dict(tags)

    def _disk_path(self, sub: str, rg: str, name: str) -> Path:
        d = self.data_dir / "disks" / sub / rg.lower()
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{name}-{uuid.uuid4().hex[:8]}.img"

    def next_ip(self, prefix: str) -> str:
        base = prefix.split("/", maxsplit=1)[0].rsplit(".", 1)[0]
        self._ip_counter += 1
        return f"{base}.{4 + self._ip_counter % 250}"

    # ------------------------------------------------------------------ disks & snapshots

    def put_disk(self, sub: str, rg: str, name: str, body: dict[str, Any], kind: str, will_fail: bool) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, COMPUTE, kind, name)
        existing = self.disks.get(rid.lower())
        tags = self._tags(body)
        props = body.get("properties") or {}
        if existing is not None:
            if existing.provisioning not in ("Succeeded", "Failed"):
                raise ArmError(409, "OperationNotAllowed",
                               f"Operation on {kind[:-1]} '{name}' is not allowed while it is {existing.provisioning}.")
            existing.tags = tags
            new_size = props.get("diskSizeGB")
            if isinstance(new_size, int) and new_size > existing.size_gb:
                existing.size_gb = new_size
            existing.provisioning = "Updating"

            def done_update(_: Operation, d: Disk = existing) -> None:
                d.provisioning = "Succeeded"

            op = self.start_op(f"{kind}.update", rid, "disk_update", will_fail, done_update,
                               self._failed_provisioning(existing), location=existing.location)
            return Reply(200, existing.to_arm(self), op)
        location = self._check_location(body, rid)
        creation = props.get("creationData") or {}
        option = str(creation.get("createOption", "")).lower()
        zones = body.get("zones") or []
        sku = (body.get("sku") or {}).get("name", "Premium_LRS" if kind == "disks" else "Standard_LRS")
        disk = Disk(id=rid, name=name, location=location, kind=kind, zones=list(zones), tags=tags, sku=sku,
                    provisioning="Creating",
                    creation_data={k: v for k, v in creation.items() if isinstance(k, str)})
        worker: threading.Event | None = None
        duration = "disk_create_empty"
        if option == "copy":
            src_id = creation.get("sourceResourceId")
            if not isinstance(src_id, str):
                raise ArmError(400, "InvalidParameter", "creationData.sourceResourceId is required for Copy.")
            src = self.disk_by_id(src_id, "Source resource")
            if src.provisioning not in ("Succeeded", "Updating"):
                raise ArmError(409, "OperationNotAllowed",
                               f"Source '{src.name}' is {src.provisioning}; copy it once it has Succeeded.")
            if src.location != location:
                raise ArmError(400, "InvalidParameter",
                               f"Source '{src.name}' is in {src.location}; the copy must be in the same region "
                               f"(requested {location}).")
            disk.size_gb = max(src.size_gb, int(props.get("diskSizeGB") or 0))
            disk.os_type = src.os_type if props.get("osType") is None else str(props["osType"])
            disk.hyperv = src.hyperv
            disk.declared = src.declared
            disk.ade = src.ade
            disk.creation_data["sourceUniqueId"] = src.unique_id
            duration = "disk_copy" if kind == "disks" else "snapshot_create"
            if src.path is not None:
                dst = self._disk_path(sub, g.name, name)
                disk.path = dst
                worker = threading.Event()
                _copy_in_background(src.path, dst, worker, disk)
        elif option in ("empty", "fromimage", "import", "upload"):
            if kind == "snapshots":
                raise ArmError(400, "InvalidParameter", "A snapshot must be created with createOption Copy.")
            disk.size_gb = int(props.get("diskSizeGB") or 30)
            disk.os_type = props.get("osType")
            disk.declared = "placeholder"
        else:
            raise ArmError(400, "InvalidParameter",
                           f"createOption {creation.get('createOption')!r} is not supported here "
                           "(use Copy, Empty or FromImage).")
        if isinstance(props.get("hyperVGeneration"), str):
            disk.hyperv = props["hyperVGeneration"]
        self.disks[rid.lower()] = disk

        def done(_: Operation, d: Disk = disk, real: bool = worker is not None) -> None:
            if real and d.path is None:
                raise ArmError(500, "InternalDiskManagementError", f"Copying the content of {d.name} failed.")
            d.provisioning = "Succeeded"

        op = self.start_op(f"{kind}.create", rid, duration, will_fail, done, self._failed_provisioning(disk),
                           worker=worker, location=location)
        return Reply(202, disk.to_arm(self), op)

    def _failed_provisioning(self, res: Disk | Vm | Nic) -> Callable[[Operation], None]:
        def fail(_: Operation) -> None:
            res.provisioning = "Failed"

        return fail

    def patch_disk(self, sub: str, rg: str, name: str, body: dict[str, Any], kind: str, will_fail: bool) -> Reply:
        disk = self.disk(sub, rg, name, kind)
        if "tags" in body:
            disk.tags = self._tags(body)
        disk.provisioning = "Updating"

        def done(_: Operation) -> None:
            disk.provisioning = "Succeeded"

        op = self.start_op(f"{kind}.update", disk.id, "disk_update", will_fail, done,
                           self._failed_provisioning(disk), location=disk.location)
        return Reply(202, disk.to_arm(self), op)

    def delete_disk(self, sub: str, rg: str, name: str, kind: str, will_fail: bool) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, COMPUTE, kind, name)
        disk = self.disks.get(rid.lower())
        if disk is None:
            return Reply(204, None)
        if disk.managed_by:
            raise ArmError(409, "OperationNotAllowed",
                           f"Disk {disk.name} is attached to VM {disk.managed_by}.")
        if disk.provisioning == "Creating":
            raise ArmError(409, "OperationNotAllowed", f"Disk {disk.name} is being created; delete it afterwards.")
        disk.provisioning = "Deleting"

        def done(_: Operation) -> None:
            self._remove_disk(disk)

        op = self.start_op(f"{kind}.delete", rid, "disk_delete" if kind == "disks" else "snapshot_delete",
                           will_fail, done, self._failed_provisioning(disk), location=disk.location)
        return Reply(202, None, op)

    def _remove_disk(self, disk: Disk) -> None:
        self.disks.pop(disk.id.lower(), None)
        self.deleted.append(disk.id)
        if disk.path is not None:
            disk.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ network

    def put_nic(self, sub: str, rg: str, name: str, body: dict[str, Any], will_fail: bool) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, NETWORK, "networkInterfaces", name)
        tags = self._tags(body)
        existing = self.nics.get(rid.lower())
        if existing is not None:
            existing.tags = tags
            return Reply(200, existing.to_arm(), self.start_op("networkInterfaces.update", rid, "nic_create",
                                                               will_fail, provider=NETWORK,
                                                               location=existing.location))
        location = self._check_location(body, rid)
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        if not configs:
            raise ArmError(400, "InvalidRequestFormat", "A network interface needs at least one IP configuration.")
        cfg = (configs[0].get("properties") or {}) if isinstance(configs[0], dict) else {}
        if cfg.get("publicIPAddress"):
            raise ArmError(400, "PublicIPAddressNotAllowed",
                           "This local Azure does not hand out public IP addresses; use a private subnet only.")
        subnet_id = (cfg.get("subnet") or {}).get("id")
        if not isinstance(subnet_id, str):
            raise ArmError(400, "InvalidRequestFormat", "ipConfigurations[0].properties.subnet.id is required.")
        subnet = self.subnet_by_id(subnet_id)
        vnet = self.vnets[subnet_id.lower().split("/subnets/")[0]]
        if vnet.location != location:
            raise ArmError(400, "InvalidResourceReference",
                           f"Subnet {subnet.name} is in {vnet.location}; the interface is in {location}.")
        nic = Nic(rid, name, location, subnet.id, self.next_ip(subnet.prefix), tags, provisioning="Updating")
        self.nics[rid.lower()] = nic

        def done(_: Operation) -> None:
            nic.provisioning = "Succeeded"

        op = self.start_op("networkInterfaces.create", rid, "nic_create", will_fail, done,
                           self._failed_provisioning(nic), provider=NETWORK, location=location)
        return Reply(201, nic.to_arm(), op)

    def delete_nic(self, sub: str, rg: str, name: str, will_fail: bool) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, NETWORK, "networkInterfaces", name)
        nic = self.nics.get(rid.lower())
        if nic is None:
            return Reply(204, None)
        if nic.vm_id:
            raise ArmError(400, "NicInUse",
                           f"Network Interface {nic.id} is used by existing resource {nic.vm_id}. "
                           "In order to delete the network interface, it must be dissociated from the resource.")
        nic.provisioning = "Deleting"

        def done(_: Operation) -> None:
            self.nics.pop(rid.lower(), None)
            self.deleted.append(nic.id)

        op = self.start_op("networkInterfaces.delete", rid, "nic_delete", will_fail, done,
                           self._failed_provisioning(nic), provider=NETWORK, location=nic.location)
        return Reply(202, None, op)

    # ------------------------------------------------------------------ VMs

    def _attachable(self, disk: Disk, vm_id: str, location: str, zones: list[str], role: str) -> None:
        if disk.kind != "disks":
            raise ArmError(400, "InvalidParameter", f"{disk.id} is a snapshot; only disks can be attached.")
        if disk.managed_by and disk.managed_by.lower() != vm_id.lower():
            raise ArmError(409, "OperationNotAllowed",
                           f"Disk {disk.name} is already attached to VM {disk.managed_by}.")
        if disk.provisioning not in ("Succeeded",):
            raise ArmError(409, "OperationNotAllowed",
                           f"Disk {disk.name} cannot be used as {role} while it is {disk.provisioning}.")
        if disk.location != location:
            raise ArmError(400, "InvalidParameter",
                           f"Disk {disk.name} is in {disk.location}, the VM is in {location}.")
        if sorted(disk.zones) != sorted(zones) and (disk.zones or zones):
            raise ArmError(400, "BadRequest",
                           f"Disk {disk.name} is in zone(s) {disk.zones or 'none'}, the VM in {zones or 'none'}.")

    def _parse_data_disks(self, raw: Any, vm: Vm, location: str, zones: list[str]) -> list[DataDisk]:
        if not isinstance(raw, list):
            raise ArmError(400, "InvalidParameter", "storageProfile.dataDisks must be a list.")
        out: list[DataDisk] = []
        luns: set[int] = set()
        for entry in raw:
            if not isinstance(entry, dict) or entry.get("toBeDetached"):
                continue
            lun = entry.get("lun")
            if not isinstance(lun, int) or not 0 <= lun <= 63:
                raise ArmError(400, "InvalidParameter", f"Data disk lun must be an integer 0..63, got {lun!r}.")
            if lun in luns:
                raise ArmError(409, "Conflict", f"Two data disks use LUN {lun}.")
            luns.add(lun)
            option = str(entry.get("createOption", "Attach")).lower()
            disk_id = (entry.get("managedDisk") or {}).get("id")
            if option == "empty" and not disk_id:
                name = entry.get("name") or f"{vm.name}_DataDisk_{lun}"
                disk_id = arm_id(vm.subscription, vm.resource_group, COMPUTE, "disks", name)
                self.disks[disk_id.lower()] = Disk(id=disk_id, name=name, location=location, zones=list(zones),
                                                   size_gb=int(entry.get("diskSizeGB") or 32), os_type=None,
                                                   declared="placeholder")
            if not isinstance(disk_id, str):
                raise ArmError(400, "InvalidParameter", f"Data disk at LUN {lun} needs managedDisk.id.")
            disk = self.disk_by_id(disk_id, "Disk")
            self._attachable(disk, vm.id, location, zones, "a data disk")
            out.append(DataDisk(lun, disk.id, disk.name, str(entry.get("caching", "None")),
                                str(entry.get("deleteOption", "Detach"))))
        return out

    def put_vm(self, sub: str, rg: str, name: str, body: dict[str, Any], will_fail: bool,
               patch: bool = False) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, COMPUTE, "virtualMachines", name)
        existing = self.vms.get(rid.lower())
        if existing is not None:
            return self._update_vm(existing, body, will_fail, patch)
        if patch:
            raise not_found(f"{COMPUTE}/virtualMachines", name, g.name)
        return self._create_vm(sub, g, name, rid, body, will_fail)

    def _create_vm(self, sub: str, g: ResourceGroup, name: str, rid: str, body: dict[str, Any],
                   will_fail: bool) -> Reply:
        location = self._check_location(body, rid)
        props = body.get("properties") or {}
        zones = list(body.get("zones") or [])
        storage = props.get("storageProfile") or {}
        os_disk = storage.get("osDisk") or {}
        vm = Vm(id=rid, name=name, subscription=sub, resource_group=g.name, location=location,
                vm_size=(props.get("hardwareProfile") or {}).get("vmSize", "Standard_D2s_v5"),
                zones=zones, tags=self._tags(body), power="starting", provisioning="Creating",
                agent_ready=False, monitored=False, rescue=True)
        vm.os_type = os_disk.get("osType") or "Linux"
        vm.computer_name = (props.get("osProfile") or {}).get("computerName") or name
        vm.admin_username = (props.get("osProfile") or {}).get("adminUsername") or "azureuser"
        vm.boot_diagnostics = bool(((props.get("diagnosticsProfile") or {}).get("bootDiagnostics") or {})
                                   .get("enabled", True))
        option = str(os_disk.get("createOption", "FromImage")).lower()
        vm.os_disk_delete_option = str(os_disk.get("deleteOption", "Detach"))
        new_disks: list[Disk] = []
        if option == "attach":
            disk_id = (os_disk.get("managedDisk") or {}).get("id")
            if not isinstance(disk_id, str):
                raise ArmError(400, "InvalidParameter", "osDisk.managedDisk.id is required with createOption Attach.")
            disk = self.disk_by_id(disk_id, "Disk")
            self._attachable(disk, rid, location, zones, "the OS disk")
            vm.os_disk_id, vm.os_disk_name, vm.os_disk_create_option = disk.id, disk.name, "Attach"
            vm.os_type = disk.os_type or vm.os_type
        elif option == "fromimage":
            image = storage.get("imageReference")
            if not isinstance(image, dict) or not image:
                raise ArmError(400, "InvalidParameter", "storageProfile.imageReference is required with FromImage.")
            vm.image_reference = {k: v for k, v in image.items() if k != "exactVersion"}
            disk_name = os_disk.get("name") or f"{name}_OsDisk_1_{uuid.uuid4().hex}"
            disk_id = arm_id(sub, g.name, COMPUTE, "disks", disk_name)
            if disk_id.lower() in self.disks:
                raise ArmError(409, "Conflict", f"Disk {disk_name} already exists.")
            sku = (os_disk.get("managedDisk") or {}).get("storageAccountType", "Premium_LRS")
            disk = Disk(id=disk_id, name=disk_name, location=location, zones=zones, sku=sku,
                        size_gb=int(os_disk.get("diskSizeGB") or 30), os_type=vm.os_type,
                        creation_data={"createOption": "FromImage", "imageReference": {"id": str(image.get("id") or
                                       f"/Subscriptions/{sub}/Providers/Microsoft.Compute/Locations/{location}"
                                       f"/Publishers/{image.get('publisher')}/ArtifactTypes/VMImage/Offers/"
                                       f"{image.get('offer')}/Skus/{image.get('sku')}/Versions/latest")}},
                        declared="healthy")
            new_disks.append(disk)
            vm.os_disk_id, vm.os_disk_name = disk.id, disk.name
        else:
            raise ArmError(400, "InvalidParameter", f"osDisk.createOption {os_disk.get('createOption')!r} is not "
                           "supported (use FromImage or Attach).")
        for d in new_disks:
            self.disks[d.id.lower()] = d
        try:
            vm.data_disks = self._parse_data_disks(storage.get("dataDisks") or [], vm, location, zones)
            nic_entries = (props.get("networkProfile") or {}).get("networkInterfaces") or []
            if not nic_entries:
                raise ArmError(400, "InvalidParameter", "networkProfile.networkInterfaces needs at least one NIC.")
            for entry in nic_entries:
                nic_id = entry.get("id") if isinstance(entry, dict) else None
                nic = self.nics.get(str(nic_id).lower())
                if nic is None:
                    raise ArmError(400, "InvalidResourceReference",
                                   f"Resource {nic_id} referenced by resource {rid} was not found.")
                if nic.vm_id and nic.vm_id.lower() != rid.lower():
                    raise ArmError(400, "NicInUse", f"Network interface {nic.id} is in use by VM {nic.vm_id}.")
                if nic.location != location:
                    raise ArmError(400, "InvalidParameter",
                                   f"NIC {nic.name} is in {nic.location}, the VM in {location}.")
                vm.nic_ids.append(nic.id)
                vm.nic_delete_options[nic.id] = str((entry.get("properties") or {}).get("deleteOption", "Detach"))
        except ArmError:
            for d in new_disks:
                self.disks.pop(d.id.lower(), None)
            raise
        for nic_id in vm.nic_ids:
            self.nics[nic_id.lower()].vm_id = rid
        if vm.os_disk_id:
            self.disks[vm.os_disk_id.lower()].managed_by = rid
        for dd in vm.data_disks:
            self.disks[dd.disk_id.lower()].managed_by = rid
        self.vms[rid.lower()] = vm
        worker = self._begin_boot(vm)

        def done(_: Operation) -> None:
            vm.provisioning = "Succeeded"
            self._complete_boot(vm)

        def failed(_: Operation) -> None:
            vm.provisioning = "Failed"
            vm.power = "stopped"
            vm.booting = False

        op = self.start_op("virtualMachines.create", rid, "vm_create", will_fail, done, failed, worker,
                           location=location)
        vm.busy = op.id
        return Reply(201, vm.to_arm(self), op)

    def _update_vm(self, vm: Vm, body: dict[str, Any], will_fail: bool, patch: bool) -> Reply:
        if vm.busy and self.ops[vm.busy].status == "InProgress":
            raise ArmError(409, "OperationNotAllowed",
                           f"Operation '{self.ops[vm.busy].name}' is in progress on VM {vm.name}; retry after it ends.")
        if vm.provisioning == "Deleting":
            raise ArmError(409, "OperationNotAllowed", f"VM {vm.name} is being deleted.")
        props = body.get("properties") or {}
        storage = props.get("storageProfile") or {}
        new_tags = self._tags(body) if ("tags" in body or not patch) else vm.tags
        os_disk = storage.get("osDisk") or {}
        new_os_id = (os_disk.get("managedDisk") or {}).get("id")
        swap: Disk | None = None
        if isinstance(new_os_id, str) and (vm.os_disk_id is None or new_os_id.lower() != vm.os_disk_id.lower()):
            if vm.os_disk_id is None:
                raise ArmError(400, "OperationNotAllowed",
                               "A VM with an unmanaged OS disk cannot swap to a managed disk.")
            if vm.power != "deallocated":
                raise ArmError(409, "OperationNotAllowed",
                               f"The OS disk of VM '{vm.name}' can be swapped only while the VM is deallocated "
                               f"(it is {vm.power}). Deallocate the VM first.")
            swap = self.disk_by_id(new_os_id, "Disk")
            if swap.managed_by:
                raise ArmError(409, "OperationNotAllowed",
                               f"Disk {swap.name} is already attached to VM {swap.managed_by}.")
            self._attachable(swap, vm.id, vm.location, vm.zones, "the OS disk")
            if swap.os_type and swap.os_type != vm.os_type:
                raise ArmError(400, "InvalidParameter",
                               f"Disk {swap.name} has OS type {swap.os_type}; the VM runs {vm.os_type}.")
        new_data: list[DataDisk] | None = None
        if "dataDisks" in storage:
            new_data = self._parse_data_disks(storage["dataDisks"], vm, vm.location, vm.zones)
        # Apply at once (ARM reports the new model immediately, with provisioningState Updating).
        vm.tags = new_tags
        if swap is not None:
            old = self.disks.get(vm.os_disk_id.lower()) if vm.os_disk_id else None
            if old is not None:
                old.managed_by = None
            swap.managed_by = vm.id
            vm.os_disk_id, vm.os_disk_name, vm.os_disk_create_option = swap.id, swap.name, "Attach"
        if new_data is not None:
            keep = {d.disk_id.lower() for d in new_data}
            for dd in vm.data_disks:
                if dd.disk_id.lower() not in keep:
                    d = self.disks.get(dd.disk_id.lower())
                    if d is not None:
                        d.managed_by = None
            for dd in new_data:
                self.disks[dd.disk_id.lower()].managed_by = vm.id
            vm.data_disks = new_data
        vm.provisioning = "Updating"

        def done(_: Operation) -> None:
            vm.provisioning = "Succeeded"

        op = self.start_op("virtualMachines.update", vm.id, "vm_os_disk_swap" if swap else "vm_update", will_fail,
                           done, self._failed_provisioning(vm), location=vm.location)
        vm.busy = op.id
        return Reply(200, vm.to_arm(self), op)

    def _require_idle(self, vm: Vm, action: str) -> None:
        if vm.busy and self.ops[vm.busy].status == "InProgress":
            raise ArmError(409, "OperationNotAllowed",
                           f"Cannot {action} VM {vm.name}: operation '{self.ops[vm.busy].name}' is in progress.")
        if vm.provisioning == "Deleting":
            raise ArmError(409, "OperationNotAllowed", f"VM {vm.name} is being deleted.")

    def vm_power(self, sub: str, rg: str, name: str, action: str, will_fail: bool) -> Reply:
        """start / deallocate / powerOff / restart."""
        vm = self.vm(sub, rg, name)
        self._require_idle(vm, action)
        previous = vm.power
        if action == "start":
            if vm.power == "running":
                op = self.start_op("virtualMachines.start", vm.id, "read", will_fail, location=vm.location)
                return Reply(202, None, op)
            vm.power = "starting"
            worker = self._begin_boot(vm)

            def done(_: Operation) -> None:
                self._complete_boot(vm)

            def failed(_: Operation) -> None:
                vm.power = previous
                vm.booting = False

            op = self.start_op("virtualMachines.start", vm.id, "vm_start", will_fail, done, failed, worker,
                               location=vm.location)
        elif action in ("deallocate", "powerOff"):
            target = "deallocated" if action == "deallocate" else "stopped"
            if vm.power == target:
                return Reply(202, None, self.start_op(f"virtualMachines.{action}", vm.id, "read", will_fail,
                                                      location=vm.location))
            vm.power = "deallocating" if action == "deallocate" else "stopping"
            self._guest_stops(vm)

            def done(_: Operation) -> None:
                vm.power = target

            def failed(_: Operation) -> None:
                vm.power = previous

            op = self.start_op(f"virtualMachines.{action}", vm.id,
                               "vm_deallocate" if action == "deallocate" else "vm_power_off", will_fail, done, failed,
                               location=vm.location)
        elif action == "restart":
            if vm.power != "running":
                raise ArmError(409, "OperationNotAllowed", f"Cannot restart VM {vm.name} while it is {vm.power}.")
            self._guest_stops(vm)
            vm.power = "starting"
            worker = self._begin_boot(vm)

            def done(_: Operation) -> None:
                self._complete_boot(vm)

            op = self.start_op("virtualMachines.restart", vm.id, "vm_start", will_fail, done, None, worker,
                               location=vm.location)
        else:
            raise ArmError(400, "InvalidParameter", f"unknown action {action}")
        vm.busy = op.id
        return Reply(202, None, op)

    def _guest_stops(self, vm: Vm) -> None:
        vm.agent_ready = False
        vm.booting = False
        if vm.heartbeat_at is None:
            vm.heartbeat_at = time.time()

    def _begin_boot(self, vm: Vm) -> threading.Event:
        """Work out what the boot will print (reading the disk), in the background."""
        vm.booting = True
        vm.agent_ready = False
        if vm.heartbeat_at is None:
            vm.heartbeat_at = time.time()
        ready = threading.Event()
        disk = self.disks.get(vm.os_disk_id.lower()) if vm.os_disk_id else None
        path = disk.path if disk else None
        declared = disk.declared if disk else vm.declared
        if disk is not None and disk.ade:
            path = None  # an encrypted disk cannot be read; its declared state stands in
        hostname = vm.computer_name or vm.name
        if self.boot_runner is not None and path is not None and vm.os_type == "Linux":
            vm.last_outcome = None
            ready.set()
            return ready
        result: dict[str, bootmodel.Transcript] = {}

        def work() -> None:
            try:
                if vm.os_type == "Windows":
                    result["t"] = bootmodel.windows_transcript()
                else:
                    result["t"] = bootmodel.boot_disk(
                        path, declared if declared != "placeholder" else "healthy", hostname, self.disk_reader,
                        on_unreadable=lambda exc: log.warning("cannot read %s: %s", path, exc))
            finally:
                self._boots[vm.id] = result.get("t")
                ready.set()

        threading.Thread(target=work, name=f"boot-{vm.name}", daemon=True).start()
        return ready

    def _complete_boot(self, vm: Vm) -> None:
        """The VM runs: append the boot to its serial log and set agent and heartbeat by the outcome."""
        vm.power = "running"
        disk = self.disks.get(vm.os_disk_id.lower()) if vm.os_disk_id else None
        if self.boot_runner is not None and disk is not None and disk.path is not None and not disk.ade \
                and vm.os_type == "Linux":
            self.boot_runner(self, vm, disk.path)
            return
        t = self._boots.pop(vm.id, None)
        if t is None:
            t = bootmodel.Transcript("\nBoot failed: the OS disk could not be read.\n", bootmodel.Outcome.NO_OS)
        self.record_boot(vm, t.text, t.outcome)

    def record_boot(self, vm: Vm, text: str, outcome: bootmodel.Outcome) -> None:
        """Append one boot's serial output and derive agent and heartbeat from how it ended."""
        vm.append_serial(text)
        vm.last_outcome = outcome.value
        vm.booting = False
        if outcome.guest_runs:
            vm.agent_ready = True
            vm.heartbeat_at = None
        else:
            vm.agent_ready = False
            if vm.heartbeat_at is None:
                vm.heartbeat_at = time.time()

    def delete_vm(self, sub: str, rg: str, name: str, will_fail: bool) -> Reply:
        g = self.group(sub, rg)
        rid = arm_id(sub, g.name, COMPUTE, "virtualMachines", name)
        vm = self.vms.get(rid.lower())
        if vm is None:
            return Reply(204, None)
        if vm.provisioning == "Deleting":
            return Reply(202, None, self.ops[vm.busy] if vm.busy else None)
        vm.provisioning = "Deleting"
        self._guest_stops(vm)
        vm.power = "deallocating"

        def done(_: Operation) -> None:
            self.vms.pop(rid.lower(), None)
            self.deleted.append(vm.id)
            for disk_id, option in [(vm.os_disk_id, vm.os_disk_delete_option),
                                    *[(d.disk_id, d.delete_option) for d in vm.data_disks]]:
                d = self.disks.get(disk_id.lower()) if disk_id else None
                if d is None:
                    continue
                d.managed_by = None
                if option.lower() == "delete":
                    self._remove_disk(d)
            for nic_id in vm.nic_ids:
                n = self.nics.get(nic_id.lower())
                if n is None:
                    continue
                n.vm_id = None
                if vm.nic_delete_options.get(nic_id, "Detach").lower() == "delete":
                    self.nics.pop(nic_id.lower(), None)
                    self.deleted.append(n.id)
            for key in [k for k, rc in self.run_commands.items() if rc.vm_id.lower() == rid.lower()]:
                self.run_commands.pop(key)

        op = self.start_op("virtualMachines.delete", rid, "vm_delete", will_fail, done,
                           self._failed_provisioning(vm), location=vm.location)
        vm.busy = op.id
        return Reply(202, None, op)

    # ------------------------------------------------------------------ run command

    def _data_disk_paths(self, vm: Vm) -> list[tuple[int, Path]]:
        out = []
        for dd in vm.data_disks:
            d = self.disks.get(dd.disk_id.lower())
            if d is not None and d.path is not None and not d.ade:
                out.append((dd.lun, d.path))
        return out

    def _start_script(self, vm: Vm, script: str, params: dict[str, str], timeout: float) -> ScriptRun:
        if vm.power != "running":
            raise ArmError(409, "OperationNotAllowed",
                           f"Cannot run a command on VM {vm.name} while it is {vm.power}; start it first.")
        if not vm.agent_ready:
            raise ArmError(409, "VMAgentStatusCommunicationError",
                           f"VM '{vm.name}' has not reported status for VM agent or extensions. "
                           "Verify that the OS is up and healthy.")
        if vm.run_command_busy:
            raise ArmError(409, "Conflict", "Run command extension execution is in progress. "
                           "Please wait for completion before invoking a run command.")
        run = ScriptRun(script, params, timeout, self.now() + self.latency.seconds("run_command"))
        disks = self._data_disk_paths(vm)
        runner = self.script_runner
        vm.run_command_busy = True

        def work() -> None:
            try:
                delay = run.start_after - self.now()
                if delay > 0:
                    time.sleep(delay)
                run.started = self.now()
                if runner is None:
                    run.exit_code, run.stderr = 1, "run command execution is not available on this server\n"
                else:
                    runner(run, disks)
            except Exception as exc:  # noqa: BLE001 - any failure becomes the script's error output
                run.exit_code = 1
                run.stderr += f"run command failed to execute: {exc}\n"
            finally:
                run.ended = self.now()
                vm.run_command_busy = False
                run.done.set()

        threading.Thread(target=work, name=f"runcommand-{vm.name}", daemon=True).start()
        return run

    @staticmethod
    def _parse_params(raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, list):
            raise ArmError(400, "InvalidParameter", "parameters must be a list of {name, value}.")
        out: dict[str, str] = {}
        for p in raw:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise ArmError(400, "InvalidParameter", "each parameter needs a string name.")
            name = p["name"]
            if not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise ArmError(400, "InvalidParameter", f"parameter name {name!r} is not a valid variable name.")
            out[name] = str(p.get("value", ""))
        return out

    def run_command(self, sub: str, rg: str, name: str, body: dict[str, Any], will_fail: bool) -> Reply:
        vm = self.vm(sub, rg, name)
        if str(body.get("commandId", "")) != "RunShellScript":
            raise ArmError(400, "InvalidParameter",
                           f"commandId {body.get('commandId')!r} is not supported here (use RunShellScript).")
        if vm.os_type != "Linux":
            raise ArmError(409, "OperationNotAllowed", "RunShellScript needs a Linux VM.")
        script_lines = body.get("script") or []
        if not isinstance(script_lines, list) or not all(isinstance(s, str) for s in script_lines):
            raise ArmError(400, "InvalidParameter", "script must be a list of strings.")
        run = self._start_script(vm, "\n".join(script_lines) + "\n", self._parse_params(body.get("parameters")),
                                 5400.0)

        def done(op: Operation) -> None:
            if run.exit_code == 0:
                code, msg = "ProvisioningState/succeeded", "Enable succeeded: "
            else:
                code = "ProvisioningState/failed"
                msg = f"Enable failed: failed to execute command: command terminated with exit status={run.exit_code}"
            message = f"{msg}\n[stdout]\n{tail(run.stdout)}\n[stderr]\n{tail(run.stderr)}"
            op.result = {"value": [{"code": code, "level": "Info" if run.exit_code == 0 else "Error",
                                    "displayStatus": "Provisioning succeeded" if run.exit_code == 0
                                    else "Provisioning failed", "message": message}]}

        op = self.start_op("virtualMachines.runCommand", vm.id, "read", will_fail, done, worker=run.done,
                           location=vm.location)
        return Reply(202, None, op)

    def put_run_command(self, sub: str, rg: str, name: str, cmd_name: str, body: dict[str, Any],
                        will_fail: bool) -> Reply:
        vm = self.vm(sub, rg, name)
        rid = f"{vm.id}/runCommands/{cmd_name}"
        existing = self.run_commands.get(rid.lower())
        if existing is not None and not existing.run.done.is_set():
            raise ArmError(409, "Conflict", f"Run command {cmd_name} is still executing.")
        props = body.get("properties") or {}
        source = props.get("source") or {}
        script = source.get("script")
        if not isinstance(script, str) or not script.strip():
            raise ArmError(400, "InvalidParameter", "properties.source.script is required (commandId and scriptUri "
                           "are not supported here).")
        params = self._parse_params(props.get("parameters"))
        params.update(self._parse_params(props.get("protectedParameters")))
        timeout = props.get("timeoutInSeconds") or 5400
        if not isinstance(timeout, int) or timeout < 0:
            raise ArmError(400, "InvalidParameter", "timeoutInSeconds must be a non-negative integer.")
        run = self._start_script(vm, script, params, float(timeout or 5400))
        rc = RunCommand(rid, cmd_name, vm.id, vm.location, self._tags(body), {"script": script},
                        list(props.get("parameters") or []), bool(props.get("asyncExecution", False)), timeout, run)
        self.run_commands[rid.lower()] = rc

        def done(_: Operation) -> None:
            rc.provisioning = "Succeeded"

        op = self.start_op("runCommands.createOrUpdate", rid, "read", will_fail, done,
                           lambda _: setattr(rc, "provisioning", "Failed"),
                           worker=None if rc.async_execution else run.done, location=vm.location)
        if rc.async_execution:
            op.ready_at = run.start_after
        return Reply(201 if existing is None else 200, rc.to_arm(False), op)

    def get_run_command(self, sub: str, rg: str, name: str, cmd_name: str) -> RunCommand:
        vm = self.vm(sub, rg, name)
        rc = self.run_commands.get(f"{vm.id}/runCommands/{cmd_name}".lower())
        if rc is None:
            raise not_found(f"{COMPUTE}/virtualMachines/{vm.name}/runCommands", cmd_name, vm.resource_group)
        return rc

    def delete_run_command(self, sub: str, rg: str, name: str, cmd_name: str, will_fail: bool) -> Reply:
        vm = self.vm(sub, rg, name)
        rid = f"{vm.id}/runCommands/{cmd_name}"
        if rid.lower() not in self.run_commands:
            return Reply(204, None)

        def done(_: Operation) -> None:
            self.run_commands.pop(rid.lower(), None)

        return Reply(202, None, self.start_op("runCommands.delete", rid, "read", will_fail, done,
                                              location=vm.location))

    # ------------------------------------------------------------------ heartbeats

    def stale_heartbeats(self, older_than_seconds: float) -> list[tuple[str, float]]:
        """(resource id, last heartbeat) of monitored VMs silent for longer than the (scaled) window."""
        limit = time.time() - self.latency.scaled(older_than_seconds)
        out = []
        for vm in self.vms.values():
            if vm.monitored and vm.heartbeat_at is not None and vm.heartbeat_at < limit:
                out.append((vm.id, vm.heartbeat_at))
        return sorted(out)

    # ------------------------------------------------------------------ snapshot of everything

    def dump(self) -> dict[str, Any]:
        return {
            "subscriptions": [s.to_arm() for s in self.subscriptions.values()],
            "resourceGroups": [g.to_arm() for g in self.groups.values()],
            "virtualMachines": [
                {**v.to_arm(self, instance_view=True),
                 "localazure": {"preexisting": v.preexisting, "rescue": v.rescue, "lastBootOutcome": v.last_outcome,
                                "heartbeat": "live" if v.heartbeat_at is None else iso(v.heartbeat_at),
                                "monitored": v.monitored, "serialBytes": len(v.serial)}}
                for v in self.vms.values()],
            "disks": [{**d.to_arm(self), "localazure": {"preexisting": d.preexisting, "declared": d.declared,
                                                        "image": str(d.path) if d.path else None}}
                      for d in self.disks.values()],
            "networkInterfaces": [{**n.to_arm(), "localazure": {"preexisting": n.preexisting}}
                                  for n in self.nics.values()],
            "virtualNetworks": [v.to_arm(self) for v in self.vnets.values()],
            "runCommands": [r.to_arm(True) for r in self.run_commands.values()],
            "operations": [{**o.to_arm(), "operation": o.name, "resourceId": o.resource_id}
                           for o in self.ops.values()],
            "deleted": list(self.deleted),
        }


def _copy_in_background(src: Path, dst: Path, done: threading.Event, disk: Disk) -> None:
    def work() -> None:
        try:
            try:
                from localazure import images

                images.copy_disk(src, dst)
            except ImportError:
                dst.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True, capture_output=True)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            log.error("copy of %s to %s failed: %s", src, dst, exc)
            disk.path = None
        finally:
            done.set()

    if not src.exists():
        disk.path = None
        done.set()
        return
    threading.Thread(target=work, name=f"copy-{dst.name}", daemon=True).start()
