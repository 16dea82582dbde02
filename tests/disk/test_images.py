"""Disk images built from files, read back offline, on every layout the repair must handle."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from localazure import images

pytestmark = pytest.mark.disk

ALL_LAYOUTS = [
    images.Layout(),
    images.Layout(table="mbr"),
    images.Layout(root_fs="xfs"),
    images.Layout(table="mbr", root_fs="xfs", separate_boot=False),
    images.Layout(lvm=True),
    images.Layout(table="mbr", lvm=True, root_fs="xfs"),
]


@pytest.mark.parametrize("layout", ALL_LAYOUTS, ids=lambda lay: lay.name)
def test_built_disk_reads_back_offline(tmp_path: Path, layout: images.Layout) -> None:
    tree = images.selinux_tree(tmp_path / "tree", mode="enforcing", policy_type="mls", installed=("targeted", "mls"))
    disk = images.build_disk(tmp_path / "disk.raw", tree, layout, size_mb=512)

    assert disk.stat().st_size == 512 * images.MIB
    assert disk.stat().st_blocks * 512 < 64 * images.MIB, "the image should stay sparse"
    config = images.read_file(disk, "/etc/selinux/config")
    assert config is not None and b"\nSELINUX=enforcing\n" in config and b"\nSELINUXTYPE=mls\n" in config
    assert images.read_file(disk, "/etc/selinux/mls/policy/policy.33") == b"placeholder SELinux policy mls\n"
    assert images.read_file(disk, "/etc/nothing-here") is None
    assert images.read_file(disk, "/etc/selinux") is None  # a directory is not a file
    assert images.list_dir(disk, "/etc/selinux") == ["config", "mls", "targeted"]
    assert images.list_dir(disk, "/etc/selinux/config") is None
    assert images.list_dir(disk, "/nope") is None
    assert images.file_xattr(disk, "/etc/selinux/config") == images.CONFIG_LABEL
    assert images.file_xattr(disk, "/etc/os-release") is None
    assert images.file_xattr(disk, "/etc/absent") is None

    kinds = [loc.fstype for loc in images.filesystems(disk)]
    assert kinds == (["ext4"] if layout.separate_boot else []) + [layout.root_fs]
    table = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    assert ("label: gpt" if layout.table == "gpt" else "label: dos") in table
    if layout.lvm:
        assert ("8E00" if layout.table == "gpt" else "type=8e").lower() in table.lower() or "E6D6D379" in table


def test_reads_are_fast_enough_for_the_boot_model(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree")
    for layout in (images.Layout(), images.Layout(root_fs="xfs"), images.Layout(lvm=True)):
        disk = images.build_disk(tmp_path / f"{layout.name}.raw", tree, layout)
        images.read_file(disk, "/etc/selinux/config")  # locate the root filesystem once
        started = time.monotonic()
        for _ in range(5):
            assert images.read_file(disk, "/etc/selinux/config")
        assert (time.monotonic() - started) / 5 < 0.1


def test_unlabelled_tree_has_no_label(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree", label=False)
    disk = images.build_disk(tmp_path / "d.raw", tree)
    assert images.file_xattr(disk, "/etc/selinux/config") is None


def test_config_text_is_written_verbatim(tmp_path: Path) -> None:
    text = "SELINUX=permissive\r\nSELINUXTYPE=targeted"
    tree = images.selinux_tree(tmp_path / "tree", config_text=text)
    disk = images.build_disk(tmp_path / "d.raw", tree, images.Layout(table="mbr"))
    assert images.read_file(disk, "/etc/selinux/config") == text.encode()


def test_separate_boot_holds_the_trees_boot(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree")
    (tree / "boot" / "vmlinuz-test").write_bytes(b"kernel")
    disk = images.build_disk(tmp_path / "d.raw", tree)
    assert images.list_dir(disk, "/boot") == []
    boot = images.filesystems(disk)[0]
    out = subprocess.run(["debugfs", "-R", "cat /vmlinuz-test", f"{disk}?offset={boot.offset}"],
                         capture_output=True, check=True).stdout
    assert out == b"kernel"
    assert (tree / "boot" / "vmlinuz-test").exists(), "the source tree is not modified"


def test_write_file_keeps_inode_and_label(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree")
    for layout in (images.Layout(), images.Layout(lvm=True, root_fs="xfs")):
        disk = images.build_disk(tmp_path / f"{layout.name}.raw", tree, layout)
        images.write_file(disk, "/etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=disabled\n")
        assert images.read_file(disk, "/etc/selinux/config") == b"SELINUX=enforcing\nSELINUXTYPE=disabled\n"
        assert images.file_xattr(disk, "/etc/selinux/config") == images.CONFIG_LABEL


def test_copy_disk_is_sparse_and_independent(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree")
    src = images.build_disk(tmp_path / "src.raw", tree)
    dst = tmp_path / "copy" / "dst.raw"
    images.copy_disk(src, dst)
    assert dst.stat().st_size == src.stat().st_size
    assert dst.stat().st_blocks <= src.stat().st_blocks + 64
    images.write_file(dst, "/etc/hostname", b"changed\n")
    assert images.read_file(src, "/etc/hostname") == b"selinux-test\n"
    assert images.read_file(dst, "/etc/hostname") == b"changed\n"


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    tree = images.selinux_tree(tmp_path / "tree")
    disk = images.build_disk(tmp_path / "d.raw", tree)
    with pytest.raises(images.ImageError, match="invalid path"):
        images.read_file(disk, "etc/selinux/config")
    with pytest.raises(images.ImageError, match="invalid path"):
        images.read_file(disk, '/etc/"; rm')
    with pytest.raises(images.ImageError, match="does not exist"):
        images.read_file(tmp_path / "missing.raw", "/etc/hostname")
    with pytest.raises(images.ImageError, match="at least 300 MiB"):
        images.build_disk(tmp_path / "small.raw", tree, images.Layout(root_fs="xfs"), size_mb=200)
    with pytest.raises(images.ImageError, match="invalid policy name"):
        images.selinux_tree(tmp_path / "t2", installed=("../x",))
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(4 * images.MIB))
    with pytest.raises(images.ImageError, match="no root filesystem"):
        images.read_file(blank, "/etc/hostname")
