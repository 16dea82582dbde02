"""Disk images: offline reads for the boot model, image builds, and the repair script on a loop device.

The baseline for reads is what a first attempt would do: loop-mount the root filesystem read-only,
read the file, unmount. Measured here, it is about as fast (a few ms either way); read_file avoids the
mount for ext4 not for speed but because `mount -o loop` refuses a disk that is attached to a loop
device already (a disk under repair) and needs root, while debugfs reads the image file as it is.

    python bench/bench_images.py          # prints the rows as JSON
    BENCH_BOOT=1 python bench/bench_images.py   # also times real qemu boots (about a minute)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import median_seconds, row  # noqa: E402
from localazure import images  # noqa: E402

SCRIPT = ROOT / "remediation" / "scripts" / "repair_selinux.sh"
CONFIG = "/etc/selinux/config"
READS = 20



def _mount_read(disk: Path) -> bytes:
    """The naive read: loop-mount the root filesystem read-only, read, unmount."""
    loc = images.root_filesystem(disk)
    with tempfile.TemporaryDirectory() as mnt:
        opts = f"ro,loop,offset={loc.offset},sizelimit={loc.size}," + (
            "norecovery,nouuid" if loc.fstype == "xfs" else "noload")
        subprocess.run(["mount", "-t", loc.fstype, "-o", opts, str(disk), mnt], check=True)
        try:
            return (Path(mnt) / CONFIG.lstrip("/")).read_bytes()
        finally:
            subprocess.run(["umount", mnt], check=True)


def _repair_seconds(disk: Path) -> float:
    images.write_file(disk, CONFIG, images.RHEL_CONFIG.format(mode="enforcing", policy_type="disabled").encode())
    dev = subprocess.run(["losetup", "-f", "--show", str(disk)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        start = time.perf_counter()
        out = subprocess.run(["sh", str(SCRIPT), "--device", dev], capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - start
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "repaired"
    return elapsed


def _boot_rows() -> list[dict[str, Any]]:
    from localazure import qemu

    image = images.debian_image()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "d.raw"
        images.copy_disk(image.disk, disk)
        healthy = qemu.boot(disk, image.kernel, image.initrd, cmdline=image.cmdline,
                            until=qemu.login_prompt_seen, timeout=240)
        conf = images.read_file(disk, CONFIG) or b""
        images.write_file(disk, CONFIG, conf.replace(b"SELINUXTYPE=default", b"SELINUXTYPE=disabled"))
        frozen = qemu.boot(disk, image.kernel, image.initrd, cmdline=image.cmdline,
                           until=qemu.freeze_seen, timeout=240)
    rows.append(row("qemu TCG: Debian 12 enforcing boot to login prompt", round(healthy.seconds, 1), "s",
                    notes=f"{healthy.reason}; -accel tcg -cpu max, 1 vCPU, 1 GiB"))
    rows.append(row("qemu TCG: Debian 12 boot to the SELinux freeze", round(frozen.seconds, 1), "s",
                    baseline_name="boot to login prompt", baseline_value=round(healthy.seconds, 1),
                    notes=f"{frozen.reason}; SELINUXTYPE=disabled, watched on the serial console"))
    return rows


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = images.selinux_tree(Path(tmp) / "tree")
        for layout in (images.Layout(), images.Layout(root_fs="xfs", lvm=True)):
            start = time.perf_counter()
            disk = images.build_disk(Path(tmp) / f"{layout.name}.raw", tree, layout)
            built = time.perf_counter() - start
            images.read_file(disk, CONFIG)
            fast = median_seconds(lambda d=disk: images.read_file(d, CONFIG), READS)  # type: ignore[misc]
            slow = median_seconds(lambda d=disk: _mount_read(d), READS)  # type: ignore[misc]
            rows.append(row(f"read_file {layout.name}", round(fast * 1000, 1), "ms",
                            baseline_name="loop mount + read + umount", baseline_value=round(slow * 1000, 1),
                            notes=f"median of {READS}; " + ("debugfs (stat + cat) at the partition offset, no mount"
                                                           if layout.root_fs == "ext4" else
                                                           "read-only mount of the LV found from LVM2 metadata")))
            rows.append(row(f"build_disk {layout.name} (512 MiB, sparse)", round(built, 2), "s",
                            notes="selinux_tree test root; partitions made as files, no device-mapper"))
            repair = median_seconds(lambda d=disk: _repair_seconds(d), 3)  # type: ignore[misc]
            rows.append(row(f"repair_selinux.sh {layout.name} on a loop device", round(repair, 2), "s",
                            notes="median of 3: partx, (LVM mapping,) mount, edit in place, sync, clean-up"))
    if os.environ.get("BENCH_BOOT") == "1":
        rows += _boot_rows()
    return rows


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
