"""What a Linux VM prints on its serial console when it boots, judged from its OS disk's content.

The rules are libselinux's and systemd's (see the project's facts file):

- libselinux reads /etc/selinux/config: `SELINUX=` is compared case-insensitively with the prefixes
  enforcing / permissive / disabled (anything else: not enforcing); `SELINUXTYPE=` is taken verbatim
  (default `targeted` only when the line is absent) and names /etc/selinux/<type>/policy/policy.<N>.
- systemd (PID 1) loads the policy early. Enforcing + no policy file for the type: it logs
  "Failed to load SELinux policy." and freezes. Permissive + no policy: it carries on, but cannot set up
  its labeling handle, so journald and the serial getty fail (the VM runs, broken).
- A config file without a security.selinux label is read fine before the policy is loaded (labels do
  not matter then), so the policy loads; afterwards every confined service that reads the config is
  denied (AVC `{ read }` on `unlabeled_t`): udev fails, local file systems never mount, and systemd
  drops to emergency mode, where sulogin cannot open the console (root locked). No login prompt, no
  agent. Observed on a real Debian 12 boot under qemu here (enforcing, policy `default`).

The transcript is realistic enough for a detector: kernel lines with timestamps, libselinux's own
message without one, systemd's lines, and the login prompt of a healthy boot.
"""

from __future__ import annotations

import enum
import itertools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

POLICY_VERSION = 33
_POLICY_FILE = re.compile(r"^policy\.(\d+)$")


class Outcome(enum.StrEnum):
    """How a boot ends."""

    BOOTED = "booted"
    SELINUX_FREEZE = "selinux_freeze"
    PERMISSIVE_MISSING_POLICY = "permissive_missing_policy"
    UNLABELED_CONFIG = "unlabeled_config"
    NO_OS = "no_os"  # the disk has no Linux root we can read: the VM never gets past the firmware

    @property
    def guest_runs(self) -> bool:
        """Whether the guest gets far enough to start its VM agent and send heartbeats.

        A permissive boot without a policy does not: measured under qemu, udev cannot label devices, the
        device jobs time out after 90 s and the boot ends in emergency mode.
        """
        return self is Outcome.BOOTED


@dataclass(frozen=True)
class SelinuxSpec:
    """How a disk's SELinux configuration is set up (the input of the image builder)."""

    mode: str
    policy_type: str
    installed: tuple[str, ...]
    labeled: bool = True


# The named breakages a scenario can give an OS disk, and what each one looks like on disk.
BREAKAGES: dict[str, SelinuxSpec] = {
    "healthy": SelinuxSpec("enforcing", "targeted", ("targeted",)),
    "selinuxtype_disabled": SelinuxSpec("enforcing", "disabled", ("targeted",)),
    "selinuxtype_typo": SelinuxSpec("enforcing", "targetd", ("targeted",)),
    "policy_package_missing": SelinuxSpec("enforcing", "mls", ("targeted",)),
    "permissive_missing_policy": SelinuxSpec("permissive", "disabled", ("targeted",)),
    "enforcing_nothing_installed": SelinuxSpec("enforcing", "targeted", ()),
    "unlabeled_config": SelinuxSpec("enforcing", "targeted", ("targeted",), labeled=False),
}


@dataclass(frozen=True)
class SelinuxFacts:
    """What libselinux and systemd will find on the disk at boot."""

    config_present: bool
    mode: str  # "enforcing" | "permissive" | "disabled" | "other"
    policy_type: str
    installed: tuple[str, ...]  # types with a policy/policy.N file
    config_labeled: bool | None = True  # None: unknown

    @classmethod
    def from_spec(cls, spec: SelinuxSpec) -> SelinuxFacts:
        return cls(True, parse_mode(spec.mode), spec.policy_type, spec.installed, spec.labeled)

    @property
    def policy_path(self) -> str:
        return f"/etc/selinux/{self.policy_type}/policy/policy.{POLICY_VERSION}"


