"""Real disk images for the local Azure: SELinux root trees, partitioned raw disks, fast offline reads.

The host kernel that runs the tests has no device-mapper and does not parse partition tables, so
every image here is built from files: each filesystem is made in its own file (``mkfs.ext4 -d``, or
``mkfs.xfs`` plus a loop mount), then copied into place after ``sgdisk``/``sfdisk`` wrote the table.
LVM layouts get their metadata from the LVM tools run against a loop device holding only the
physical volume (``vgcfgrestore`` adds the logical volume without activating it).

Reads (``read_file``, ``list_dir``, ``file_xattr``) find the root filesystem by parsing the GPT or
MBR and, for LVM, the LVM2 text metadata, then use ``debugfs`` at the byte offset for ext4 (no
mount) or a read-only loop mount for XFS.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

MIB = 1024 * 1024
SECTOR = 512
EFI_MIB = 16
BOOT_MIB = 64
XFS_MIN_MIB = 300
VG_NAME = "rootvg"
LV_NAME = "rootlv"
CONFIG_LABEL = b"system_u:object_r:selinux_config_t:s0\x00"

RHEL_CONFIG = """\

# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#     enforcing - SELinux security policy is enforced.
#     permissive - SELinux prints warnings instead of enforcing.
#     disabled - No SELinux policy is loaded.
# See also:
# https://docs.fedoraproject.org/en-US/quick-docs/getting-started-with-selinux/#getting-started-with-selinux-selinux-states-and-modes
SELINUX={mode}
# SELINUXTYPE= can take one of these three values:
#     targeted - Targeted processes are protected,
#     minimum - Modification of targeted policy. Only selected processes are protected.
#     mls - Multi Level Security protection.
SELINUXTYPE={policy_type}

"""

DEBIAN_OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
)
RHEL_OS_RELEASE = (
    'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n'
)


class ImageError(RuntimeError):
    """A disk image could not be built or read; the message says what and why."""


@dataclass(frozen=True)
class Layout:
    """How a disk is partitioned and formatted (RHEL-family Azure images use GPT with EFI and /boot)."""

    table: Literal["gpt", "mbr"] = "gpt"
    root_fs: Literal["ext4", "xfs"] = "ext4"
    lvm: bool = False
    separate_boot: bool = True

    @property
    def name(self) -> str:
        """A short, file-name-safe name such as ``gpt-lvm-xfs``."""
        parts = [self.table, *(["lvm"] if self.lvm else []), self.root_fs]
        if not self.separate_boot:
            parts.append("noboot")
        return "-".join(parts)

    def root_device(self, disk: str = "/dev/vda") -> str:
        """The root device as a Linux guest with this disk attached at ``disk`` names it."""
        if self.lvm:
            return f"/dev/mapper/{VG_NAME}-{LV_NAME}"
        return f"{disk}{len(self.partitions_mib(0)[:-1]) + 1}"

    def boot_device(self, disk: str = "/dev/vda") -> str | None:
        """The /boot partition as the guest names it, or None when /boot lives on root."""
        if not self.separate_boot:
            return None
        return f"{disk}{2 if self.table == 'gpt' else 1}"

    def partitions_mib(self, size_mb: int) -> list[tuple[str, int, int]]:
        """(role, start MiB, size MiB) for each partition, in table order; root takes the rest."""
        parts: list[tuple[str, int, int]] = []
        start = 1
        if self.table == "gpt":
            parts.append(("efi", start, EFI_MIB))
            start += EFI_MIB
        if self.separate_boot:
            parts.append(("boot", start, BOOT_MIB))
            start += BOOT_MIB
        # GPT keeps a backup table in the last sectors: leave the final MiB free.
        parts.append(("root", start, size_mb - start - 1))
        return parts


# ---------------------------------------------------------------- trees


def selinux_tree(
    dest: Path,
    *,
    mode: str = "enforcing",
    policy_type: str = "targeted",
    installed: Sequence[str] = ("targeted",),
    config_text: str | None = None,
    label: bool = True,
) -> Path:
    """Write a minimal root tree with an SELinux config, placeholder policies, os-release and fstab."""
    for name in installed:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in {".", ".."}:
            raise ImageError(f"invalid policy name {name!r}: use letters, digits, '.', '_' or '-'")
    etc = dest / "etc"
    selinux = etc / "selinux"
    selinux.mkdir(parents=True, exist_ok=True)
    (dest / "boot").mkdir(exist_ok=True)
    for name in installed:
        policy = selinux / name / "policy"
        policy.mkdir(parents=True, exist_ok=True)
        (policy / "policy.33").write_bytes(b"placeholder SELinux policy " + name.encode() + b"\n")
        (selinux / name / "contexts").mkdir(exist_ok=True)
    config = selinux / "config"
    text = config_text if config_text is not None else RHEL_CONFIG.format(mode=mode, policy_type=policy_type)
    config.write_bytes(text.encode())
    if label:
        os.setxattr(config, "security.selinux", CONFIG_LABEL)
    debian = "default" in installed or policy_type == "default"
    (etc / "os-release").write_text(DEBIAN_OS_RELEASE if debian else RHEL_OS_RELEASE)
    (etc / "fstab").write_text("LABEL=root  /      auto  defaults  0 1\nLABEL=boot  /boot  auto  defaults  0 2\n")
    (etc / "hostname").write_text("selinux-test\n")
    return dest


# ---------------------------------------------------------------- building disks


def _run(cmd: Sequence[str], *, what: str, input_text: str | None = None, timeout: float = 600) -> str:
    """Run a tool; on failure raise ImageError naming the step and quoting the tool's last words."""
    try:
        proc = subprocess.run(
            list(cmd), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: {cmd[0]} is not installed (run `make setup`)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what}: {cmd[0]} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed ({cmd[0]} exit {proc.returncode}): {' / '.join(tail)}")
    return proc.stdout


