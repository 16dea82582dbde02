"""ARM through the real SDK clients: VMs, disks, snapshots, network, tags, long-running operations."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.compute import models as cm
from azure.mgmt.network import models as nm

from localazure.testing import LocalAzureHandle, running
from tests.integration.conftest import SUBSCRIPTION, small_scenario

pytestmark = pytest.mark.localazure

RG = "rg-app"


def _get(az: LocalAzureHandle, path: str, **params: str) -> requests.Response:
    return requests.get(f"{az.endpoint}{path}", params={"api-version": "2022-12-01", **params},
                        headers={"Authorization": "Bearer anything"}, verify=az.ca_path, timeout=10)


def _nic(az: LocalAzureHandle, name: str, rg: str = RG, location: str = "eastus", tags: dict[str, str] | None = None
         ) -> Any:
    net = az.network_client()
    subnet = net.subnets.get(rg, "vnet-app" if rg == RG else "vnet-other", "default")
    return net.network_interfaces.begin_create_or_update(rg, name, nm.NetworkInterface(
        location=location, tags=tags or {},
        ip_configurations=[nm.NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=nm.Subnet(id=subnet.id))],
    )).result()


def _copy(az: LocalAzureHandle, source_id: str, name: str, zones: list[str] | None = None,
          tags: dict[str, str] | None = None) -> Any:
    body = cm.Disk(location="eastus", tags=tags or {}, zones=zones,
                   creation_data=cm.CreationData(create_option="Copy", source_resource_id=source_id))
    return az.compute_client().disks.begin_create_or_update(RG, name, body).result()


def _rescue_vm(az: LocalAzureHandle, name: str, data_disk_id: str | None, tags: dict[str, str] | None = None) -> Any:
    nic = _nic(az, f"{name}-nic", tags=tags)
    storage = cm.StorageProfile(
        image_reference=cm.ImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server",
                                          version="latest"),
        os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete",
                          managed_disk=cm.ManagedDiskParameters(storage_account_type="Standard_LRS")),
        data_disks=[] if data_disk_id is None else [
            cm.DataDisk(lun=0, create_option="Attach", managed_disk=cm.ManagedDiskParameters(id=data_disk_id))],
    )
    return az.compute_client().virtual_machines.begin_create_or_update(RG, name, cm.VirtualMachine(
        location="eastus", zones=["1"], tags=tags or {},
        hardware_profile=cm.HardwareProfile(vm_size="Standard_B2s"),
        storage_profile=storage,
        os_profile=cm.OSProfile(computer_name=name, admin_username="rescue",
                                linux_configuration=cm.LinuxConfiguration(disable_password_authentication=True)),
        network_profile=cm.NetworkProfile(network_interfaces=[
            cm.NetworkInterfaceReference(id=nic.id, delete_option="Delete")]),
        diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=True)),
    )).result()


# ---------------------------------------------------------------------------------------------- reads


def test_subscriptions_and_resource_groups_answer_in_arm_shape(local_azure: LocalAzureHandle) -> None:
    subs = _get(local_azure, "/subscriptions").json()["value"]
    assert [s["subscriptionId"] for s in subs] == [SUBSCRIPTION]
    assert subs[0]["state"] == "Enabled"
    rg = _get(local_azure, f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app").json()
    assert rg["id"] == f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app"
    missing = _get(local_azure, f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceGroupNotFound"


def test_get_vm_with_instance_view_shows_frozen_guest_agent_not_ready(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    vm = c.virtual_machines.get(RG, "app-frozen", expand="instanceView")
    assert vm.id == (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app/providers/Microsoft.Compute/"
                     "virtualMachines/app-frozen")
    assert vm.zones == ["1"]
    codes = [s.code for s in vm.instance_view.statuses]
    assert "PowerState/running" in codes
    assert vm.instance_view.vm_agent.statuses[0].display_status == "Not Ready"
    ok = c.virtual_machines.instance_view(RG, "app-ok")
    assert ok.vm_agent.statuses[0].code == "ProvisioningState/succeeded"
    assert ok.vm_agent.statuses[0].display_status == "Ready"
    off = c.virtual_machines.instance_view(RG, "app-off")
    assert "PowerState/deallocated" in [s.code for s in off.statuses]


def test_unsupported_vms_are_visible_as_such(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    enc = c.virtual_machines.get(RG, "app-encrypted")
    assert enc.storage_profile.os_disk.encryption_settings.enabled is True
    disk = c.disks.get(RG, enc.storage_profile.os_disk.name)
    assert disk.encryption_settings_collection.enabled is True
    vhd = c.virtual_machines.get(RG, "app-vhd")
    assert vhd.storage_profile.os_disk.managed_disk is None
    assert vhd.storage_profile.os_disk.vhd.uri.endswith("/app-vhd.vhd")
    win = c.virtual_machines.get(RG, "app-win")
    assert win.storage_profile.os_disk.os_type == "Windows"


def test_list_and_list_all_page_through_next_links() -> None:
    scenario = small_scenario()
    vms = scenario["subscriptions"][0]["resource_groups"][0]["vms"]
    vms.extend({"name": f"extra-{i:02d}"} for i in range(25))
    with running(scenario, time_scale=0.001, page_size=7) as az:
        c = az.compute_client()
        names = [v.name for v in c.virtual_machines.list_all()]
        assert len(names) == 8 + 25 + 1 and len(set(names)) == len(names)
        assert len([v for v in c.virtual_machines.list(RG)]) == 33
        pages = [r for r in az.requests if r.operation == "virtualMachines.listAll"]
        assert len(pages) == 5  # 34 VMs in pages of 7
        statuses = list(c.virtual_machines.list_all(status_only="true"))
        frozen = next(v for v in statuses if v.name == "app-frozen")
        assert frozen.instance_view.vm_agent.statuses[0].display_status == "Not Ready"


def test_missing_resources_raise_resource_not_found(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    with pytest.raises(ResourceNotFoundError) as exc:
        c.virtual_machines.get(RG, "nope")
    assert exc.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        c.disks.get(RG, "nope")
    with pytest.raises(ResourceNotFoundError):
        local_azure.network_client().network_interfaces.get(RG, "nope")
    with pytest.raises(ResourceNotFoundError):
        c.virtual_machines.get("rg-missing", "app-ok")


# ---------------------------------------------------------------------------------------------- disks


def test_copy_disk_and_snapshot_and_delete_rules(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    src = c.disks.get(RG, c.virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.name)
    assert src.disk_state == "Attached" and src.managed_by.endswith("/app-frozen")
    copy = _copy(local_azure, src.id, "frozen-copy", zones=["1"], tags={"incident": "inc-1"})
    assert copy.provisioning_state == "Succeeded"
    assert copy.disk_state == "Unattached" and copy.managed_by is None
    assert copy.creation_data.source_resource_id == src.id
    assert copy.os_type == "Linux" and copy.hyper_v_generation == "V2" and copy.zones == ["1"]
    snap = c.snapshots.begin_create_or_update(RG, "frozen-snap", cm.Snapshot(
        location="eastus", creation_data=cm.CreationData(create_option="Copy", source_resource_id=src.id))).result()
    assert snap.provisioning_state == "Succeeded"
    from_snap = _copy(local_azure, snap.id, "from-snap")
    assert from_snap.creation_data.source_resource_id == snap.id
    updated = c.disks.begin_update(RG, "frozen-copy", cm.DiskUpdate(tags={"incident": "inc-1", "stage": "copied"})
                                   ).result()
    assert updated.tags == {"incident": "inc-1", "stage": "copied"}
    with pytest.raises(ResourceExistsError) as exc:
        c.disks.begin_delete(RG, src.name).result()
    assert exc.value.status_code == 409
    c.snapshots.begin_delete(RG, "frozen-snap").result()
    c.disks.begin_delete(RG, "from-snap").result()
    with pytest.raises(ResourceNotFoundError):
        c.snapshots.get(RG, "frozen-snap")
    names = {d.name for d in c.disks.list_by_resource_group(RG)}
    assert "frozen-copy" in names and "from-snap" not in names
    assert {d.name for d in c.disks.list()} >= names
    with pytest.raises(ResourceNotFoundError):
        _copy(local_azure, src.id.replace("app-frozen", "ghost") + "x", "ghost-copy")


def test_operations_advance_with_time_without_polling() -> None:
    with running(small_scenario(), time_scale=0.01) as az:  # a disk copy takes 0.6 s here
        c = az.compute_client()
        src = c.virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.managed_disk.id
        c.disks.begin_create_or_update(RG, "slow-copy", cm.Disk(
            location="eastus", zones=["1"],
            creation_data=cm.CreationData(create_option="Copy", source_resource_id=src)), polling=False)
        assert c.disks.get(RG, "slow-copy").provisioning_state == "Creating"
        time.sleep(0.7)
        assert c.disks.get(RG, "slow-copy").provisioning_state == "Succeeded"
        ops = [r for r in az.requests if r.operation == "operations.get"]
        assert ops == []  # nobody polled: the state moved with time


# ---------------------------------------------------------------------------------------------- VMs


def test_rescue_vm_lifecycle_attach_detach_and_delete_keeps_source_disks(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    net = local_azure.network_client()
    src = c.virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.managed_disk.id
    copy = _copy(local_azure, src, "frozen-copy", zones=["1"])
    tags = {"selinux-remediator/incident": "inc-42"}
    rescue = _rescue_vm(local_azure, "rescue-1", copy.id, tags=tags)
    assert rescue.provisioning_state == "Succeeded"
    assert rescue.storage_profile.data_disks[0].managed_disk.id == copy.id
    assert rescue.storage_profile.data_disks[0].lun == 0
    assert c.disks.get(RG, "frozen-copy").disk_state == "Attached"
    view = c.virtual_machines.instance_view(RG, "rescue-1")
    assert view.vm_agent.statuses[0].display_status == "Ready"
    # Detach via PATCH, then attach again via PUT of the fetched model.
    c.virtual_machines.begin_update(RG, "rescue-1", cm.VirtualMachineUpdate(
        storage_profile=cm.StorageProfile(data_disks=[]))).result()
    assert c.disks.get(RG, "frozen-copy").managed_by is None
    vm = c.virtual_machines.get(RG, "rescue-1")
    vm.storage_profile.data_disks = [cm.DataDisk(lun=3, create_option="Attach",
                                                 managed_disk=cm.ManagedDiskParameters(id=copy.id))]
    vm = c.virtual_machines.begin_create_or_update(RG, "rescue-1", vm).result()
    assert [d.lun for d in vm.storage_profile.data_disks] == [3]
    # A disk attached elsewhere cannot be attached again.
    with pytest.raises(ResourceExistsError):
        _rescue_vm(local_azure, "rescue-2", copy.id)
    # Listing by tag finds what the remediation created.
    found = _get(local_azure, f"/subscriptions/{SUBSCRIPTION}/resources",
                 **{"$filter": "tagName eq 'selinux-remediator/incident' and tagValue eq 'inc-42'"}).json()["value"]
    assert {r["type"] for r in found} == {"Microsoft.Compute/virtualMachines", "Microsoft.Network/networkInterfaces"}
    os_disk_name = vm.storage_profile.os_disk.name
    with pytest.raises(HttpResponseError) as exc:
        net.network_interfaces.begin_delete(RG, "rescue-1-nic").result()
    assert exc.value.error.code == "NicInUse"
    c.virtual_machines.begin_delete(RG, "rescue-1").result()
    with pytest.raises(ResourceNotFoundError):
        c.virtual_machines.get(RG, "rescue-1")
    # deleteOption Delete took the rescue VM's own OS disk and NIC; the attached copy stays, unattached.
    with pytest.raises(ResourceNotFoundError):
        c.disks.get(RG, os_disk_name)
    with pytest.raises(ResourceNotFoundError):
        net.network_interfaces.get(RG, "rescue-1-nic")
    assert c.disks.get(RG, "frozen-copy").disk_state == "Unattached"
    assert c.disks.get(RG, src.rsplit("/", 1)[1]).managed_by.endswith("/app-frozen")


def test_os_disk_swap_rules(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    vm = c.virtual_machines.get(RG, "app-frozen")
    original = vm.storage_profile.os_disk.managed_disk.id
    fixed = _copy(local_azure, original, "fixed", zones=["1"])
    vm.storage_profile.os_disk.managed_disk.id = fixed.id
    vm.storage_profile.os_disk.name = fixed.name
    with pytest.raises(ResourceExistsError) as exc:  # running: 409
        c.virtual_machines.begin_create_or_update(RG, "app-frozen", vm).result()
    assert exc.value.error.code == "OperationNotAllowed"
    c.virtual_machines.begin_deallocate(RG, "app-frozen").result()
    assert c.disks.get(RG, original.rsplit("/", 1)[1]).disk_state == "Reserved"
    wrong_zone = _copy(local_azure, original, "wrong-zone", zones=["2"])
    vm.storage_profile.os_disk.managed_disk.id = wrong_zone.id
    with pytest.raises(HttpResponseError) as bad:
        c.virtual_machines.begin_create_or_update(RG, "app-frozen", vm).result()
    assert bad.value.status_code == 400
    vm.storage_profile.os_disk.managed_disk.id = original.replace(original.rsplit("/", 1)[1], "missing")
    with pytest.raises(ResourceNotFoundError):
        c.virtual_machines.begin_create_or_update(RG, "app-frozen", vm).result()
    vm.storage_profile.os_disk.managed_disk.id = fixed.id
    swapped = c.virtual_machines.begin_create_or_update(RG, "app-frozen", vm).result()
    assert swapped.storage_profile.os_disk.managed_disk.id == fixed.id
    assert c.disks.get(RG, original.rsplit("/", 1)[1]).disk_state == "Unattached"
    c.virtual_machines.begin_start(RG, "app-frozen").result()
    assert "PowerState/running" in [s.code for s in c.virtual_machines.instance_view(RG, "app-frozen").statuses]


def test_power_operations_move_power_state(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    c.virtual_machines.begin_power_off(RG, "app-ok").result()
    assert "PowerState/stopped" in [s.code for s in c.virtual_machines.instance_view(RG, "app-ok").statuses]
    c.virtual_machines.begin_deallocate(RG, "app-ok").result()
    view = c.virtual_machines.instance_view(RG, "app-ok")
    assert "PowerState/deallocated" in [s.code for s in view.statuses]
    assert view.vm_agent.statuses[0].display_status == "Not Ready"
    c.virtual_machines.begin_start(RG, "app-ok").result()
    view = c.virtual_machines.instance_view(RG, "app-ok")
    assert "PowerState/running" in [s.code for s in view.statuses]
    assert view.vm_agent.statuses[0].display_status == "Ready"


def test_starting_shows_while_the_operation_runs() -> None:
    with running(small_scenario(), time_scale=0.02) as az:  # start takes 0.6 s
        c = az.compute_client()
        c.virtual_machines.begin_start(RG, "app-off", polling=False)
        codes = [s.code for s in c.virtual_machines.instance_view(RG, "app-off").statuses]
        assert "PowerState/starting" in codes
        with pytest.raises(ResourceExistsError):  # one operation at a time
            c.virtual_machines.begin_deallocate(RG, "app-off").result()
        az.wait_until(lambda s: s.vms[next(k for k in s.vms if k.endswith("/app-off"))].power == "running", 5)


def test_network_reads_and_nic_rules(local_azure: LocalAzureHandle) -> None:
    net = local_azure.network_client()
    vnet = net.virtual_networks.get(RG, "vnet-app")
    assert vnet.address_space.address_prefixes == ["10.1.0.0/16"]
    subnet = net.subnets.get(RG, "vnet-app", "default")
    assert subnet.address_prefix == "10.1.1.0/24"
    nic = _nic(local_azure, "spare-nic", tags={"a": "b"})
    assert nic.ip_configurations[0].private_ip_address.startswith("10.1.1.")
    assert nic.ip_configurations[0].subnet.id == subnet.id
    assert net.network_interfaces.get(RG, "spare-nic").tags == {"a": "b"}
    with pytest.raises(HttpResponseError) as exc:
        net.network_interfaces.begin_create_or_update(RG, "bad-nic", nm.NetworkInterface(
            location="eastus", ip_configurations=[
                nm.NetworkInterfaceIPConfiguration(name="c", subnet=nm.Subnet(id=subnet.id + "-missing"))])).result()
    assert exc.value.status_code == 400
    with pytest.raises(HttpResponseError):
        net.network_interfaces.begin_delete(RG, "app-ok-nic").result()
    net.network_interfaces.begin_delete(RG, "spare-nic").result()
    with pytest.raises(ResourceNotFoundError):
        net.network_interfaces.get(RG, "spare-nic")


def test_invalid_bodies_get_clear_400s(local_azure: LocalAzureHandle) -> None:
    resp = requests.put(
        f"{local_azure.endpoint}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/x",
        params={"api-version": "2024-03-02"}, data=b"{not json", verify=local_azure.ca_path, timeout=10,
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "InvalidRequestContent"
    c = local_azure.compute_client()
    with pytest.raises(HttpResponseError) as exc:
        c.disks.begin_create_or_update(RG, "no-location", cm.Disk(
            creation_data=cm.CreationData(create_option="Empty"), disk_size_gb=4)).result()
    assert exc.value.status_code == 400
    unknown = _get(local_azure, "/subscriptions/x/providers/Microsoft.Compute/somethingElse")
    assert unknown.status_code == 404


def test_state_and_request_log_endpoints(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    c.virtual_machines.get(RG, "app-ok")
    state = _get(local_azure, "/_localazure/state").json()
    assert {v["name"] for v in state["virtualMachines"]} >= {"app-ok", "app-frozen"}
    assert all(d["localazure"]["preexisting"] for d in state["disks"])
    log = _get(local_azure, "/_localazure/requests").json()["requests"]
    get = next(r for r in log if r["operation"] == "virtualMachines.get")
    assert get["resource_id"].endswith("/virtualMachines/app-ok") and get["status"] == 200 and not get["write"]


def test_patch_swaps_the_os_disk_and_restart_reboots(local_azure: LocalAzureHandle) -> None:
    c = local_azure.compute_client()
    c.virtual_machines.begin_restart(RG, "app-ok").result()
    log_key = next(k for k in local_azure.state.vms if k.endswith("/app-ok"))
    assert bytes(local_azure.state.vms[log_key].serial).count(b"app-ok login:") == 2
    original = c.virtual_machines.get(RG, "app-ok").storage_profile.os_disk.managed_disk.id
    spare = _copy(local_azure, original, "spare-os", zones=["1"])
    c.virtual_machines.begin_deallocate(RG, "app-ok").result()
    patched = c.virtual_machines.begin_update(RG, "app-ok", cm.VirtualMachineUpdate(
        storage_profile=cm.StorageProfile(os_disk=cm.OSDisk(
            create_option="Attach", managed_disk=cm.ManagedDiskParameters(id=spare.id))))).result()
    assert patched.storage_profile.os_disk.managed_disk.id == spare.id
    with pytest.raises(ResourceExistsError):
        c.virtual_machines.begin_restart(RG, "app-ok").result()  # not running


def test_concurrent_clients_see_a_consistent_server(local_azure: LocalAzureHandle) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> int:
        c = local_azure.compute_client()
        names = set()
        for _ in range(20):
            names.add(c.virtual_machines.get(RG, "app-ok" if i % 2 else "app-frozen").name)
        c.disks.begin_update(RG, c.virtual_machines.get(RG, "app-ok").storage_profile.os_disk.name,
                             cm.DiskUpdate(tags={"writer": str(i)})).result()
        return len(names)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(8))) == [1] * 8
    statuses = [r.status for r in local_azure.requests]
    assert statuses and all(s < 500 for s in statuses)