def parse_mode(value: str) -> str:
    """libselinux's reading of SELINUX=: a case-insensitive prefix match."""
    low = value.strip().lower()
    for mode in ("enforcing", "permissive", "disabled"):
        if low.startswith(mode):
            return mode
    return "other"


def parse_config(text: str) -> tuple[str, str]:
    """(mode, policy type) from the text of /etc/selinux/config, as libselinux reads it.

    The mode (selinux_getenforcemode): the first line that starts exactly with `SELINUX=` (no leading
    space, case-sensitive tag) and whose value libselinux recognises; lines with other values are skipped.
    The type (init_selinux_config): leading space skipped, tag matched case-insensitively, the last line
    wins, trailing space stripped; `targeted` only when no line names one.
    """
    mode = "other"
    policy_type = "targeted"
    for raw in text.splitlines():
        if mode == "other" and raw.startswith("SELINUX="):
            mode = parse_mode(raw[len("SELINUX=") :])
        line = raw.lstrip()
        if line[: len("SELINUXTYPE=")].upper() == "SELINUXTYPE=":
            policy_type = line[len("SELINUXTYPE=") :].rstrip()
    return mode, policy_type


class DiskReader(Protocol):
    """Read files from a disk image without booting it (localazure.images provides the real one)."""

    def read_file(self, disk: Path, path: str) -> bytes | None: ...

    def list_dir(self, disk: Path, path: str) -> list[str] | None: ...

    def file_xattr(self, disk: Path, path: str, name: str) -> bytes | None: ...


class ImagesReader:
    """DiskReader backed by localazure.images (imported on first use)."""

    def read_file(self, disk: Path, path: str) -> bytes | None:
        from localazure import images

        result: bytes | None = images.read_file(disk, path)
        return result

    def list_dir(self, disk: Path, path: str) -> list[str] | None:
        from localazure import images

        result: list[str] | None = images.list_dir(disk, path)
        return result

    def file_xattr(self, disk: Path, path: str, name: str) -> bytes | None:
        from localazure import images

        result: bytes | None = images.file_xattr(disk, path, name)
        return result


def facts_from_disk(disk: Path, reader: DiskReader | None = None) -> SelinuxFacts | None:
    """Read the SELinux facts off a disk image; None when the disk has no readable Linux root."""
    rd = reader or ImagesReader()
    etc = rd.list_dir(disk, "/etc")
    if etc is None:
        return None
    raw = rd.read_file(disk, "/etc/selinux/config")
    installed: list[str] = []
    for entry in sorted(rd.list_dir(disk, "/etc/selinux") or []):
        files = rd.list_dir(disk, f"/etc/selinux/{entry}/policy") or []
        if any(_POLICY_FILE.match(f) for f in files):
            installed.append(entry)
    if raw is None:
        return SelinuxFacts(False, "disabled", "targeted", tuple(installed), None)
    mode, policy_type = parse_config(raw.decode("utf-8", "replace"))
    label = rd.file_xattr(disk, "/etc/selinux/config", "security.selinux")
    return SelinuxFacts(True, mode, policy_type, tuple(installed), label is not None and label != b"")


def predict(facts: SelinuxFacts | None, kernel_enforcing: bool = False) -> Outcome:
    """The outcome of a boot with these facts (kernel_enforcing: `enforcing=1` on the command line)."""
    if facts is None:
        return Outcome.NO_OS
    if not facts.config_present or facts.mode == "disabled":
        return Outcome.BOOTED
    enforcing = facts.mode == "enforcing" or kernel_enforcing
    has_policy = facts.policy_type in facts.installed
    if not has_policy:
        if enforcing:
            return Outcome.SELINUX_FREEZE
        if facts.mode == "permissive":
            return Outcome.PERMISSIVE_MISSING_POLICY
        return Outcome.BOOTED
    if enforcing and facts.config_labeled is False:
        return Outcome.UNLABELED_CONFIG
    return Outcome.BOOTED


@dataclass(frozen=True)
class Transcript:
    """One boot's serial output and how it ended."""

    text: str
    outcome: Outcome