def _lvm_config(device: str) -> str:
    """LVM settings that confine the tools to one device and leave the host's LVM state untouched."""
    return (
        f'devices {{ filter=["a|^{device}$|","r|.*|"] use_devicesfile=0 }} '
        "backup { backup=0 archive=0 } global { locking_type=1 use_lvmlockd=0 }"
    )


@contextlib.contextmanager
def _loop(path: Path, *, partscan: bool = False) -> Iterator[str]:
    """Attach a file to a free loop device for the duration of the block."""
    dev = _run(["losetup", "-f", "--show", str(path)], what=f"attaching {path.name}").strip()
    try:
        if partscan:
            _run(["partx", "-a", dev], what=f"reading partitions of {dev}")
        yield dev
    finally:
        if partscan:
            subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@contextlib.contextmanager
def _mounted(image: Path, fstype: str, *, readonly: bool, offset: int = 0, size: int = 0) -> Iterator[Path]:
    """Mount a filesystem image (or a slice of one) on a private temporary directory.

    The loop device is set up explicitly: mount's own ``-o loop`` refuses a slice of a file that is
    attached to another loop device already (as a disk under repair is).
    """
    loop = ["losetup", "-f", "--show"] + (["-r"] if readonly else [])
    if offset:
        loop += ["-o", str(offset)]
    if size:
        loop += ["--sizelimit", str(size)]
    dev = _run([*loop, str(image)], what=f"attaching {image.name}").strip()
    opts = ["ro"] + (["norecovery", "nouuid"] if fstype == "xfs" else ["noload"]) if readonly else []
    if not readonly and fstype == "xfs":
        opts.append("nouuid")
    mnt = Path(tempfile.mkdtemp(prefix="img-mnt-"))
    try:
        _run(["mount", "-t", fstype, *(["-o", ",".join(opts)] if opts else []), dev, str(mnt)],
             what=f"mounting {image.name}")
        try:
            yield mnt
        finally:
            _run(["umount", str(mnt)], what=f"unmounting {image.name}")
    finally:
        mnt.rmdir()
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def _make_fs(part: Path, size_mib: int, fstype: str, label: str, tree: Path | None) -> None:
    """Create a filesystem image file of size_mib holding tree (xattrs kept)."""
    part.unlink(missing_ok=True)
    with part.open("wb") as fh:
        fh.truncate(size_mib * MIB)
    if fstype == "ext4":
        cmd = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0"]
        if tree is not None:
            cmd += ["-d", str(tree)]
        _run([*cmd, str(part)], what=f"creating the {label} ext4 filesystem")
    elif fstype == "xfs":
        if size_mib < XFS_MIN_MIB:
            raise ImageError(f"an XFS {label} filesystem needs at least {XFS_MIN_MIB} MiB, got {size_mib} MiB")
        _run(["mkfs.xfs", "-q", "-f", "-L", label, str(part)], what=f"creating the {label} XFS filesystem")
        if tree is not None:
            with _mounted(part, "xfs", readonly=False) as mnt:
                _copy_tree(tree, mnt)
    elif fstype == "vfat":
        _run(["mkfs.vfat", "-n", label, str(part)], what="creating the EFI system partition")
    else:
        raise ImageError(f"unsupported filesystem {fstype!r}")


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a tree with owners, modes, hard links and every extended attribute (SELinux labels too)."""
    tar = ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-cpf", "-", "-C", str(src), "."]
    untar = ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", "-", "-C", str(dst)]
    with subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as producer:
        consumer = subprocess.run(untar, stdin=producer.stdout, capture_output=True, check=False)
        _, err = producer.communicate()
    if producer.returncode != 0 or consumer.returncode != 0:
        raise ImageError(f"copying {src} failed: {(err or consumer.stderr).decode(errors='replace').strip()[-300:]}")


def _split_boot(tree: Path, work: Path) -> tuple[Path, Path | None]:
    """For a separate /boot: (root tree without /boot contents, /boot tree). Hard links keep it cheap."""
    boot = tree / "boot"
    if not boot.is_dir() or not any(boot.iterdir()):
        return tree, None
    stage = work / "root-tree"
    linked = subprocess.run(["cp", "-al", str(tree), str(stage)], capture_output=True, check=False)
    if linked.returncode != 0:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        _copy_tree(tree, stage)
    shutil.rmtree(stage / "boot")
    (stage / "boot").mkdir(mode=0o755)
    return stage, boot


def _write_table(disk: Path, layout: Layout, parts: list[tuple[str, int, int]]) -> None:
    if layout.table == "gpt":
        cmd = ["sgdisk", "-o"]
        types = {"efi": "ef00", "boot": "8300", "root": "8e00" if layout.lvm else "8300"}
        names = {"efi": "EFI System Partition", "boot": "boot", "root": "root"}
        for num, (role, start, size) in enumerate(parts, 1):
            first = start * MIB // SECTOR
            last = (start + size) * MIB // SECTOR - 1
            cmd += [f"-n{num}:{first}:{last}", f"-t{num}:{types[role]}", f"-c{num}:{names[role]}"]
        _run([*cmd, str(disk)], what="writing the GPT")
    else:
        lines = ["label: dos", "unit: sectors"]
        for role, start, size in parts:
            kind = "8e" if role == "root" and layout.lvm else "83"
            boot_flag = ", bootable" if role == "boot" or (role == "root" and not layout.separate_boot) else ""
            lines.append(f"start={start * MIB // SECTOR}, size={size * MIB // SECTOR}, type={kind}{boot_flag}")
        _run(["sfdisk", "-q", str(disk)], what="writing the MBR partition table", input_text="\n".join(lines) + "\n")


def _lvm_pv(part: Path, fs_image: Path) -> None:
    """Turn the partition file into an LVM PV with VG rootvg and a linear LV rootlv holding fs_image."""
    with _loop(part) as dev:
        cfg = _lvm_config(dev)
        _run(["pvcreate", "--config", cfg, "-ff", "-y", dev], what="creating the LVM physical volume")
        _run(["vgcreate", "--config", cfg, VG_NAME, dev], what="creating the volume group")
        meta = part.with_suffix(".vg")
        _run(["vgcfgbackup", "--config", cfg, "-f", str(meta), VG_NAME], what="reading the volume group")
        text = meta.read_text()
        pe_count = int(_field(text, "pe_count"))
        extent_sectors = int(_field(text, "extent_size"))
        pe_start = int(_field(text, "pe_start"))
        lv_id = "-".join(
            "".join(secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(n))
            for n in (6, 4, 4, 4, 4, 4, 6)
        )
        lv = (
            f"\tlogical_volumes {{\n\t\t{LV_NAME} {{\n\t\t\tid = \"{lv_id}\"\n"
            '\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n'
            f"\t\t\tsegment1 {{\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = {pe_count}\n"
            '\t\t\t\ttype = "striped"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = ["pv0", 0]\n'
            "\t\t\t}\n\t\t}\n\t}\n"
        )
        end = text.rstrip().rfind("}")
        seqno = int(_field(text, "seqno"))
        text = re.sub(r"seqno = \d+", f"seqno = {seqno + 1}", text[:end] + lv + text[end:], count=1)
        meta.write_text(text)
        # vgcfgrestore only writes metadata; it warns that it cannot check for active volumes (no dm).
        _run(["vgcfgrestore", "--config", cfg, "-f", str(meta), VG_NAME], what="adding the logical volume")
        meta.unlink()
    lv_bytes = pe_count * extent_sectors * SECTOR
    if fs_image.stat().st_size > lv_bytes:
        raise ImageError("the root filesystem does not fit in the logical volume")
    _dd(fs_image, part, pe_start * SECTOR)


def _field(text: str, name: str) -> str:
    found = re.search(rf"\b{name}\s*=\s*(\d+)", text)
    if not found:
        raise ImageError(f"LVM metadata has no {name}")
    return found.group(1)


def _dd(src: Path, dst: Path, offset: int) -> None:
    """Copy src into dst at a byte offset (MiB-aligned), keeping holes."""
    if offset % (64 * 1024):
        raise ImageError(f"offset {offset} is not 64 KiB aligned")
    seek = f"seek={offset // (64 * 1024)}"
    _run(
        ["dd", f"if={src}", f"of={dst}", "bs=64K", seek, "conv=sparse,notrunc", "status=none"],
        what=f"writing {src.name} into {dst.name}",
    )


def build_disk(path: Path, tree: Path, layout: Layout = Layout(), size_mb: int = 512) -> Path:
    """Build a sparse raw disk whose root filesystem holds `tree` (and /boot, when separate, its /boot)."""
    if not tree.is_dir():
        raise ImageError(f"root tree {tree} is not a directory")
    parts = layout.partitions_mib(size_mb)
    if parts[-1][2] < 32:
        raise ImageError(f"a {size_mb} MiB disk is too small for layout {layout.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=path.parent))
    try:
        root_tree, boot_tree = _split_boot(tree, work) if layout.separate_boot else (tree, None)
        tmp_disk = work / "disk.raw"
        with tmp_disk.open("wb") as fh:
            fh.truncate(size_mb * MIB)
        _write_table(tmp_disk, layout, parts)
        for role, start, size in parts:
            part = work / f"{role}.img"
            if role == "efi":
                _make_fs(part, size, "vfat", "EFI", None)
            elif role == "boot":
                _make_fs(part, size, "ext4", "boot", boot_tree if boot_tree is not None else _empty(work))
            elif layout.lvm:
                fs = work / "rootlv.img"
                # the PV header and metadata take the first MiB of the partition
                _make_fs(fs, size - 4, layout.root_fs, "root", root_tree)
                with part.open("wb") as fh:
                    fh.truncate(size * MIB)
                _lvm_pv(part, fs)
                fs.unlink()
            else:
                _make_fs(part, size, layout.root_fs, "root", root_tree)
            _dd(part, tmp_disk, start * MIB)
            part.unlink()
        tmp_disk.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _LOCATIONS.pop(str(path.resolve()), None)
    return path


def _empty(work: Path) -> Path:
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    return empty


def copy_disk(src: Path, dst: Path) -> None:
    """A real, sparse copy of a disk image (a reflink where the filesystem can)."""
    if not src.is_file():
        raise ImageError(f"source disk {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    _run(["cp", "--sparse=always", "--reflink=auto", str(src), str(tmp)], what=f"copying {src.name}")
    tmp.rename(dst)
    _LOCATIONS.pop(str(dst.resolve()), None)


# ---------------------------------------------------------------- reading disks


FsType = Literal["ext4", "xfs"]


@dataclass(frozen=True)
class FsLocation:
    """Where a filesystem sits inside a disk image."""

    offset: int
    size: int
    fstype: FsType


_LOCATIONS: dict[str, tuple[tuple[int, int], FsLocation]] = {}


def partitions(disk: Path) -> list[tuple[int, int]]:
    """(byte offset, byte size) of each partition from a GPT or MBR; [] when the disk has no table."""
    with disk.open("rb") as fh:
        head = fh.read(34 * SECTOR)
        if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
            return []
        mbr = [struct.unpack_from("<B3xB3xII", head, 446 + 16 * i) for i in range(4)]
        if head[SECTOR : SECTOR + 8] == b"EFI PART" or any(kind == 0xEE for _, kind, _, _ in mbr):
            entries_lba, count, entry_size = struct.unpack_from("<Q I I", head, SECTOR + 72)
            fh.seek(entries_lba * SECTOR)
            table = fh.read(count * entry_size)
            out = []
            for i in range(count):
                entry = table[i * entry_size : (i + 1) * entry_size]
                if len(entry) < 48 or entry[:16] == bytes(16):
                    continue
                first, last = struct.unpack_from("<QQ", entry, 32)
                out.append((first * SECTOR, (last - first + 1) * SECTOR))
            return out
    return [(start * SECTOR, count * SECTOR) for _, kind, start, count in mbr if kind not in (0, 0x05, 0x0F)]


def _signature(fh: BinaryIO, offset: int) -> str | None:
    fh.seek(offset)
    block = fh.read(4096)
    if block[:4] == b"XFSB":
        return "xfs"
    if block[1080:1082] == b"\x53\xef":
        return "ext4"
    for sector in range(4):
        if block[sector * SECTOR : sector * SECTOR + 8] == b"LABELONE":
            return "lvm"
    return None


def _lvm_volumes(fh: BinaryIO, pv_offset: int) -> list[tuple[str, int, int]]:
    """(LV name, byte offset within the disk, byte size) for each linear LV of the PV at pv_offset."""
    fh.seek(pv_offset)
    head = fh.read(4096)
    label_at = next(s for s in range(4) if head[s * SECTOR : s * SECTOR + 8] == b"LABELONE") * SECTOR
    (pvh_off,) = struct.unpack_from("<I", head, label_at + 20)
    pos = label_at + pvh_off + 32 + 8
    while struct.unpack_from("<QQ", head, pos) != (0, 0):  # data areas
        pos += 16
    pos += 16
    mda_offset, _ = struct.unpack_from("<QQ", head, pos)  # first metadata area
    fh.seek(pv_offset + mda_offset)
    mda = fh.read(512)
    if mda[4:20] != b" LVM2 x[5A%r0N*>":
        raise ImageError("LVM metadata area not found on the physical volume")
    text_offset, text_size = struct.unpack_from("<QQ", mda, 40)
    fh.seek(pv_offset + mda_offset + text_offset)
    text = fh.read(text_size).split(b"\x00", 1)[0].decode(errors="replace")
    extent = int(_field(text, "extent_size")) * SECTOR
    pe_start = int(_field(text, "pe_start")) * SECTOR
    volumes = []
    lv_section = text.split("logical_volumes {", 1)
    if len(lv_section) == 2:
        for name, body in _lvm_blocks(lv_section[1]):
            segments = re.findall(r"segment\d+ \{([^}]*)\}", body)
            if len(segments) != 1 or 'type = "striped"' not in segments[0]:
                continue
            first = re.search(r'stripes = \[\s*"pv0",\s*(\d+)\s*\]', segments[0])
            if first and re.search(r"stripe_count = 1\b", segments[0]):
                count = int(_field(segments[0], "extent_count"))
                volumes.append((name, pv_offset + pe_start + int(first.group(1)) * extent, count * extent))
    if not volumes:
        raise ImageError("the LVM volume group holds no linear logical volume that can be read offline")
    return volumes


def _lvm_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(name, body) of each top-level `name { ... }` block in LVM2 text metadata, until the closing brace."""
    depth, name, start = 0, "", 0
    for match in re.finditer(r"([A-Za-z0-9_.+-]+)\s*\{|\}", text):
        if match.group(0) == "}":
            depth -= 1
            if depth < 0:
                return
            if depth == 0:
                yield name, text[start : match.start()]
        else:
            if depth == 0:
                name, start = match.group(1), match.end()
            depth += 1


