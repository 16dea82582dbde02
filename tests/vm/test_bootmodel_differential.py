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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from localazure import bootmodel, images, qemu
from remediation import detect
from remediation.model import Finding, Verdict

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.disk]

CONFIG = "/etc/selinux/config"
HOSTNAME = "debian-selinux"  # the image's own hostname, so both logs name the same machine
BOOT_TIMEOUT = 400.0  # the slowest ends at ~100 s alone (systemd waits 90 s for devices); six boots share the CPU


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


@dataclass
class Judged:
    """One configuration judged both ways."""

    transcript: bootmodel.Transcript
    model: Finding
    real_boot: qemu.BootResult
    real: Finding


def _judge(debian: images.DebianImage, case: Case, workdir: Path) -> Judged:
    disk = workdir / "os-disk.raw"
    images.copy_disk(debian.disk, disk)
    _configure(disk, case)
    transcript, model = _model_finding(disk)
    # snapshot: the guest's writes (journal, random seed) stay out of the disk the model has just read
    real_boot = qemu.boot(disk, debian.kernel, debian.initrd, cmdline=debian.cmdline, timeout=BOOT_TIMEOUT,
                          until=_decided, serial_log=workdir / "serial.log", snapshot=True)
    return Judged(transcript, model, real_boot, detect.analyze(real_boot.serial))


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Judged]:
    """Every configuration booted at once: two of them spend 90 s waiting for devices, not computing."""
    debian = images.debian_image()
    with ThreadPoolExecutor(max_workers=len(MATRIX)) as pool:
        futures = {name: pool.submit(_judge, debian, case, tmp_path_factory.mktemp(name))
                   for name, case in MATRIX.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(MATRIX))
def test_boot_model_agrees_with_a_real_boot(name: str, judged: dict[str, Judged]) -> None:
    case, j = MATRIX[name], judged[name]
    context = (f"{name}: model outcome {j.transcript.outcome}\n model: {_describe(j.model)}\n"
               f" real ({j.real_boot.reason} after {j.real_boot.seconds:.0f} s): {_describe(j.real)}\n"
               f" real console tail:\n{j.real_boot.serial[-2000:]}")
    assert j.real_boot.reason == "matched", context
    assert j.real.verdict is case.expected, context
    assert j.model.verdict is j.real.verdict, context
    assert (j.model.policy_type, j.model.policy_path) == (j.real.policy_type, j.real.policy_path), context
    # beyond the verdict: both consoles agree on whether systemd got a policy loaded at all
    assert (_LOADED in j.transcript.text) is (_LOADED in j.real_boot.serial), context
    if j.real.verdict is Verdict.SELINUX_POLICY_FAILURE:
        assert j.real.policy_type == case.selinux_type, context
