"""Disk-tier fixtures: real disk images on loop devices, the repair script run as root, and leak checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from localazure import images

SCRIPT = Path(__file__).resolve().parents[2] / "remediation" / "scripts" / "repair_selinux.sh"


@dataclass
class RunResult:
    """One run of the repair script: its exit code, raw output, and the JSON of its last stdout line."""

    code: int
    stdout: str
    stderr: str
    report: dict[str, object]


def _run_script(args: Sequence[str] = (), env: dict[str, str] | None = None,
               wrapper: Sequence[str] = (), shell: str = "sh") -> RunResult:
    """Run the script as the rescue VM would (root, plain sh); parse the last stdout line as JSON."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **(env or {})}
    proc = subprocess.run([*wrapper, shell, str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=120, check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {proc.stderr}"
    report = json.loads(lines[-1])
    assert "Traceback" not in proc.stdout + proc.stderr
    return RunResult(proc.returncode, proc.stdout, proc.stderr, report)


def loops_backed_by(device: str) -> list[str]:
    """Loop devices whose backing file is `device` or one of its partitions."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    name = Path(device).name
    return [line.split(":", 1)[0] for line in out.splitlines() if re.search(rf"\(/dev/{name}(p\d+)?\)", line)]


def mounts_of(device: str) -> list[str]:
    name = Path(device).name
    return [line for line in Path("/proc/mounts").read_text().splitlines() if f"/dev/{name}" in line.split()[0]]


def partitions_visible(device: str) -> list[str]:
    name = Path(device).name
    sysdir = Path("/sys/class/block") / name
    return sorted(p.name for p in sysdir.iterdir() if p.name.startswith(name) and (p / "partition").exists())


@contextmanager
def mounted_root(disk: Path, readonly: bool = True) -> Iterator[Path]:
    """The disk's root filesystem, mounted from a loop device at its offset (read-only: no journal replay)."""
    loc = images.root_filesystem(disk)
    dev = subprocess.run(["losetup", "-f", "--show", *(["-r"] if readonly else []), "-o", str(loc.offset),
                          "--sizelimit", str(loc.size), str(disk)], capture_output=True, text=True,
                         check=True).stdout.strip()
    mnt = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    opts = ("ro," + ("norecovery,nouuid" if loc.fstype == "xfs" else "noload")) if readonly else "rw"
    if loc.fstype == "xfs" and not readonly:
        opts += ",nouuid"
    try:
        subprocess.run(["mount", "-t", loc.fstype, "-o", opts, dev, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        mnt.rmdir()
        subprocess.run(["losetup", "-d", dev], check=True)


def fs_check(disk: Path) -> list[str]:
    """e2fsck -fn / xfs_repair -n on every filesystem of the disk; returns the problems found."""
    problems = []
    for loc in images.filesystems(disk):
        dev = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(loc.offset), "--sizelimit", str(loc.size),
                              str(disk)], capture_output=True, text=True, check=True).stdout.strip()
        try:
            cmd = ["e2fsck", "-fn", dev] if loc.fstype == "ext4" else ["xfs_repair", "-n", dev]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                problems.append(f"{loc}: {proc.stdout[-400:]} {proc.stderr[-400:]}")
        finally:
            subprocess.run(["losetup", "-d", dev], check=True)
    return problems


@dataclass
class DiskLab:
    """Builds images under a temporary folder and attaches them, detaching everything at teardown."""

    root: Path
    attached: list[str] = field(default_factory=list)

    def disk(self, name: str, layout: images.Layout = images.Layout(), **tree: object) -> Path:  # noqa: B008
        src = images.selinux_tree(self.root / f"tree-{name}", **tree)  # type: ignore[arg-type]
        return images.build_disk(self.root / f"{name}.raw", src, layout)

    def attach(self, disk: Path) -> str:
        dev = subprocess.run(["losetup", "-f", "--show", str(disk)], capture_output=True, text=True,
                             check=True).stdout.strip()
        self.attached.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
        if dev in self.attached:
            self.attached.remove(dev)

    def assert_clean(self, dev: str) -> None:
        """Nothing the script set up is left: no mounts, no loop devices on the disk, no partition mappings."""
        assert mounts_of(dev) == []
        assert loops_backed_by(dev) == []
        assert partitions_visible(dev) == []
        assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("repair-selinux*"))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[DiskLab]:
    lab = DiskLab(tmp_path)
    yield lab
    for dev in list(lab.attached):
        for loop in loops_backed_by(dev):
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
        lab.detach(dev)


@pytest.fixture
def run_script():
    return _run_script


@pytest.fixture
def helpers() -> SimpleNamespace:
    return SimpleNamespace(mounted_root=mounted_root, fs_check=fs_check)