def filesystems(disk: Path) -> list[FsLocation]:
    """Every ext4/XFS filesystem on the disk: whole disk, partitions, and linear LVM volumes."""
    if not disk.is_file():
        raise ImageError(f"disk image {disk} does not exist")
    size = disk.stat().st_size
    found: list[FsLocation] = []
    with disk.open("rb") as fh:
        slices = partitions(disk) or [(0, size)]
        for offset, length in slices:
            kind = _signature(fh, offset)
            if kind == "lvm":
                for _, lv_off, lv_size in _lvm_volumes(fh, offset):
                    lv_kind = _signature(fh, lv_off)
                    if lv_kind in ("ext4", "xfs"):
                        found.append(FsLocation(lv_off, lv_size, cast(FsType, lv_kind)))
            elif kind in ("ext4", "xfs"):
                found.append(FsLocation(offset, length, cast(FsType, kind)))
    return found


def root_filesystem(disk: Path) -> FsLocation:
    """The filesystem holding /etc (the root filesystem), cached per disk version."""
    if not disk.is_file():
        raise ImageError(f"disk image {disk} does not exist")
    key = str(disk.resolve())
    st = disk.stat()
    stamp = (st.st_ino, st.st_size)
    cached = _LOCATIONS.get(key)
    if cached and cached[0] == stamp:
        return cached[1]
    for loc in filesystems(disk):
        if _is_dir(disk, loc, "/etc"):
            _LOCATIONS[key] = (stamp, loc)
            return loc
    raise ImageError(f"no root filesystem (one holding /etc) found on {disk}")


