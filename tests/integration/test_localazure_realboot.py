"""Real boots: with real_boot on, a VM's serial log is the genuine console output of its OS disk under qemu."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.mgmt.compute import models as cm
from azure.mgmt.network import models as nm

from localazure import qemu
from localazure.testing import LocalAzureHandle, running
from tests.integration.conftest import small_scenario

pytestmark = [pytest.mark.localazure, pytest.mark.disk, pytest.mark.vm, pytest.mark.slow]

RG = "rg-app"
REPAIR_SCRIPT = Path(__file__).resolve().parents[2] / "remediation" / "scripts" / "repair_selinux.sh"


def _serial(az: LocalAzureHandle, vm: str) -> str:
    url = az.compute_client().virtual_machines.retrieve_boot_diagnostics_data(RG, vm)
    return str(az.blob_client(url.serial_console_log_blob_uri).download_blob().readall().decode(errors="replace"))


def _wait_for_boot(az: LocalAzureHandle, vm: str, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    key = next(k for k in az.state.vms if k.endswith(f"/{vm}"))
    while time.monotonic() < deadline:
        if not az.state.vms[key].booting:
            return str(az.state.vms[key].last_outcome)
        time.sleep(1)
    raise AssertionError(f"{vm} did not finish booting in {timeout} s")


@pytest.mark.skipif(qemu.unavailable_reason() is not None, reason=str(qemu.unavailable_reason()))
@pytest.mark.skipif(not REPAIR_SCRIPT.exists(), reason="the repair script is not in the tree yet")
def test_real_boot_freezes_then_boots_after_repair_and_swap(tmp_path: Path) -> None:
    scenario = small_scenario()
    scenario["subscriptions"][0]["resource_groups"][0]["vms"] = [
        {"name": "deb-frozen", "disk": "selinuxtype_disabled", "zones": ["1"]}]
    with running(scenario, time_scale=0.001, real_boot=True, state_dir=tmp_path) as az:
        c = az.compute_client()
        c.virtual_machines.begin_deallocate(RG, "deb-frozen").result()
        before = len(_serial(az, "deb-frozen"))
        c.virtual_machines.begin_start(RG, "deb-frozen").result()
        assert _wait_for_boot(az, "deb-frozen") == "selinux_freeze"
        first = _serial(az, "deb-frozen")[before:]
        assert "Failed to load SELinux policy" in first and "Freezing execution" in first
        assert c.virtual_machines.instance_view(RG, "deb-frozen").vm_agent.statuses[0].display_status == "Not Ready"
        # Repair a copy from a rescue VM, swap it in, boot again.
        src = c.virtual_machines.get(RG, "deb-frozen").storage_profile.os_disk.managed_disk.id
        copy = c.disks.begin_create_or_update(RG, "deb-copy", cm.Disk(
            location="eastus", zones=["1"],
            creation_data=cm.CreationData(create_option="Copy", source_resource_id=src))).result()
        net = az.network_client()
        subnet = net.subnets.get(RG, "vnet-app", "default")
        nic = net.network_interfaces.begin_create_or_update(RG, "rescue-nic", nm.NetworkInterface(
            location="eastus", ip_configurations=[
                nm.NetworkInterfaceIPConfiguration(name="c", subnet=nm.Subnet(id=subnet.id))])).result()
        c.virtual_machines.begin_create_or_update(RG, "rescue", cm.VirtualMachine(
            location="eastus", zones=["1"], hardware_profile=cm.HardwareProfile(vm_size="Standard_B2s"),
            storage_profile=cm.StorageProfile(
                image_reference=cm.ImageReference(publisher="Canonical", offer="ubuntu", sku="server",
                                                  version="latest"),
                os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete"),
                data_disks=[cm.DataDisk(lun=0, create_option="Attach",
                                        managed_disk=cm.ManagedDiskParameters(id=copy.id))]),
            os_profile=cm.OSProfile(computer_name="rescue", admin_username="rescue"),
            network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=nic.id)]),
        )).result()
        result = c.virtual_machines.begin_run_command(RG, "rescue", cm.RunCommandInput(
            command_id="RunShellScript", script=REPAIR_SCRIPT.read_text().splitlines(),
            parameters=[cm.RunCommandInputParameter(name="REPAIR_DEVICE", value="/dev/disk/azure/scsi1/lun0"),
                        cm.RunCommandInputParameter(name="REPAIR_INCIDENT", value="inc-real")])).result()
        assert result.value[0].code == "ProvisioningState/succeeded", result.value[0].message
        c.virtual_machines.begin_delete(RG, "rescue").result()
        c.virtual_machines.begin_deallocate(RG, "deb-frozen").result()
        vm = c.virtual_machines.get(RG, "deb-frozen")
        vm.storage_profile.os_disk.managed_disk.id = copy.id
        c.virtual_machines.begin_create_or_update(RG, "deb-frozen", vm).result()
        before = len(_serial(az, "deb-frozen"))
        c.virtual_machines.begin_start(RG, "deb-frozen").result()
        assert _wait_for_boot(az, "deb-frozen") == "booted"
        second = _serial(az, "deb-frozen")[before:]
        assert " login:" in second and "Freezing execution" not in second
        assert c.virtual_machines.instance_view(RG, "deb-frozen").vm_agent.statuses[0].display_status == "Ready"
