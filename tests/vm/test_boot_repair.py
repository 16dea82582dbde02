"""Real boots: a Debian 12 SELinux VM frozen by a broken config, repaired by the script, booting enforcing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from localazure import images, qemu

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "remediation" / "scripts" / "repair_selinux.sh"
CONFIG = "/etc/selinux/config"


def _break(disk: Path, policy_type: str) -> bytes:
    """Set SELINUXTYPE as in the Azure article's failure, in place; return the config as it was."""
    original = images.read_file(disk, CONFIG)
    assert original is not None and b"\nSELINUX=enforcing\n" in original
    broken = re.sub(rb"(?m)^SELINUXTYPE=.*$", b"SELINUXTYPE=" + policy_type.encode(), original)
    images.write_file(disk, CONFIG, broken)
    return original


def _assert_frozen(result: qemu.BootResult, policy_type: str) -> None:
    assert result.reason == "matched", result.serial[-1500:]
    assert f"Could not open policy file <= /etc/selinux/{policy_type}/policy/policy." in result.serial
    assert "Failed to load SELinux policy" in result.serial
    assert "Freezing execution" in result.serial
    assert "login:" not in result.serial


def _assert_booted_enforcing(result: qemu.BootResult) -> None:
    assert result.reason == "matched", result.serial[-1500:]
    assert "Successfully loaded SELinux policy" in result.serial
    assert "Failed to load SELinux policy" not in result.serial
    assert "selinux-report: mode=1 " in result.serial  # /sys/fs/selinux/enforce read by a unit: enforcing
    assert re.search(r"\n\S+ login: *$", result.serial)


def _booted(text: str) -> bool:
    return qemu.login_prompt_seen(text) and "selinux-report:" in text


def test_frozen_debian_is_repaired_through_a_loop_device_and_boots_enforcing(debian, tmp_path):
    disk = tmp_path / "os-disk.raw"
    images.copy_disk(debian.disk, disk)
    original = _break(disk, "disabled")

    frozen = qemu.boot(disk, debian.kernel, debian.initrd, cmdline=debian.cmdline, until=qemu.freeze_seen,
                       timeout=120, serial_log=tmp_path / "frozen.log")
    _assert_frozen(frozen, "disabled")

    loop = subprocess.run(["losetup", "-f", "--show", str(disk)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        proc = subprocess.run(["sh", str(SCRIPT), "--device", loop, "--incident", "vm-test-1"],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and report["status"] == "repaired", proc.stdout
    assert [(c["key"], c["old"], c["new"]) for c in report["changes"]] == [("SELINUXTYPE", "disabled", "default")]
    assert images.read_file(disk, CONFIG) == original
    assert images.file_xattr(disk, CONFIG) == images.CONFIG_LABEL

    booted = qemu.boot(disk, debian.kernel, debian.initrd, cmdline=debian.cmdline, until=_booted,
                       timeout=240, serial_log=tmp_path / "booted.log")
    _assert_booted_enforcing(booted)


def test_mbr_xfs_debian_is_repaired_in_a_rescue_vm_and_boots_enforcing(tmp_path):
    image = images.debian_image(layout=images.Layout(table="mbr", root_fs="xfs"))
    disk = tmp_path / "os-disk.raw"
    images.copy_disk(image.disk, disk)
    original = _break(disk, "mls")  # a policy package that is not installed

    frozen = qemu.boot(disk, image.kernel, image.initrd, cmdline=image.cmdline, until=qemu.freeze_seen, timeout=120)
    _assert_frozen(frozen, "mls")

    # the rescue VM runs the same image: its own root has the same XFS UUID (mounting needs nouuid)
    result = qemu.run_in_rescue_vm(SCRIPT, [], disk, timeout=300, layout=image.layout,
                                   env={"REPAIR_DEVICE": "/dev/vdb", "REPAIR_INCIDENT": "vm-test-2"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 0 and report["status"] == "repaired", result.stdout + result.stderr
    assert report["root"] == "/dev/vdb2"
    assert images.read_file(disk, CONFIG) == original
    assert images.read_file(disk, "/etc/selinux/config.bak-vm-test-2") == original.replace(
        b"SELINUXTYPE=default", b"SELINUXTYPE=mls")

    booted = qemu.boot(disk, image.kernel, image.initrd, cmdline=image.cmdline, until=_booted, timeout=240)
    _assert_booted_enforcing(booted)


def test_lvm_disks_with_the_same_vg_are_repaired_in_a_rescue_vm_active_or_not(tmp_path):
    """Two attached disks carry VG rootvg (as when the rescue VM runs the same image) and the rescue VM's
    lvm2 auto-activates one of them: the script repairs each one it is given, using an active volume as
    it is and mapping an inactive one by offset, and leaves the other disk alone."""
    layout = images.Layout(table="gpt", root_fs="xfs", lvm=True)
    tree = images.selinux_tree(tmp_path / "tree", policy_type="disabled", installed=("targeted",))
    first = images.build_disk(tmp_path / "first.raw", tree, layout)
    twin = tmp_path / "twin.raw"
    images.copy_disk(first, twin)
    original = images.read_file(first, CONFIG)

    job = tmp_path / "job.sh"
    job.write_text(
        "cat > /tmp/repair.sh <<'END_OF_SCRIPT'\n" + SCRIPT.read_text() + "END_OF_SCRIPT\n"
        "sh /tmp/repair.sh --device /dev/vdb --incident lvm-1 | tail -n 1\n"
        "sh /tmp/repair.sh --device /dev/vdd --incident lvm-2 | tail -n 1\n"
        "dmsetup ls\n"
    )
    result = qemu.run_in_rescue_vm(job, [], first, extra_disks=[twin], timeout=300)
    lines = result.stdout.strip().splitlines()
    reports = [json.loads(line) for line in lines[:2]]
    assert [r["status"] for r in reports] == ["repaired", "repaired"], result.stdout + result.stderr
    assert [r["root"] for r in reports] == ["rootvg/rootlv", "rootvg/rootlv"]
    assert sorted(r["root_via"] for r in reports) == ["active", "mapped"], result.stdout
    assert "rootvg-rootlv" in "\n".join(lines[2:]), "the volume that was active stays active"
    for disk, incident in ((first, "lvm-1"), (twin, "lvm-2")):
        assert b"\nSELINUXTYPE=targeted\n" in (images.read_file(disk, CONFIG) or b"")
        assert images.file_xattr(disk, CONFIG) == images.CONFIG_LABEL
        assert images.read_file(disk, f"/etc/selinux/config.bak-{incident}") == original
        assert images.list_dir(disk, "/etc/selinux") == ["config", f"config.bak-{incident}", "targeted"]
