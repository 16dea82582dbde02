"""End to end on real disk images: read the frozen VM's log, copy its disk, run scripts against the copy
from a rescue VM on a loop device, and see the result in the image (and, with the repair script, boot it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.compute import models as cm
from azure.mgmt.network import models as nm

from localazure import images
from localazure.testing import LocalAzureHandle

pytestmark = [pytest.mark.localazure, pytest.mark.disk]

RG = "rg-app"
REPAIR_SCRIPT = Path(__file__).resolve().parents[2] / "remediation" / "scripts" / "repair_selinux.sh"

MARKER_SCRIPT = r"""set -e
dev=/dev/disk/azure/scsi1/lun0-part3
test -b "$dev"
mnt=$(mktemp -d)
mount "$dev" "$mnt"
printf '%s\n' "$MARKER" > "$mnt/etc/localazure-marker"
grep '^SELINUXTYPE=' "$mnt/etc/selinux/config"
umount "$mnt"
rmdir "$mnt"
echo "marker written" >&2
"""


def _image_of(az: LocalAzureHandle, disk_id: str) -> Path:
    path = az.state.disks[disk_id.lower()].path
    assert path is not None and path.exists()
    return path


def _serial(az: LocalAzureHandle, vm: str) -> str:
    c = az.compute_client()
    url = c.virtual_machines.retrieve_boot_diagnostics_data(RG, vm, sas_uri_expiration_time_in_minutes=5)
    return str(az.blob_client(url.serial_console_log_blob_uri).download_blob().readall().decode())


def _rescue(az: LocalAzureHandle, name: str, disk_id: str) -> None:
    net = az.network_client()
    subnet = net.subnets.get(RG, "vnet-app", "default")
    nic = net.network_interfaces.begin_create_or_update(RG, f"{name}-nic", nm.NetworkInterface(
        location="eastus",
        ip_configurations=[nm.NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=nm.Subnet(id=subnet.id))],
    )).result()
    az.compute_client().virtual_machines.begin_create_or_update(RG, name, cm.VirtualMachine(
        location="eastus", zones=["1"], hardware_profile=cm.HardwareProfile(vm_size="Standard_B2s"),
        storage_profile=cm.StorageProfile(
            image_reference=cm.ImageReference(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server",
                                              version="latest"),
            os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete"),
            data_disks=[cm.DataDisk(lun=0, create_option="Attach", managed_disk=cm.ManagedDiskParameters(id=disk_id))]),
        os_profile=cm.OSProfile(computer_name=name, admin_username="rescue"),
        network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=nic.id)]),
    )).result()


def _copy_os_disk(az: LocalAzureHandle, vm: str, name: str) -> str:
    c = az.compute_client()
    src = c.virtual_machines.get(RG, vm).storage_profile.os_disk.managed_disk.id
    return str(c.disks.begin_create_or_update(RG, name, cm.Disk(
        location="eastus", zones=["1"],
        creation_data=cm.CreationData(create_option="Copy", source_resource_id=src))).result().id)


def _loops_of(image: Path) -> str:
    import subprocess

    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout


def test_frozen_vm_disk_copied_and_edited_from_a_rescue_vm(local_azure_disks: LocalAzureHandle) -> None:
    az = local_azure_disks
    assert "Freezing execution." in _serial(az, "app-frozen")
    original = az.compute_client().virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.managed_disk.id
    copy_id = _copy_os_disk(az, "app-frozen", "frozen-copy")
    copy_image, source_image = _image_of(az, copy_id), _image_of(az, original)
    assert copy_image != source_image
    assert images.read_file(copy_image, "/etc/selinux/config") == images.read_file(source_image, "/etc/selinux/config")
    _rescue(az, "rescue-vm", copy_id)
    c = az.compute_client()
    result = c.virtual_machines.begin_run_command(RG, "rescue-vm", cm.RunCommandInput(
        command_id="RunShellScript", script=MARKER_SCRIPT.splitlines(),
        parameters=[cm.RunCommandInputParameter(name="MARKER", value="repaired-by-test")])).result()
    message = result.value[0].message
    assert result.value[0].code == "ProvisioningState/succeeded", message
    assert message.startswith("Enable succeeded: \n[stdout]\nSELINUXTYPE=disabled")
    assert "[stderr]\nmarker written" in message
    assert images.read_file(copy_image, "/etc/localazure-marker") == b"repaired-by-test\n"
    assert images.read_file(source_image, "/etc/localazure-marker") is None  # the original is untouched
    assert _loops_of(copy_image) == ""  # loop devices were detached
    assert not os.path.exists("/dev/disk/azure")  # the private /dev/disk never leaked to the host


def test_managed_run_command_states_exit_codes_output_and_timeouts(local_azure_disks: LocalAzureHandle) -> None:
    az = local_azure_disks
    copy_id = _copy_os_disk(az, "app-typo", "typo-copy")
    _rescue(az, "rescue-rc", copy_id)
    rc = az.compute_client().virtual_machine_run_commands
    done = rc.begin_create_or_update(RG, "rescue-rc", "fail", cm.VirtualMachineRunCommand(
        location="eastus", source=cm.VirtualMachineRunCommandScriptSource(
            script='head -c 6000 /dev/zero | tr "\\0" x; echo; echo "$WHAT" >&2; exit 3'),
        parameters=[cm.RunCommandInputParameter(name="WHAT", value="boom")], async_execution=False,
        timeout_in_seconds=60)).result()
    assert done.provisioning_state == "Succeeded"
    view = rc.get_by_virtual_machine(RG, "rescue-rc", "fail", expand="instanceView").instance_view
    assert view.execution_state == "Failed" and view.exit_code == 3
    assert len(view.output.encode()) == 4096 and view.output.endswith("x\n")  # only the last 4096 bytes
    assert view.error == "boom\n"
    assert view.start_time is not None and view.end_time is not None
    rc.begin_create_or_update(RG, "rescue-rc", "slow", cm.VirtualMachineRunCommand(
        location="eastus", source=cm.VirtualMachineRunCommandScriptSource(script="sleep 30"),
        async_execution=True, timeout_in_seconds=1)).result()
    with pytest.raises(ResourceExistsError):  # one script at a time per VM
        rc.begin_create_or_update(RG, "rescue-rc", "other", cm.VirtualMachineRunCommand(
            location="eastus", source=cm.VirtualMachineRunCommandScriptSource(script="true"))).result()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = rc.get_by_virtual_machine(RG, "rescue-rc", "slow", expand="instanceView").instance_view
        if view.execution_state not in ("Pending", "Running"):
            break
        time.sleep(0.1)
    assert view.execution_state == "TimedOut"
    rc.begin_delete(RG, "rescue-rc", "slow").result()
    with pytest.raises(HttpResponseError):
        rc.get_by_virtual_machine(RG, "rescue-rc", "slow")


def test_run_command_refused_on_a_frozen_vm(local_azure_disks: LocalAzureHandle) -> None:
    c = local_azure_disks.compute_client()
    with pytest.raises(ResourceExistsError) as exc:
        c.virtual_machines.begin_run_command(RG, "app-frozen", cm.RunCommandInput(
            command_id="RunShellScript", script=["true"])).result()
    assert exc.value.error.code == "VMAgentStatusCommunicationError"


@pytest.mark.skipif(not REPAIR_SCRIPT.exists(), reason="the repair script is not in the tree yet")
def test_repair_script_then_swap_boots_the_vm(local_azure_disks: LocalAzureHandle) -> None:
    az = local_azure_disks
    c = az.compute_client()
    preexisting = {k for k, d in az.state.disks.items() if d.preexisting}
    copy_id = _copy_os_disk(az, "app-frozen", "repair-copy")
    _rescue(az, "rescue-fix", copy_id)
    rc = c.virtual_machine_run_commands
    rc.begin_create_or_update(RG, "rescue-fix", "repair", cm.VirtualMachineRunCommand(
        location="eastus", source=cm.VirtualMachineRunCommandScriptSource(script=REPAIR_SCRIPT.read_text()),
        parameters=[cm.RunCommandInputParameter(name="REPAIR_DEVICE", value="/dev/disk/azure/scsi1/lun0"),
                    cm.RunCommandInputParameter(name="REPAIR_INCIDENT", value="inc-e2e")],
        async_execution=False, timeout_in_seconds=120)).result()
    view = rc.get_by_virtual_machine(RG, "rescue-fix", "repair", expand="instanceView").instance_view
    assert view.execution_state == "Succeeded", (view.output, view.error)
    assert '"status":"repaired"' in view.output.replace(" ", "")
    config = images.read_file(_image_of(az, copy_id), "/etc/selinux/config")
    assert config is not None and b"SELINUXTYPE=targeted" in config
    # Detach from the rescue VM, swap into the frozen VM, boot: the serial log now ends at a login prompt.
    c.virtual_machines.begin_delete(RG, "rescue-fix").result()
    c.virtual_machines.begin_deallocate(RG, "app-frozen").result()
    vm = c.virtual_machines.get(RG, "app-frozen")
    vm.storage_profile.os_disk.managed_disk.id = copy_id
    c.virtual_machines.begin_create_or_update(RG, "app-frozen", vm).result()
    c.virtual_machines.begin_start(RG, "app-frozen").result()
    log = _serial(az, "app-frozen")
    assert log.rindex("app-frozen login:") > log.rindex("Freezing execution.")
    assert c.virtual_machines.instance_view(RG, "app-frozen").vm_agent.statuses[0].display_status == "Ready"
    assert preexisting <= set(az.state.disks)  # no disk that existed before was deleted


@pytest.mark.skipif(not REPAIR_SCRIPT.exists(), reason="the repair script is not in the tree yet")
@pytest.mark.parametrize("vm_name", ["db-02", "cache-01"])  # GPT + LVM + XFS; MBR + ext4 without /boot
def test_repair_through_run_command_on_other_layouts(tmp_path: Path, vm_name: str) -> None:
    from localazure.testing import running

    rg = "rg-data"
    with running(None, time_scale=0.001, state_dir=tmp_path) as az:
        c = az.compute_client()
        src = c.virtual_machines.get(rg, vm_name).storage_profile.os_disk.managed_disk.id
        copy = c.disks.begin_create_or_update(rg, "copy", cm.Disk(
            location="eastus", creation_data=cm.CreationData(create_option="Copy", source_resource_id=src))).result()
        net = az.network_client()
        subnet = net.subnets.get(rg, "vnet-data", "default")
        nic = net.network_interfaces.begin_create_or_update(rg, "rescue-nic", nm.NetworkInterface(
            location="eastus", ip_configurations=[
                nm.NetworkInterfaceIPConfiguration(name="c", subnet=nm.Subnet(id=subnet.id))])).result()
        c.virtual_machines.begin_create_or_update(rg, "rescue", cm.VirtualMachine(
            location="eastus", hardware_profile=cm.HardwareProfile(vm_size="Standard_B2s"),
            storage_profile=cm.StorageProfile(
                image_reference=cm.ImageReference(publisher="RedHat", offer="RHEL", sku="9-lvm-gen2",
                                                  version="latest"),
                os_disk=cm.OSDisk(create_option="FromImage", delete_option="Delete"),
                data_disks=[cm.DataDisk(lun=0, create_option="Attach",
                                        managed_disk=cm.ManagedDiskParameters(id=copy.id))]),
            network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=nic.id)]),
        )).result()
        result = c.virtual_machines.begin_run_command(rg, "rescue", cm.RunCommandInput(
            command_id="RunShellScript", script=REPAIR_SCRIPT.read_text().splitlines(),
            parameters=[cm.RunCommandInputParameter(name="REPAIR_DEVICE", value="/dev/disk/azure/scsi1/lun0"),
                        cm.RunCommandInputParameter(name="REPAIR_INCIDENT", value="inc-layout")])).result()
        assert result.value[0].code == "ProvisioningState/succeeded", result.value[0].message
        assert '"status":"repaired"' in result.value[0].message
        c.virtual_machines.begin_delete(rg, "rescue").result()
        c.virtual_machines.begin_deallocate(rg, vm_name).result()
        vm = c.virtual_machines.get(rg, vm_name)
        vm.storage_profile.os_disk.managed_disk.id = copy.id
        c.virtual_machines.begin_create_or_update(rg, vm_name, vm).result()
        c.virtual_machines.begin_start(rg, vm_name).result()
        url = c.virtual_machines.retrieve_boot_diagnostics_data(rg, vm_name).serial_console_log_blob_uri
        log = az.blob_client(url).download_blob().readall().decode()
        assert log.rindex(f"{vm_name} login:") > log.rindex("Freezing execution.")
