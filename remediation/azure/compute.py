"""The Azure adapter: compute, network and boot-diagnostics calls behind the RepairCloud port.

The only place (with heartbeats.py and tables.py) that imports Azure SDKs. Management clients are
built on first use, per subscription, and reused. Bodies are plain ARM JSON (the SDK accepts
mappings), results are read by their REST names, and SDK exceptions become the product's few
domain errors: NotFoundError, ConflictError, TransientError, PermanentError.

Operations that take minutes are only *started* here (`polling=False`): the orchestrator polls the
resulting state through durable timers instead of blocking an activity.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from remediation.azure.retrying import with_retries
from remediation.model import (
    ConflictError,
    DiskInfo,
    NicInfo,
    NotFoundError,
    PermanentError,
    PowerState,
    RunCommandState,
    TransientError,
    VmInfo,
    VmRef,
)

RESCUE_ADMIN = "rescueadmin"
READ_ATTEMPTS = 3


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Map SDK exceptions onto domain errors, with a message that names the operation."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{what}: not found") from exc
    except ResourceExistsError as exc:
        raise ConflictError(f"{what}: {_message(exc)}") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientError(f"{what}: connection problem: {exc}") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status == 404:
            raise NotFoundError(f"{what}: not found") from exc
        if status == 409:
            raise ConflictError(f"{what}: {_message(exc)}") from exc
        # status < 400: a long-running operation whose final state was Failed ("retry later").
        if status in (408, 429) or status >= 500 or status < 400:
            raise TransientError(f"{what}: HTTP {status}: {_message(exc)}") from exc
        raise PermanentError(f"{what}: HTTP {status}: {_message(exc)}") from exc


def _message(exc: HttpResponseError) -> str:
    err = getattr(exc, "error", None)
    if err is not None and getattr(err, "message", None):
        return f"{getattr(err, 'code', '')}: {err.message}".strip(": ")
    return str(exc.message or exc).splitlines()[0][:300]


def parse_id(resource_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) of an ARM resource id."""
    parts = resource_id.strip("/").split("/")
    lower = [p.lower() for p in parts]
    try:
        sub = parts[lower.index("subscriptions") + 1]
        rg = parts[lower.index("resourcegroups") + 1]
    except (ValueError, IndexError) as exc:
        raise PermanentError(f"not an ARM resource id: {resource_id[:200]!r}") from exc
    return sub, rg, parts[-1]


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def vm_from_arm(body: dict[str, Any]) -> VmInfo:
    """A VmInfo from a VM's ARM JSON (with or without its instance view)."""
    props = body.get("properties") or {}
    storage = props.get("storageProfile") or {}
    os_disk = storage.get("osDisk") or {}
    view = props.get("instanceView") or {}
    power = PowerState.UNKNOWN
    for status in view.get("statuses") or []:
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            with contextlib.suppress(ValueError):
                power = PowerState(code.split("/", 1)[1].lower())
    agent_ready: bool | None = None
    if view:
        agent = view.get("vmAgent") or {}
        agent_ready = any(str(s.get("displayStatus", "")).lower() == "ready" for s in agent.get("statuses") or [])
    encrypted = bool(_get(os_disk, "encryptionSettings", "enabled", default=False))
    for ext in body.get("resources") or []:
        ext_type = str(_get(ext, "properties", "type", default="") or "")
        if ext_type.lower().startswith("azurediskencryption"):
            encrypted = True
    return VmInfo(
        ref=VmRef.parse(body["id"]),
        location=str(body.get("location", "")),
        vm_size=str(_get(props, "hardwareProfile", "vmSize", default="") or ""),
        os_type=str(os_disk.get("osType") or ""),
        os_disk_name=str(os_disk.get("name") or ""),
        os_disk_id=_get(os_disk, "managedDisk", "id"),
        zones=tuple(body.get("zones") or ()),
        tags=dict(body.get("tags") or {}),
        nic_ids=tuple(n["id"] for n in _get(props, "networkProfile", "networkInterfaces", default=[]) or []),
        power_state=power,
        agent_ready=agent_ready,
        encrypted=encrypted,
        provisioning_state=str(props.get("provisioningState") or "Succeeded"),
        data_disk_ids=tuple(
            str(_get(dd, "managedDisk", "id")) for dd in storage.get("dataDisks") or [] if _get(dd, "managedDisk", "id")
        ),
        hyper_v_generation=view.get("hyperVGeneration"),
    )


