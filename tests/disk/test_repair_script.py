"""The rescue-VM repair script on real disk images attached to loop devices (GPT/MBR, ext4/XFS, LVM)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from localazure import images

pytestmark = pytest.mark.disk

CONFIG = "/etc/selinux/config"
LABEL = images.CONFIG_LABEL


def _conf(mode: str = "enforcing", policy_type: str = "targeted") -> bytes:
    return images.RHEL_CONFIG.format(mode=mode, policy_type=policy_type).encode()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LAYOUTS = [
    images.Layout(table="gpt", root_fs="ext4"),
    images.Layout(table="gpt", root_fs="xfs"),
    images.Layout(table="mbr", root_fs="ext4"),
    images.Layout(table="mbr", root_fs="xfs", separate_boot=False),
    images.Layout(table="gpt", root_fs="xfs", lvm=True),
    images.Layout(table="mbr", root_fs="ext4", lvm=True),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.name)
def test_wrong_type_disabled_is_repaired_in_place_on_every_layout(lab, layout, run_script, helpers):
    disk = lab.disk("d", layout, mode="enforcing", policy_type="disabled", installed=("targeted", "minimum"))
    with helpers.mounted_root(disk) as mnt:
        inode_before = (mnt / CONFIG.lstrip("/")).stat().st_ino
    dev = lab.attach(disk)

    first = run_script(["--device", dev, "--incident", "inc-42"])

    assert first.code == 0, first.stdout
    report = first.report
    assert report["status"] == "repaired"
    assert report["device"] == dev
    assert report["root"] == ("rootvg/rootlv" if layout.lvm else f"{dev}p{len(layout.partitions_mib(512))}")
    assert report["root_via"] == ("mapped" if layout.lvm else "partition")
    assert report["changes"] == [{
        "key": "SELINUXTYPE", "old": "disabled", "new": "targeted",
        "reason": report["changes"][0]["reason"],  # type: ignore[index]
    }]
    assert "not installed" in report["changes"][0]["reason"]  # type: ignore[index]
    assert report["backup"] == "/etc/selinux/config.bak-inc-42"
    assert report["warnings"] == []
    lab.assert_clean(dev)

    assert images.read_file(disk, CONFIG) == _conf("enforcing", "targeted")
    assert images.read_file(disk, "/etc/selinux/config.bak-inc-42") == _conf("enforcing", "disabled")
    assert images.file_xattr(disk, CONFIG) == LABEL
    with helpers.mounted_root(disk) as mnt:
        target = mnt / CONFIG.lstrip("/")
        assert target.stat().st_ino == inode_before
        getfattr = subprocess.run(["getfattr", "--absolute-names", "-n", "security.selinux", str(target)],
                                  capture_output=True, text=True, check=True).stdout
        assert 'security.selinux="system_u:object_r:selinux_config_t:s0' in getfattr
    assert helpers.fs_check(disk) == []

    second = run_script(["--device", dev, "--incident", "inc-42"])
    assert second.code == 0
    assert second.report["status"] == "already_valid"
    assert second.report["changes"] == []
    assert images.read_file(disk, CONFIG) == _conf("enforcing", "targeted")
    assert images.read_file(disk, "/etc/selinux/config.bak-inc-42") == _conf("enforcing", "disabled")
    lab.assert_clean(dev)


BREAKAGES = {
    # name: (tree arguments, expected config after, expected change keys/new values, a warning expected)
    "typo_in_type": (
        {"policy_type": "targetd", "installed": ("targeted", "mls")}, _conf("enforcing", "targeted"),
        [("SELINUXTYPE", "targetd", "targeted")], False),
    "mls_not_installed": (
        {"policy_type": "mls", "installed": ("targeted",)}, _conf("enforcing", "targeted"),
        [("SELINUXTYPE", "mls", "targeted")], False),
    "typo_prefers_the_misspelt_policy": (
        {"policy_type": "minimun", "installed": ("targeted", "minimum")}, _conf("enforcing", "minimum"),
        [("SELINUXTYPE", "minimun", "minimum")], False),
    "debian_default_policy": (
        {"policy_type": "disabled", "installed": ("default",)}, _conf("enforcing", "default"),
        [("SELINUXTYPE", "disabled", "default")], False),
    "enforcing_with_nothing_installed": (
        {"policy_type": "targeted", "installed": ()}, _conf("permissive", "targeted"),
        [("SELINUX", "enforcing", "permissive")], True),
    "mode_typo": (
        {"mode": "enforcng", "policy_type": "targeted"}, _conf("enforcing", "targeted"),
        [("SELINUX", "enforcng", "enforcing")], False),
    "mode_typo_and_wrong_type": (
        {"mode": "Enforcng", "policy_type": "disabled"}, _conf("enforcing", "targeted"),
        [("SELINUX", "Enforcng", "enforcing"), ("SELINUXTYPE", "disabled", "targeted")], False),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_each_breakage_is_fixed_exactly(lab, run_script, helpers, name):
    tree, expected, changes, warned = BREAKAGES[name]
    disk = lab.disk(name, **tree)
    original = images.read_file(disk, CONFIG)
    dev = lab.attach(disk)

    result = run_script(["--device", dev, "--incident", "i1"])

    assert result.code == 0, result.stdout
    assert result.report["status"] == "repaired"
    got = [(c["key"], c["old"], c["new"]) for c in result.report["changes"]]  # type: ignore[union-attr]
    assert got == changes
    assert images.read_file(disk, CONFIG) == expected
    assert images.read_file(disk, "/etc/selinux/config.bak-i1") == original
    assert images.file_xattr(disk, CONFIG) == LABEL
    warnings = result.report["warnings"]
    assert bool(warnings) == warned
    if warned:
        assert "SECURITY LOWERED" in warnings[0]  # type: ignore[index]
    lab.assert_clean(dev)
    assert run_script(["--device", dev, "--incident", "i1"]).report["status"] == "already_valid"
    assert images.read_file(disk, CONFIG) == expected


def test_bash_as_on_rhel_rescue_vms_gives_the_same_result(lab, run_script):
    # RHEL's /bin/sh is bash, Ubuntu's is dash (the other tests): both must behave the same.
    disk = lab.disk("bash", images.Layout(lvm=True, root_fs="xfs"), policy_type="disabled")
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--incident", "b1"], shell="bash")
    assert result.report["status"] == "repaired", result.stdout
    assert images.read_file(disk, CONFIG) == _conf("enforcing", "targeted")
    lab.assert_clean(dev)


def test_already_valid_config_is_left_alone(lab, run_script):
    disk = lab.disk("ok", policy_type="targeted")
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--incident", "i2"])
    assert (result.code, result.report["status"], result.report["changes"]) == (0, "already_valid", [])
    assert result.report["backup"] is None
    assert images.read_file(disk, CONFIG) == _conf()
    assert "config.bak-i2" not in (images.list_dir(disk, "/etc/selinux") or [])
    lab.assert_clean(dev)


def test_unclear_mode_is_reported_but_not_guessed(lab, run_script):
    disk = lab.disk("unclear", mode="banana")
    dev = lab.attach(disk)
    result = run_script(["--device", dev])
    assert result.code == 0
    assert result.report["status"] == "already_valid"
    assert result.report["mode"] == "unrecognised"
    assert any("banana" in w for w in result.report["warnings"])  # type: ignore[union-attr]
    assert images.read_file(disk, CONFIG) == _conf("banana")


def test_only_offending_lines_change_byte_for_byte(lab, run_script):
    # CRLF line ends, no final newline, odd spacing and an earlier unrecognised SELINUX= line all survive.
    text = (b"# keep me \t\r\nSELINUX=maybe\r\nSELINUX=enforcing\r\n  selinuxtype = ignored?\r\n"
            b"SETLOCALDEFS=0\r\nSELINUXTYPE=disabled  \r\n# trailing comment without newline")
    disk = lab.disk("bytes", config_text=text.decode())
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--incident", "b"])
    assert result.report["status"] == "repaired", result.stdout
    assert images.read_file(disk, CONFIG) == text.replace(b"SELINUXTYPE=disabled  \r\n", b"SELINUXTYPE=targeted\r\n")


def test_missing_type_line_gets_one_appended(lab, run_script):
    # Without a SELINUXTYPE line libselinux uses "targeted"; on Debian only "default" exists.
    text = "SELINUX=enforcing\n"
    disk = lab.disk("notype", config_text=text, installed=("default",))
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--incident", "n"])
    assert result.report["changes"][0]["old"] is None  # type: ignore[index]
    assert images.read_file(disk, CONFIG) == b"SELINUX=enforcing\nSELINUXTYPE=default\n"


def test_json_escapes_hostile_values(lab, run_script):
    disk = lab.disk("esc", policy_type='ta"rg\\et\t$(id)')
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--incident", "e"])
    assert result.report["changes"][0]["old"] == 'ta"rg\\et\t$(id)'  # type: ignore[index]
    assert len(result.stdout) < 4096


def test_dry_run_changes_nothing(lab, run_script):
    disk = lab.disk("dry", policy_type="disabled")
    before = _sha(disk)
    dev = lab.attach(disk)
    result = run_script(["--device", dev, "--dry-run", "--incident", "d"])
    assert result.code == 0
    assert result.report["status"] == "would_repair"
    assert result.report["dry_run"] is True
    assert result.report["changes"][0]["new"] == "targeted"  # type: ignore[index]
    assert result.report["backup"] is None
    lab.assert_clean(dev)
    lab.detach(dev)
    assert _sha(disk) == before


def test_dry_run_on_lvm_changes_nothing(lab, run_script):
    disk = lab.disk("drylvm", images.Layout(lvm=True, root_fs="xfs"), policy_type="disabled")
    before = _sha(disk)
    dev = lab.attach(disk)
    result = run_script([], env={"REPAIR_DEVICE": dev, "REPAIR_DRY_RUN": "true"})
    assert result.report["status"] == "would_repair"
    lab.assert_clean(dev)
    lab.detach(dev)
    assert _sha(disk) == before


def test_parameters_come_from_the_environment_and_flags_win(lab, run_script):
    disk = lab.disk("env", policy_type="disabled")
    dev = lab.attach(disk)
    result = run_script(["--incident", "from-flag"],
                        env={"REPAIR_DEVICE": dev, "REPAIR_INCIDENT": "from-env", "REPAIR_DRY_RUN": "false"})
    assert result.report["status"] == "repaired"
    assert result.report["backup"] == "/etc/selinux/config.bak-from-flag"
    assert images.read_file(disk, "/etc/selinux/config.bak-from-flag") is not None


def test_partitions_already_visible_are_used_and_left_alone(lab, run_script):
    disk = lab.disk("visible", policy_type="disabled")
    dev = lab.attach(disk)
    subprocess.run(["partx", "-a", dev], check=True)
    result = run_script(["--device", dev, "--incident", "v"])
    assert result.report["status"] == "repaired"
    assert "partx" not in result.stdout
    # the mappings it did not create are still there
    assert len(list(Path("/sys/class/block", Path(dev).name).glob(f"{Path(dev).name}p*"))) == 3


@pytest.fixture
def dev_disk_dir():
    """/dev/disk must exist for a private tmpfs to cover it; create it (empty) only if the host lacks it."""
    path = Path("/dev/disk")
    created = not path.exists()
    if created:
        path.mkdir()
    yield path
    if created:
        path.rmdir()


def test_lun0_is_found_without_a_device_argument(lab, run_script, dev_disk_dir):
    disk = lab.disk("lun0", policy_type="disabled")
    dev = lab.attach(disk)
    setup = (f"mount -t tmpfs tmpfs /dev/disk && mkdir -p /dev/disk/azure/scsi1 && "
             f"ln -s ../../../{Path(dev).name} /dev/disk/azure/scsi1/lun0 && exec \"$@\"")
    result = run_script(["--incident", "l0"], wrapper=["unshare", "-m", "--propagation", "private",
                                                         "sh", "-c", setup, "sh"])
    assert result.report["status"] == "repaired", result.stdout
    assert result.report["device"] == dev
    assert images.read_file(disk, CONFIG) == _conf("enforcing", "targeted")
    lab.assert_clean(dev)


def test_without_lun0_and_no_unique_data_disk_it_refuses_to_guess(run_script, dev_disk_dir):
    result = run_script(["--incident", "x"], wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                                      'mount -t tmpfs tmpfs /dev/disk && exec "$@"', "sh"])
    assert result.code != 0
    assert result.report["status"] == "failed"
    assert "pass --device" in result.report["error"]  # type: ignore[operator]


def _host_root_disk() -> str:
    majmin = subprocess.run(["mountpoint", "-d", "/"], capture_output=True, text=True, check=True).stdout.strip()
    node = Path(f"/sys/dev/block/{majmin}").resolve()
    if (node / "partition").exists():
        node = node.parent
    return f"/dev/{node.name}"


def test_the_rescue_vms_own_root_disk_is_refused(run_script):
    root_disk = _host_root_disk()
    if not Path(root_disk).is_block_device():
        pytest.skip(f"the root filesystem is not on a block device here ({root_disk})")
    result = run_script(["--device", root_disk])
    assert result.code != 0
    assert result.report["status"] == "failed"
    assert "own root" in result.report["error"]  # type: ignore[operator]


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--incident", "a;rm -rf /"], {}, "invalid incident id"),
    (["--incident", "x" * 65], {}, "longer than 64"),
    ([], {"REPAIR_INCIDENT": "a b"}, "invalid incident id"),
    ([], {"REPAIR_DRY_RUN": "maybe"}, "must be true or false"),
    (["--device", "/dev/does-not-exist"], {}, "not a block device"),
    (["--device", "sda"], {}, "path under /dev"),
    (["--device", "/dev/null"], {}, "not a block device"),
    (["--bogus"], {}, "unknown argument"),
    (["--device"], {}, "needs a value"),
])
def test_bad_parameters_fail_clearly(run_script, args, env, message):
    result = run_script(args, env=env)
    assert result.code != 0
    assert result.report["status"] == "failed"
    assert message in result.report["error"]  # type: ignore[operator]


def test_a_partition_is_refused_in_favour_of_its_disk(lab, run_script):
    disk = lab.disk("part")
    dev = lab.attach(disk)
    subprocess.run(["partx", "-a", dev], check=True)
    result = run_script(["--device", f"{dev}p3"])
    assert result.report["status"] == "failed"
    assert "whole disk" in result.report["error"]  # type: ignore[operator]


def test_a_mounted_partition_is_refused(lab, run_script, tmp_path):
    disk = lab.disk("busy", policy_type="disabled")
    dev = lab.attach(disk)
    subprocess.run(["partx", "-a", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro", f"{dev}p3", str(mnt)], check=True)
    try:
        result = run_script(["--device", dev])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert result.report["status"] == "failed"
    assert "mounted already" in result.report["error"]  # type: ignore[operator]
    assert b"SELINUXTYPE=disabled" in (images.read_file(disk, CONFIG) or b"")


def test_failure_after_mounting_still_cleans_up(lab, run_script, helpers):
    # A symlinked config must not be followed (it would point into the rescue VM's own /etc).
    disk = lab.disk("symlink", policy_type="disabled")
    with helpers.mounted_root(disk, readonly=False) as mnt:
        cfg = mnt / "etc/selinux/config"
        cfg.unlink()
        os.symlink("/etc/selinux/config.real", cfg)
    dev = lab.attach(disk)
    result = run_script(["--device", dev])
    assert result.report["status"] == "failed"
    assert "symbolic link" in result.report["error"]  # type: ignore[operator]
    lab.assert_clean(dev)


def test_disk_without_selinux_config_fails_cleanly(lab, run_script, tmp_path):
    tree = tmp_path / "plain"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("x\n")
    disk = images.build_disk(tmp_path / "plain.raw", tree, images.Layout(table="mbr"))
    dev = lab.attach(disk)
    result = run_script(["--device", dev])
    assert result.report["status"] == "failed"
    assert "holds /etc/selinux/config" in result.report["error"]  # type: ignore[operator]
    lab.assert_clean(dev)


def test_output_is_one_json_line_at_the_end(lab, run_script):
    disk = lab.disk("json", policy_type="disabled")
    dev = lab.attach(disk)
    result = run_script(["--device", dev])
    last = result.stdout.rstrip("\n").splitlines()[-1]
    assert json.loads(last) == result.report
    assert result.report["backup"].startswith("/etc/selinux/config.bak-")  # type: ignore[union-attr]