def _check_path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in '"\n\r\x00') or "/../" in path + "/":
        raise ImageError(f"invalid path {path!r}: give an absolute path without quotes or '..'")
    return path


def _debugfs(disk: Path, loc: FsLocation, request: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["debugfs", "-R", request, f"{disk}?offset={loc.offset}"], capture_output=True, timeout=30, check=False
    )


def _not_found(stderr: bytes) -> bool:
    return b"File not found" in stderr or b"not a directory" in stderr


def _is_dir(disk: Path, loc: FsLocation, path: str) -> bool:
    if loc.fstype == "ext4":
        proc = _debugfs(disk, loc, f'stat "{path}"')
        return b"Type: directory" in proc.stdout
    with _mounted(disk, "xfs", readonly=True, offset=loc.offset, size=loc.size) as mnt:
        return (mnt / path.lstrip("/")).is_dir()


def read_file(disk: Path, path: str) -> bytes | None:
    """The content of `path` on the disk's root filesystem, or None when it does not exist."""
    _check_path(path)
    loc = root_filesystem(disk)
    if loc.fstype == "ext4":
        proc = _debugfs(disk, loc, f'stat "{path}"')
        if _not_found(proc.stderr) or b"Type: regular" not in proc.stdout:
            return None
        return _debugfs(disk, loc, f'cat "{path}"').stdout
    with _mounted(disk, "xfs", readonly=True, offset=loc.offset, size=loc.size) as mnt:
        target = mnt / path.lstrip("/")
        return target.read_bytes() if target.is_file() else None