def disk_from_arm(body: dict[str, Any]) -> DiskInfo:
    props = body.get("properties") or {}
    return DiskInfo(
        id=body["id"],
        name=body["name"],
        location=str(body.get("location", "")),
        sku=_get(body, "sku", "name"),
        zones=tuple(body.get("zones") or ()),
        os_type=props.get("osType"),
        hyper_v_generation=props.get("hyperVGeneration"),
        size_gb=props.get("diskSizeGB"),
        provisioning_state=str(props.get("provisioningState") or "Succeeded"),
        disk_state=props.get("diskState"),
        managed_by=body.get("managedBy"),
        tags=dict(body.get("tags") or {}),
        encrypted=bool(_get(props, "encryptionSettingsCollection", "enabled", default=False)),
    )


def _ssh_public_key() -> str:
    """A throwaway public key: Azure requires one for a Linux VM; nobody ever logs in to the rescue VM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    data = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return data.decode()


class AzureCloud:
    """RepairCloud and VmReader over the Azure management SDKs and the boot-diagnostics blob."""

    def __init__(self, credential: TokenCredential, *, arm_endpoint: str | None = None,
                 ca_bundle: str | None = None, polling_interval: float = 1.0, read_backoff: float = 1.0) -> None:
        self._credential = credential
        self._arm = arm_endpoint.rstrip("/") if arm_endpoint else None
        self._verify: Any = ca_bundle or True
        self._polling_interval = polling_interval
        self._read_backoff = read_backoff
        self._lock = threading.Lock()
        self._compute: dict[str, Any] = {}
        self._network: dict[str, Any] = {}

    # ----------------------------------------------------------------- clients

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"connection_verify": self._verify, "polling_interval": self._polling_interval}
        if self._arm:
            kwargs["base_url"] = self._arm
        return kwargs

    def compute(self, subscription_id: str) -> Any:
        with self._lock:
            if subscription_id not in self._compute:
                from azure.mgmt.compute import ComputeManagementClient

                self._compute[subscription_id] = ComputeManagementClient(
                    self._credential, subscription_id, **self._client_kwargs())
            return self._compute[subscription_id]

    def network(self, subscription_id: str) -> Any:
        with self._lock:
            if subscription_id not in self._network:
                from azure.mgmt.network import NetworkManagementClient

                self._network[subscription_id] = NetworkManagementClient(
                    self._credential, subscription_id, **self._client_kwargs())
            return self._network[subscription_id]

    # ----------------------------------------------------------------- VMs

    def find_vm(self, vm: VmRef) -> VmInfo | None:
        try:
            return self.get_vm(vm)
        except NotFoundError:
            return None

    def get_vm(self, vm: VmRef) -> VmInfo:
        with translate_errors(f"read VM {vm}"):
            body = self.compute(vm.subscription_id).virtual_machines.get(
                vm.resource_group, vm.name, expand="instanceView").as_dict()
        return vm_from_arm(body)

    def list_vm_statuses(self, subscription_id: str) -> Iterable[VmInfo]:
        with translate_errors(f"list VMs of subscription {subscription_id}"):
            for item in self.compute(subscription_id).virtual_machines.list_all(status_only="true"):
                yield vm_from_arm(item.as_dict())

    def begin_deallocate(self, vm: VmRef) -> None:
        with translate_errors(f"deallocate VM {vm}"):
            self.compute(vm.subscription_id).virtual_machines.begin_deallocate(
                vm.resource_group, vm.name, polling=False)

    def begin_start(self, vm: VmRef) -> None:
        with translate_errors(f"start VM {vm}"):
            self.compute(vm.subscription_id).virtual_machines.begin_start(vm.resource_group, vm.name, polling=False)

    def begin_delete_vm(self, vm: VmRef) -> None:
        with translate_errors(f"delete VM {vm}"):
            self.compute(vm.subscription_id).virtual_machines.begin_delete(
                vm.resource_group, vm.name, polling=False)

    def _patch_vm(self, vm: VmRef, body: dict[str, Any], what: str) -> None:
        with translate_errors(f"{what} on VM {vm}"):
            self.compute(vm.subscription_id).virtual_machines.begin_update(
                vm.resource_group, vm.name, body, polling=False)

    def begin_set_data_disk(self, vm: VmRef, disk_id: str | None) -> None:
        disks = [] if disk_id is None else [{"lun": 0, "createOption": "Attach", "managedDisk": {"id": disk_id}}]
        self._patch_vm(vm, {"properties": {"storageProfile": {"dataDisks": disks}}},
                       "detach data disks" if disk_id is None else "attach the repair disk")

    def begin_swap_os_disk(self, vm: VmRef, disk_id: str, disk_name: str) -> None:
        body = {"properties": {"storageProfile": {"osDisk": {"managedDisk": {"id": disk_id}, "name": disk_name}}}}
        self._patch_vm(vm, body, "swap the OS disk")

    def begin_create_rescue_vm(self, vm: VmRef, *, location: str, zones: tuple[str, ...], size: str, image: str,
                               nic_id: str, os_disk_name: str, tags: dict[str, str]) -> None:
        parts = image.split(":")
        if len(parts) != 4:
            raise PermanentError(f"rescue image must be publisher:offer:sku:version, got {image!r}")
        publisher, offer, sku, version = parts
        body: dict[str, Any] = {
            "location": location,
            "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "storageProfile": {
                    "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
                    "osDisk": {"name": os_disk_name, "createOption": "FromImage", "deleteOption": "Delete",
                               "managedDisk": {"storageAccountType": "StandardSSD_LRS"}},
                },
                "osProfile": {
                    "computerName": vm.name,
                    "adminUsername": RESCUE_ADMIN,
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "ssh": {"publicKeys": [{"path": f"/home/{RESCUE_ADMIN}/.ssh/authorized_keys",
                                                "keyData": _ssh_public_key()}]},
                    },
                },
                "networkProfile": {"networkInterfaces": [{"id": nic_id,
                                                          "properties": {"primary": True, "deleteOption": "Delete"}}]},
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
            },
        }
        if zones:
            body["zones"] = list(zones)
        with translate_errors(f"create rescue VM {vm}"):
            self.compute(vm.subscription_id).virtual_machines.begin_create_or_update(
                vm.resource_group, vm.name, body, polling=False)

    # ----------------------------------------------------------------- disks

    def get_disk(self, disk_id: str) -> DiskInfo | None:
        sub, rg, name = parse_id(disk_id)
        try:
            with translate_errors(f"read disk {name}"):
                return disk_from_arm(self.compute(sub).disks.get(rg, name).as_dict())
        except NotFoundError:
            return None

    def begin_copy_disk(self, source: DiskInfo, subscription_id: str, resource_group: str, name: str,
                        tags: dict[str, str]) -> None:
        _, src_rg, src_name = parse_id(source.id)
        with translate_errors(f"read disk {src_name}"):
            src = self.compute(subscription_id).disks.get(src_rg, src_name).as_dict()
        props: dict[str, Any] = {"creationData": {"createOption": "Copy", "sourceResourceId": source.id}}
        for key in ("osType", "hyperVGeneration", "encryption", "securityProfile", "supportedCapabilities"):
            if _get(src, "properties", key) is not None:
                props[key] = src["properties"][key]
        body: dict[str, Any] = {"location": source.location, "tags": tags, "properties": props}
        if source.sku:
            body["sku"] = {"name": source.sku}
        if source.zones:
            body["zones"] = list(source.zones)
        with translate_errors(f"copy disk {src_name} to {name}"):
            self.compute(subscription_id).disks.begin_create_or_update(resource_group, name, body, polling=False)

    def update_disk_tags(self, disk_id: str, *, add: dict[str, str], remove: Collection[str] = ()) -> None:
        sub, rg, name = parse_id(disk_id)
        current = self.get_disk(disk_id)
        if current is None:
            raise NotFoundError(f"disk {name} not found")
        tags = {k: v for k, v in current.tags.items() if k not in remove} | add
        if tags == current.tags:
            return
        with translate_errors(f"tag disk {name}"):
            # Started, not awaited: the swap does not depend on it, and a tag is metadata only.
            self.compute(sub).disks.begin_update(rg, name, {"tags": tags}, polling=False)

    def begin_delete_disk(self, disk_id: str) -> None:
        sub, rg, name = parse_id(disk_id)
        with translate_errors(f"delete disk {name}"):
            self.compute(sub).disks.begin_delete(rg, name, polling=False)

    # ----------------------------------------------------------------- network

    def get_nic(self, nic_id: str) -> NicInfo | None:
        sub, rg, name = parse_id(nic_id)
        try:
            with translate_errors(f"read NIC {name}"):
                body = self.network(sub).network_interfaces.get(rg, name).as_dict()
        except NotFoundError:
            return None
        configs = _get(body, "properties", "ipConfigurations", default=[]) or []
        subnet = _get(configs[0], "properties", "subnet", "id") if configs else None
        return NicInfo(id=body["id"], name=body["name"], location=str(body.get("location", "")), subnet_id=subnet,
                       vm_id=_get(body, "properties", "virtualMachine", "id"), tags=dict(body.get("tags") or {}))

    def create_nic(self, subscription_id: str, resource_group: str, name: str, location: str, subnet_id: str,
                   tags: dict[str, str]) -> NicInfo:
        body = {
            "location": location,
            "tags": tags,
            "properties": {"ipConfigurations": [{
                "name": "ipconfig1",
                "properties": {"subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic"},
            }]},
        }
        with translate_errors(f"create NIC {name}"):
            self.network(subscription_id).network_interfaces.begin_create_or_update(
                resource_group, name, body).result()
        nic = self.get_nic(f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
                           f"/providers/Microsoft.Network/networkInterfaces/{name}")
        if nic is None:
            raise TransientError(f"NIC {name} not visible after creation")
        return nic

    def begin_delete_nic(self, nic_id: str) -> None:
        sub, rg, name = parse_id(nic_id)
        with translate_errors(f"delete NIC {name}"):
            self.network(sub).network_interfaces.begin_delete(rg, name, polling=False)

    # ----------------------------------------------------------------- run command

    def start_run_command(self, vm: VmRef, name: str, script: str, parameters: dict[str, str],
                          timeout_s: int) -> None:
        info = self.get_vm(vm)
        body = {
            "location": info.location,
            "properties": {
                "source": {"script": script},
                "parameters": [{"name": k, "value": v} for k, v in parameters.items()],
                "asyncExecution": False,
                "timeoutInSeconds": timeout_s,
                "treatFailureAsDeploymentFailure": False,
            },
        }
        with translate_errors(f"run command {name} on {vm}"):
            self.compute(vm.subscription_id).virtual_machine_run_commands.begin_create_or_update(
                vm.resource_group, vm.name, name, body, polling=False)

    def get_run_command(self, vm: VmRef, name: str) -> RunCommandState | None:
        try:
            with translate_errors(f"read run command {name} on {vm}"):
                body = self.compute(vm.subscription_id).virtual_machine_run_commands.get_by_virtual_machine(
                    vm.resource_group, vm.name, name, expand="instanceView").as_dict()
        except NotFoundError:
            return None
        view = _get(body, "properties", "instanceView", default={}) or {}
        return RunCommandState(
            execution_state=str(view.get("executionState") or "Unknown"),
            exit_code=view.get("exitCode"),
            output=str(view.get("output") or ""),
            error=str(view.get("error") or ""),
            provisioning_state=_get(body, "properties", "provisioningState"),
        )

    # ----------------------------------------------------------------- serial console

    def _serial_blob(self, vm: VmRef) -> Any:
        from azure.storage.blob import BlobClient

        with translate_errors(f"boot diagnostics of {vm}"):
            data = self.compute(vm.subscription_id).virtual_machines.retrieve_boot_diagnostics_data(
                vm.resource_group, vm.name, sas_uri_expiration_time_in_minutes=5).as_dict()
        url = data.get("serialConsoleLogBlobUri")
        if not url:
            raise PermanentError(f"boot diagnostics are off for {vm}: enable them to let the product read the "
                                 "serial console")
        # The storage SDK's default back-off starts at 15 s (jitter 3 s); a serial log is small and a
        # sweep has many to read: one quick retry here, and the whole read is retried by with_retries.
        return BlobClient.from_blob_url(url, connection_verify=self._verify, retry_total=1,
                                        initial_backoff=self._read_backoff, increment_base=2,
                                        random_jitter_range=self._read_backoff / 2)

    def serial_log_size(self, vm: VmRef) -> int:
        def read() -> int:
            blob = self._serial_blob(vm)
            try:
                with translate_errors(f"serial log of {vm}"):
                    return int(blob.get_blob_properties().size)
            except NotFoundError:
                return 0  # no boot has written to it yet

        # The SDKs retry throttling and server errors themselves, but not a connection dropped while a
        # POST (retrieveBootDiagnosticsData) was answered. The read has no side effect, and a VM missed
        # now would wait for the next sweep.
        return with_retries(read, what=f"serial log of {vm}", attempts=READ_ATTEMPTS, backoff=self._read_backoff)

    def read_serial_from(self, vm: VmRef, offset: int, max_bytes: int) -> bytes:
        def read() -> bytes:
            blob = self._serial_blob(vm)
            try:
                with translate_errors(f"serial log of {vm}"):
                    size = int(blob.get_blob_properties().size)
                    start = max(offset, size - max_bytes, 0)
                    if start >= size:
                        return b""
                    return bytes(blob.download_blob(offset=start, length=size - start).readall())
            except NotFoundError:
                return b""

        return with_retries(read, what=f"serial log of {vm}", attempts=READ_ATTEMPTS, backoff=self._read_backoff)

    def read_serial_tail(self, vm: VmRef, max_bytes: int) -> bytes:
        return self.read_serial_from(vm, 0, max_bytes)