class _Lines:
    """Builds kernel-style lines with increasing timestamps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.out: list[str] = []

    def k(self, text: str, step: float = 0.0137) -> None:
        self.t += step
        self.out.append(f"[{self.t:12.6f}] {text}")

    def raw(self, text: str) -> None:
        self.out.append(text)


KERNEL = "5.14.0-427.13.1.el9_4.x86_64"


def transcript(
    facts: SelinuxFacts | None, hostname: str, os_name: str = "Red Hat Enterprise Linux 9.4 (Plow)"
) -> Transcript:
    """The serial output of one boot of a disk with these facts."""
    outcome = predict(facts)
    out = _Lines()
    out.raw("")
    if outcome is Outcome.NO_OS:
        out.raw("BdsDxe: failed to load Boot0001 \"UEFI Microsoft Virtual Disk\": Not Found")
        out.raw("No bootable device found.")
        return Transcript("\n".join(out.out) + "\n", outcome)
    out.k(f"Linux version {KERNEL} (mockbuild@x86-64-01.build.eng.rdu2.redhat.com) (gcc (GCC) 11.4.1) #1 SMP",
          0.0)
    cmdline = (
        f"BOOT_IMAGE=(hd0,gpt3)/vmlinuz-{KERNEL} root=/dev/mapper/rootvg-rootlv ro "
        "crashkernel=1G-4G:192M,4G-64G:256M rd.lvm.lv=rootvg/rootlv console=tty1 console=ttyS0,115200n8"
    )
    out.k(f"Command line: {cmdline}", 0.0)
    out.k("x86/fpu: Supporting XSAVE feature 0x001: 'x87 floating point registers'", 0.0)
    out.k("BIOS-provided physical RAM map:", 0.0)
    out.k("Hypervisor detected: Microsoft Hyper-V", 0.0)
    out.k("DMI: Microsoft Corporation Virtual Machine/Virtual Machine, BIOS Hyper-V UEFI Release v4.1 08/23/2024")
    out.k("hv_vmbus: Vmbus version:5.3", 0.41)
    out.k("scsi 0:0:0:0: Direct-Access     Msft     Virtual Disk     1.0  PQ: 0 ANSI: 5", 0.22)
    out.k("sd 0:0:0:0: [sda] 67108864 512-byte logical blocks: (34.4 GB/32.0 GiB)", 0.01)
    out.k(" sda: sda1 sda2 sda3 sda4", 0.01)
    out.k("LSM: Initializing LSM: lockdown,capability,yama,integrity,selinux,bpf", 0.02)
    out.k("SELinux:  Initializing.", 0.001)
    out.k("Freeing unused kernel image (initmem) memory: 3312K", 0.3)
    out.k("Run /init as init process", 0.001)
    out.k("systemd[1]: systemd 252-32.el9_4 running in system mode (+PAM +AUDIT +SELINUX -APPARMOR +IMA)", 0.1)
    out.k("systemd[1]: Detected virtualization microsoft.", 0.002)
    out.k(f"systemd[1]: Hostname set to <{hostname}>.", 0.002)
    out.k("systemd[1]: Reached target Initrd Root Device.", 1.1)
    out.k("EXT4-fs (sda4): mounted filesystem with ordered data mode. Quota mode: none.", 0.2)
    out.k("systemd[1]: Switching root.", 0.3)
    out.k("systemd-journald[243]: Received SIGTERM from PID 1 (systemd).", 0.05)
    assert facts is not None
    if outcome is Outcome.SELINUX_FREEZE:
        out.raw(f"SELinux:  Could not open policy file <= {facts.policy_path}:  No such file or directory")
        out.k("systemd[1]: Failed to load SELinux policy.", 0.09)
        out.raw("[!!!!!!] Failed to load SELinux policy.")
        out.k("systemd[1]: Freezing execution.", 0.0001)
        return Transcript("\n".join(out.out) + "\n", outcome)
    if outcome is Outcome.PERMISSIVE_MISSING_POLICY:
        out.raw(f"SELinux:  Could not open policy file <= {facts.policy_path}:  No such file or directory")
        out.k("systemd[1]: systemd 252-32.el9_4 running in system mode (+PAM +AUDIT +SELINUX -APPARMOR)", 0.2)
        out.k("systemd[1]: Failed to initialize SELinux labeling handle: No such file or directory", 0.01)
        out.k("systemd[1]: Failed to start Journal Service.", 1.2)
        out.k("systemd[1]: Failed to start Serial Getty on ttyS0.", 2.1)
        out.raw("[ TIME ] Timed out waiting for device dev-disk-by\\x2dlabel-boot.device - /dev/disk/by-label/boot.")
        out.raw("[DEPEND] Dependency failed for boot.mount - /boot.")
        out.raw("[DEPEND] Dependency failed for local-fs.target - Local File Systems.")
        out.raw('You are in emergency mode. After logging in, type "journalctl -xb" to view')
        out.raw('system logs, "systemctl reboot" to reboot, "systemctl default" or "exit"')
        out.raw("to boot into default mode.")
        return Transcript("\n".join(out.out) + "\n", outcome)
    if facts.config_present and facts.mode != "disabled":
        out.k("audit: type=1403 audit(1700000000.123:2): auid=4294967295 ses=4294967295 lsm=selinux res=1", 0.3)
        out.k(f"systemd[1]: Successfully loaded SELinux policy in {174.3:.3f}ms.", 0.01)
    out.k("systemd[1]: systemd 252-32.el9_4 running in system mode (+PAM +AUDIT +SELINUX -APPARMOR)", 0.3)
    out.k("systemd[1]: Detected virtualization microsoft.", 0.002)
    if outcome is Outcome.UNLABELED_CONFIG:
        for pid, comm, domain in ((174, "lvm", "lvm_t"), (183, "udevadm", "udev_t"),
                                  (192, "systemd-sysuser", "systemd_sysusers_t"),
                                  (195, "systemd-tmpfile", "systemd_tmpfiles_t"), (198, "systemd-udevd", "udev_t")):
            out.k(f"audit: type=1400 audit(1700000010.427:{pid % 97}): avc:  denied  {{ read }} for  pid={pid} "
                  f'comm="{comm}" name="config" dev="sda4" ino=236 scontext=system_u:system_r:{domain}:s0 '
                  "tcontext=system_u:object_r:unlabeled_t:s0 tclass=file permissive=0", 1.1)
        out.k("systemd[1]: systemd-udev-settle.service: Failed with result 'exit-code'.", 0.3)
        out.k("systemd[1]: Failed to start systemd-udev-settle.service - Wait for udev To Complete Device "
              "Initialization.", 0.06)
        out.raw("[DEPEND] Dependency failed for local-fs.target - Local File Systems.")
        out.raw("[DEPEND] Dependency failed for serial-getty@ttyS0.service - Serial Getty on ttyS0.")
        out.raw('You are in emergency mode. After logging in, type "journalctl -xb" to view')
        out.raw('system logs, "systemctl reboot" to reboot, "systemctl default" or "exit"')
        out.raw("to boot into default mode.")
        out.raw("")
        out.raw("Cannot open access to console, the root account is locked.")
        out.raw("See sulogin(8) man page for more details.")
        out.raw("")
        out.raw("Press Enter to continue.")
        return Transcript("\n".join(out.out) + "\n", outcome)
    out.k("systemd[1]: Started systemd-journald.service - Journal Service.", 0.4)
    out.k("systemd[1]: Started waagent.service - Azure Linux Agent.", 1.9)
    out.k("systemd[1]: Started serial-getty@ttyS0.service - Serial Getty on ttyS0.", 0.3)
    out.k("systemd[1]: Reached target multi-user.target - Multi-User System.", 0.2)
    out.raw("")
    out.raw(os_name)
    out.raw(f"Kernel {KERNEL} on an x86_64")
    out.raw("")
    out.raw(f"{hostname} login: ")
    return Transcript("\n".join(out.out) + "\n", outcome)


def windows_transcript() -> Transcript:
    """What a Windows VM shows on its serial port (the Special Administration Console)."""
    text = (
        "\nComputer is booting, SAC started and initialized.\n\n"
        "Use the \"ch -?\" command for information about using channels.\n"
        "Use the \"?\" command for general help.\n\n\nSAC>\n"
        "EVENT: The CMD command is now available.\nSAC>\n"
    )
    return Transcript(text, Outcome.BOOTED)


def boot_disk(
    disk: Path | None,
    declared: str,
    hostname: str,
    reader: DiskReader | None = None,
    on_unreadable: Callable[[Exception], None] | None = None,
) -> Transcript:
    """The transcript of a boot: from the disk image when there is one, else from the declared state."""
    facts: SelinuxFacts | None
    if disk is not None:
        try:
            facts = facts_from_disk(disk, reader)
        except (OSError, RuntimeError, ValueError) as exc:
            if on_unreadable:
                on_unreadable(exc)
            facts = SelinuxFacts.from_spec(BREAKAGES.get(declared, BREAKAGES["healthy"]))
    else:
        facts = SelinuxFacts.from_spec(BREAKAGES.get(declared, BREAKAGES["healthy"]))
    return transcript(facts, hostname)



def real_boot_runner(directory: Path, timeout: float = 300.0) -> Callable[[Any, Any, Path], None]:
    """A boot runner that boots the OS disk under qemu and streams the genuine serial output into the VM's log.

    The disk must be a bootable copy of the Debian SELinux image (scenarios do that with real_boot on). The
    boot runs in a background thread; the VM shows running meanwhile. qemu is stopped once the console shows
    a login prompt or the SELinux freeze, when the VM is stopped, or at the timeout.
    """
    from localazure import images, qemu

    reason = qemu.unavailable_reason()
    if reason:
        raise RuntimeError(f"real boots are not possible here: {reason}")
    image = images.debian_image(None, images.Layout())
    counter = itertools.count(1)

    def run(state: Any, vm: Any, disk: Path) -> None:
        log_path = directory / "serial" / f"{vm.name}-{next(counter)}.log"
        seen = [0]
        vm.booting = True

        def until(text: str) -> bool:
            if len(text) > seen[0]:
                with state.lock:
                    vm.append_serial(text[seen[0]:])
                seen[0] = len(text)
            return (qemu.login_prompt_seen(text) or qemu.freeze_seen(text) or "You are in emergency mode" in text
                    or vm.power != "running")

        def work() -> None:
            try:
                result = qemu.boot(disk, image.kernel, image.initrd, cmdline=image.cmdline, timeout=timeout,
                                   until=until, serial_log=log_path)
                text, rest = result.serial, result.serial[seen[0]:]
                if qemu.login_prompt_seen(text):
                    outcome = Outcome.BOOTED
                elif qemu.freeze_seen(text):
                    outcome = Outcome.SELINUX_FREEZE
                elif "You are in emergency mode" in text and "unlabeled_t" in text:
                    outcome = Outcome.UNLABELED_CONFIG
                elif "Could not open policy file" in text:
                    outcome = Outcome.PERMISSIVE_MISSING_POLICY
                else:
                    outcome = Outcome.NO_OS
            except (qemu.QemuError, OSError) as exc:
                rest, outcome = f"\nThe boot could not run: {exc}\n", Outcome.NO_OS
            with state.lock:
                if vm.power == "running":
                    state.record_boot(vm, rest, outcome)

        threading.Thread(target=work, name=f"qemu-{vm.name}", daemon=True).start()

    return run


# Debian's policy is "default": the same breakages, written over the bootable image's config.
DEBIAN_CONFIGS: dict[str, str] = {
    "healthy": "SELINUX=enforcing\nSELINUXTYPE=default\n",
    "selinuxtype_disabled": "SELINUX=enforcing\nSELINUXTYPE=disabled\n",
    "selinuxtype_typo": "SELINUX=enforcing\nSELINUXTYPE=defualt\n",
    "policy_package_missing": "SELINUX=enforcing\nSELINUXTYPE=mls\n",
    "permissive_missing_policy": "SELINUX=permissive\nSELINUXTYPE=disabled\n",
}