def list_dir(disk: Path, path: str) -> list[str] | None:
    """Sorted entry names of a directory on the root filesystem, or None when it is not a directory."""
    _check_path(path)
    loc = root_filesystem(disk)
    if loc.fstype == "ext4":
        proc = _debugfs(disk, loc, f'ls -p "{path}"')
        if _not_found(proc.stderr):
            return None
        names = []
        for line in proc.stdout.decode(errors="surrogateescape").splitlines():
            fields = line.split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                names.append(fields[5])
        return sorted(names)
    with _mounted(disk, "xfs", readonly=True, offset=loc.offset, size=loc.size) as mnt:
        target = mnt / path.lstrip("/")
        return sorted(os.listdir(target)) if target.is_dir() else None


def file_xattr(disk: Path, path: str, name: str = "security.selinux") -> bytes | None:
    """The raw value of an extended attribute of a file on the root filesystem (None: file or attribute absent)."""
    _check_path(path)
    if not re.fullmatch(r"[a-z]+\.[A-Za-z0-9_.-]+", name):
        raise ImageError(f"invalid attribute name {name!r}")
    loc = root_filesystem(disk)
    if loc.fstype == "ext4":
        with tempfile.NamedTemporaryFile(prefix="xattr-") as out:
            proc = _debugfs(disk, loc, f'ea_get -f {out.name} "{path}" {name}')
            if _not_found(proc.stderr) or proc.stderr.count(b"\n") > 1:
                return None
            value = Path(out.name).read_bytes()
            return value if value or b"not found" not in proc.stderr else None
    with _mounted(disk, "xfs", readonly=True, offset=loc.offset, size=loc.size) as mnt:
        target = mnt / path.lstrip("/")
        if not target.exists():
            return None
        try:
            return os.getxattr(target, name, follow_symlinks=False)
        except OSError:
            return None


