"""Differential test: the local Azure's boot model against real qemu boots of the same disk.

Each configuration is written into a copy of the Debian 12 SELinux image (installed policy type
``default``). The disk is then judged twice: the boot model reads its facts off the image and writes the
transcript the local Azure would put in the VM's serial log, and qemu boots it for real. The detector's
verdict on the model's transcript must equal its verdict on the genuine console, policy type included.
The real boot is the truth: when they differ, the model is wrong.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from localazure import bootmodel, images, qemu
from remediation import detect
from remediation.model import Finding, Verdict

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.disk]

CONFIG = "/etc/selinux/config"
HOSTNAME = "debian-selinux"  # the image's own hostname, so both logs name the same machine
BOOT_TIMEOUT = 180.0  # the slowest outcome ends at ~100 s: udev is broken and systemd waits 90 s for devices


@dataclass(frozen=True)
class Case:
    """One configuration of the matrix and the verdict a real boot of it gives."""

    selinux: str
    selinux_type: str
    expected: Verdict
    labeled: bool = True


# `expected` was measured on real boots; it guards against both sides agreeing on a boot that went nowhere.
MATRIX: dict[str, Case] = {
    "valid": Case("enforcing", "default", Verdict.BOOTED),
    "wrong_type": Case("enforcing", "disabled", Verdict.SELINUX_POLICY_FAILURE),
    "typo_in_selinux": Case("enforcng", "default", Verdict.BOOTED),
    "permissive_missing_policy": Case("permissive", "disabled", Verdict.SELINUX_POLICY_MISSING),
    "missing_policy_package": Case("enforcing", "mls", Verdict.SELINUX_POLICY_FAILURE),
    "unlabeled_config": Case("enforcing", "default", Verdict.OTHER_BOOT_FAILURE, labeled=False),
}

_LOADED = "Successfully loaded SELinux policy"
# Once the serial getty has lost its device, no login prompt can follow on the console.
_GETTY_GONE = re.compile(r"Dependency failed for serial-getty@ttyS0|Failed to start serial-getty@ttyS0")


def _decided(text: str) -> bool:
    """True once the console shows how this boot ends: a login prompt, the freeze, or a dead end."""
    return (qemu.login_prompt_seen(text) or qemu.freeze_seen(text) or "You are in emergency mode" in text
            or _GETTY_GONE.search(text) is not None)


def _configure(disk: Path, case: Case) -> None:
    """Rewrite the SELINUX= and SELINUXTYPE= lines of the image's config in place (inode and label kept)."""
    original = images.read_file(disk, CONFIG)
    assert original is not None and b"\nSELINUX=enforcing\n" in original and b"\nSELINUXTYPE=default\n" in original
    text = re.sub(rb"(?m)^SELINUX=.*$", b"SELINUX=" + case.selinux.encode(), original)
    text = re.sub(rb"(?m)^SELINUXTYPE=.*$", b"SELINUXTYPE=" + case.selinux_type.encode(), text)
    images.write_file(disk, CONFIG, text)
    if not case.labeled:
        _remove_label(disk, CONFIG)
    assert images.read_file(disk, CONFIG) == text
    assert (images.file_xattr(disk, CONFIG) == images.CONFIG_LABEL) is case.labeled


def _remove_label(disk: Path, path: str) -> None:
    """Drop a file's security.selinux attribute, as an edit from a rescue VM without SELinux can leave it."""
    loc = images.root_filesystem(disk)
    assert loc.fstype == "ext4", "the default Debian image has an ext4 root"
    proc = subprocess.run(["debugfs", "-w", "-R", f"ea_rm {path} security.selinux", f"{disk}?offset={loc.offset}"],
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert images.file_xattr(disk, path) is None


def _model_finding(disk: Path) -> tuple[bootmodel.Transcript, Finding]:
    """What the local Azure writes into the serial log when a VM with this OS disk starts, and its verdict."""
    unreadable: list[Exception] = []
    transcript = bootmodel.boot_disk(disk, "healthy", HOSTNAME, on_unreadable=unreadable.append)
    assert not unreadable, f"the model could not read the disk: {unreadable}"
    return transcript, detect.analyze(transcript.text)


def _describe(finding: Finding) -> str:
    lines = "\n".join(f"  {e.line}: {e.text}" for e in finding.evidence)
    return f"{finding.verdict} ({finding.signature}, policy {finding.policy_type}): {finding.reason}\n{lines}"


@pytest.fixture(scope="module")
def debian() -> images.DebianImage:
    """The cached bootable Debian 12 SELinux image (default layout: GPT, /boot, ext4 root)."""
    return images.debian_image()


@pytest.mark.parametrize("name", list(MATRIX))
def test_boot_model_agrees_with_a_real_boot(name: str, debian: images.DebianImage, tmp_path: Path) -> None:
    case = MATRIX[name]
    disk = tmp_path / "os-disk.raw"
    images.copy_disk(debian.disk, disk)
    _configure(disk, case)

    transcript, model = _model_finding(disk)

    # snapshot: the guest's writes (journal, random seed) stay out of the disk the model has just read
    real_boot = qemu.boot(disk, debian.kernel, debian.initrd, cmdline=debian.cmdline, timeout=BOOT_TIMEOUT,
                          until=_decided, serial_log=tmp_path / "serial.log", snapshot=True)
    real = detect.analyze(real_boot.serial)

    context = (f"{name}: model outcome {transcript.outcome}\n model: {_describe(model)}\n"
               f" real ({real_boot.reason} after {real_boot.seconds:.0f} s): {_describe(real)}\n"
               f" real console tail:\n{real_boot.serial[-2000:]}")
    assert real_boot.reason == "matched", context
    assert real.verdict is case.expected, context
    assert model.verdict is real.verdict, context
    assert (model.policy_type, model.policy_path) == (real.policy_type, real.policy_path), context
    # beyond the verdict: both consoles agree on whether systemd got a policy loaded at all
    assert (_LOADED in transcript.text) is (_LOADED in real_boot.serial), context
    if real.verdict is Verdict.SELINUX_POLICY_FAILURE:
        assert real.policy_type == case.selinux_type, context