def write_file(disk: Path, path: str, data: bytes) -> None:
    """Overwrite (or create) a file on the disk's root filesystem in place, keeping its inode and labels."""
    _check_path(path)
    loc = root_filesystem(disk)
    with _mounted(disk, loc.fstype, readonly=False, offset=loc.offset, size=loc.size) as mnt:
        target = mnt / path.lstrip("/")
        if not target.parent.is_dir():
            raise ImageError(f"directory {Path(path).parent} does not exist on {disk.name}")
        with target.open("r+b" if target.exists() else "wb") as fh:
            fh.truncate(0)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


# ---------------------------------------------------------------- the bootable Debian image

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = (
    "systemd-sysv", "udev", "linux-image-cloud-amd64", "initramfs-tools", "selinux-basics",
    "selinux-policy-default", "lvm2", "xfsprogs", "e2fsprogs", "fdisk", "gdisk", "attr",
)
IMAGE_RECIPE_VERSION = "2"
DEBIAN_IMAGE_MB = 2048


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where expensive images are kept: cache_dir, else $CACHE_DIR/images, else ~/.cache/selinux-remediator/images."""
    if cache_dir is not None:
        return cache_dir
    base = os.environ.get("CACHE_DIR")
    return Path(base) / "images" if base else Path.home() / ".cache" / "selinux-remediator" / "images"


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _recipe_hash() -> str:
    recipe = {"suite": DEBIAN_SUITE, "packages": DEBIAN_PACKAGES, "version": IMAGE_RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _apt_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (read at run time), or None for debootstrap's default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if not src.is_file():
            continue
        text = src.read_text(errors="replace")
        deb822 = re.search(r"^URIs:\s*(\S+)", text, re.M)
        if deb822 and "debian" in deb822.group(1) and "security" not in deb822.group(1):
            return deb822.group(1)
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1] and "debian" in words[1]:
                return words[1]
    return None


@dataclass(frozen=True)
class DebianImage:
    """A built Debian SELinux image and what qemu needs to boot it."""

    disk: Path
    kernel: Path
    initrd: Path
    layout: Layout

    @property
    def cmdline(self) -> str:
        """A kernel command line that boots this disk (as /dev/vda) with SELinux and a serial console."""
        return f"root={self.layout.root_device()} rw console=ttyS0 security=selinux"


def debian_rootfs(cache_dir: Path | None = None) -> Path:
    """The labelled Debian 12 SELinux root tree (debootstrap once, cached by a hash of the recipe)."""
    base = cache_root(cache_dir) / f"debian12-selinux-{_recipe_hash()}"
    tree = base / "rootfs"
    with _locked(base.parent / f"{base.name}.lock"):
        if (base / "rootfs.done").exists():
            return tree
        base.mkdir(parents=True, exist_ok=True)
        partial = base / "rootfs.partial"
        if partial.exists():
            shutil.rmtree(partial)
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", DEBIAN_SUITE, str(partial)]
        mirror = _apt_mirror()
        _run(cmd + ([mirror] if mirror else []), what="debootstrap of Debian 12", timeout=1800)
        _configure_debian(partial)
        if tree.exists():
            shutil.rmtree(tree)
        partial.rename(tree)
        (base / "rootfs.done").touch()
    return tree


def _configure_debian(root: Path) -> None:
    """Serial getty, SELinux enforcing with the Debian policy, locked root, no caches; labelled offline."""
    (root / "etc/hostname").write_text("debian-selinux\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian-selinux\n")
    (root / "etc/selinux/config").write_text(
        "# This file controls the state of SELinux on the system.\n"
        "# SELINUX= can take one of these three values:\n"
        "# enforcing - SELinux security policy is enforced.\n"
        "# permissive - SELinux prints warnings instead of enforcing.\n"
        "# disabled - No SELinux policy is loaded.\n"
        "SELINUX=enforcing\n"
        "# SELINUXTYPE= can take one of these two values:\n"
        "# default - equivalent to the old strict and targeted policies\n"
        "# mls     - Multi-Level Security (for military and educational use)\n"
        "# src     - Custom policy built from source\n"
        "SELINUXTYPE=default\n"
    )
    getty = root / "etc/systemd/system/getty.target.wants"
    getty.mkdir(parents=True, exist_ok=True)
    link = getty / "serial-getty@ttyS0.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/serial-getty@.service")
    # report the SELinux state on the console once the system is up, so a boot proves enforcing mode
    (root / "etc/systemd/system/selinux-report.service").write_text(
        "[Unit]\nDescription=Report the SELinux state on the serial console\nAfter=multi-user.target\n\n"
        "[Service]\nType=oneshot\nStandardOutput=tty\nTTYPath=/dev/ttyS0\n"
        "ExecStart=/bin/sh -c 'echo \"selinux-report: mode=$(cat /sys/fs/selinux/enforce 2>/dev/null || echo none)"
        " policy=$(cat /sys/fs/selinux/policyvers 2>/dev/null || echo none)\"'\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    rlink = wants / "selinux-report.service"
    if not rlink.exists():
        rlink.symlink_to("/etc/systemd/system/selinux-report.service")
    _install_rescue_runner(root)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt/archives"):
        target = root / junk
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name not in {"lock", "partial"}:
                    child.unlink()
    for lists in (root / "var/lib/apt/lists").glob("*_Packages"):
        lists.unlink()
    _run(["chroot", str(root), "passwd", "-l", "root"], what="locking the root password")
    proc = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)], what="mounting /proc for labelling")
    try:
        _run(
            ["chroot", str(root), "setfiles", "-F", "/etc/selinux/default/contexts/files/file_contexts", "/"],
            what="labelling the root tree (setfiles)",
        )
    finally:
        subprocess.run(["umount", str(proc)], capture_output=True, check=False)


RUNNER_UNIT = """\
[Unit]
Description=Run a job handed to this rescue VM on its third disk
ConditionKernelCommandLine=rescue.job=1
After=local-fs.target systemd-udev-settle.service
Wants=systemd-udev-settle.service

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/sbin/rescue-job

[Install]
WantedBy=multi-user.target
"""

RUNNER_SCRIPT = """\
#!/bin/sh
# Runs /job/job.sh from the job disk (/dev/vdc), keeps its stdout, stderr and exit code on that
# disk, marks the end on the console and powers the VM off.
mkdir -p /job
if mount /dev/vdc /job; then
    sh /job/job.sh > /job/stdout 2> /job/stderr
    echo $? > /job/exitcode
    sync
    umount /job
    echo "rescue-job: done"
else
    echo "rescue-job: no job disk"
fi
systemctl --no-block poweroff
"""


def _install_rescue_runner(root: Path) -> None:
    """A unit that runs a job from a third disk when the kernel command line says rescue.job=1."""
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "rescue-job").write_text(RUNNER_SCRIPT)
    (sbin / "rescue-job").chmod(0o755)
    (root / "etc/systemd/system/rescue-job.service").write_text(RUNNER_UNIT)
    link = root / "etc/systemd/system/multi-user.target.wants/rescue-job.service"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to("/etc/systemd/system/rescue-job.service")


def debian_image(cache_dir: Path | None = None, layout: Layout = Layout()) -> DebianImage:
    """A bootable Debian 12 SELinux disk (policy type ``default``) with its kernel and initrd, cached."""
    tree = debian_rootfs(cache_dir)
    base = tree.parent
    disk = base / f"{layout.name}.raw"
    kernel, initrd = base / "vmlinuz", base / "initrd.img"
    with _locked(base.parent / f"{base.name}.lock"):
        if not kernel.exists() or not initrd.exists():
            vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
            initrds = sorted((tree / "boot").glob("initrd.img-*"))
            if not vmlinuz or not initrds:
                raise ImageError("the Debian tree has no kernel or initrd in /boot")
            shutil.copyfile(initrds[-1], base / "initrd.img.tmp")
            (base / "initrd.img.tmp").rename(initrd)
            shutil.copyfile(vmlinuz[-1], base / "vmlinuz.tmp")
            (base / "vmlinuz.tmp").rename(kernel)
        if not disk.exists():
            fstab = [f"{layout.root_device()}  /  {layout.root_fs}  defaults  0 1"]
            boot = layout.boot_device()
            if boot:
                fstab.append(f"{boot}  /boot  ext4  defaults  0 2")
            fstab_path = tree / "etc/fstab"
            label = os.getxattr(fstab_path, "security.selinux") if fstab_path.exists() else None
            fstab_path.write_text("\n".join(fstab) + "\n")
            if label:
                os.setxattr(fstab_path, "security.selinux", label)
            build_disk(disk.with_suffix(".tmp"), tree, layout, DEBIAN_IMAGE_MB)
            disk.with_suffix(".tmp").rename(disk)
    return DebianImage(disk, kernel, initrd, layout)


def debian_selinux_image(cache_dir: Path | None = None, layout: Layout = Layout()) -> Path:
    """Path of the cached bootable Debian 12 SELinux disk for `layout` (see debian_image for the kernel)."""
    return debian_image(cache_dir, layout).disk
