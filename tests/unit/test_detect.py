"""The boot-log detector: the corpus, every signature, boot cutting, decoding and tail reading."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from remediation import detect
from remediation.model import Verdict

SERIAL = Path(__file__).resolve().parents[1] / "data" / "serial"
EXPECTED: dict[str, dict[str, str]] = json.loads((SERIAL / "expected.json").read_text())

BANNER = "[    0.000000] Linux version 5.14.0-362.8.1.el9_3.x86_64 (mockbuild@builder) (gcc 11.4.1) #1 SMP"
CMDLINE = "[    0.000000] Command line: BOOT_IMAGE=(hd0,gpt3)/vmlinuz-5.14.0 root=/dev/sda3 ro console=ttyS0"
LOGIN = "rhel9vm login: "
FREEZE = "[    3.210000] systemd[1]: Failed to load SELinux policy."


def boot(*lines: str, t0: float = 1.0) -> list[str]:
    """A minimal kernel boot followed by `lines`."""
    kernel = [
        BANNER,
        CMDLINE,
        "[    0.000000] BIOS-provided physical RAM map:",
        f"[{t0:12.6f}] Run /init as init process",
    ]
    return kernel + list(lines)


def text(*boots: list[str]) -> str:
    return "\n".join(line for b in boots for line in b) + "\n"


# ---------------------------------------------------------------------------------------------- corpus


def test_corpus_is_complete() -> None:
    logs = {p.name for p in SERIAL.glob("*.log")}
    assert logs == set(EXPECTED), "every corpus log needs an expected verdict, and every entry a log"
    verdicts = {e["verdict"] for e in EXPECTED.values()}
    assert verdicts == {v.value for v in Verdict}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_verdict(name: str) -> None:
    expected = EXPECTED[name]
    finding = detect.analyze_path(SERIAL / name)
    assert finding.verdict.value == expected["verdict"], finding.reason
    if "policy_type" in expected:
        assert finding.policy_type == expected["policy_type"]
        assert finding.policy_path is not None
        assert finding.policy_path.startswith(f"/etc/selinux/{expected['policy_type']}/policy/policy")
    if finding.verdict is not Verdict.INCONCLUSIVE:
        assert finding.evidence, "a decided verdict names the lines that decided it"
        assert finding.signature is not None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_evidence_points_at_real_lines(name: str) -> None:
    """Evidence line numbers are the file's own line numbers (as `sed -n Np` shows them)."""
    raw_lines = (SERIAL / name).read_bytes().split(b"\n")
    finding = detect.analyze_path(SERIAL / name)
    for ev in finding.evidence:
        raw = raw_lines[ev.line - 1].decode("utf-8", "replace")
        cleaned = detect.clean_line(raw.replace("\r", " "))
        # a spliced line's evidence is the joined message: its first part is on the named line
        body = re.sub(r"^\[\s*\d+\.\d+\]", "", ev.text)
        head = re.split(r"\[\s*\d+\.\d{6}\]", body)[0]
        assert head.strip()[:20] in cleaned, (ev, cleaned)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_same_verdict_whatever_the_entry_point(name: str) -> None:
    data = (SERIAL / name).read_bytes()
    by_path = detect.analyze_path(SERIAL / name)
    assert detect.analyze_bytes(data) == by_path
    assert detect.analyze_stream(io.BytesIO(data)) == by_path
    assert detect.analyze(data.decode("utf-8", "replace")).verdict is by_path.verdict


# ---------------------------------------------------------------------------------------------- signatures

# One example per signature: adding a signature means adding its example here.
EXAMPLES: dict[str, str] = {
    "systemd_selinux_load_failed": "[    2.71] systemd[1]: Failed to load SELinux policy :No such file or directory",
    "init_selinux_halt": "Cannot load SELinux Policy. Machine is in enforcing mode. Halting now.",
    "initramfs_selinux_halt": "SELinux policy load failed and enforcing mode requested, halting now",
    "dracut_selinux_halt": "dracut Warning: Initial SELinux policy load failed and enforcing mode requested.",
    "load_policy_enforcing_failed": "load_policy:  Can't load policy and enforcing mode requested:  Invalid argument",
    "enforcing_without_policy_halt": "Enforcing mode requested but no policy loaded. Halting now.",
    "selinux_labeling_handle_failed": "systemd[1]: Failed to initialize SELinux labeling handle: Permission denied",
    "selinux_policy_file_missing": "SELinux:  Could not open policy file <= /etc/selinux/minimum/policy/policy.33:  "
    "No such file or directory",
    "journald_failed": "[FAILED] Failed to start systemd-journald.service - Journal Service.",
    "getty_failed": "[    5.1] systemd[1]: serial-getty@ttyS0.service: Main process exited, status=1/FAILURE",
    "systemd_freeze": "[!!!!!!] Failed to mount API filesystems, freezing.",
    "emergency_mode": 'You are in emergency mode. After logging in, type "journalctl -xb" to view',
    "maintenance_prompt": "Cannot open access to console, the root account is locked.",
    "root_device_missing": "Warning: /dev/disk/by-uuid/0b9a1c27-3e3a-4c47-9d56-2a3b3cbb4c0e does not exist",
    "dracut_initqueue_timeout": "[  128.3] dracut-initqueue[437]: Warning: dracut-initqueue timeout - starting timeout",
    "kernel_panic": "[    1.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
    "vfs_no_root": "[    1.9] Kernel panic: VFS: Unable to mount root fs on unknown-block(8,2)",
    "initramfs_shell": "(initramfs) ",
    "fsck_failed": "/dev/sda1: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.",
    "fstab_device_timeout": "[ TIME ] Timed out waiting for device /dev/disk/by-uuid/5e7c1a2b.",
    "grub_rescue": "grub rescue> ",
    "no_bootable_device": "No bootable device.",
    "login_prompt": "sles15sp5 login: ",
    "cloud_init_finished": "cloud-init[900]: Cloud-init v. 23.4 finished at Tue, 21 Nov 2023 09:00:00 +0000. Up 20.1 s",
    "multi_user_reached": "[  OK  ] Reached target multi-user.target - Multi-User System.",
    "getty_started": "[  OK  ] Started serial-getty@ttyS0.service - Serial Getty on ttyS0.",
}

# Lines that look alarming but are part of healthy boots: none of them may give a repair verdict.
HARMLESS = [
    '[    9.0] type=1400 audit(1700000009.001:4): avc:  denied  { read } for  pid=612 comm="rsyslogd" permissive=1',
    "[    0.1] SELinux:  Disabled at runtime.",
    "[    0.1] SELinux:  Initializing.",
    "[    0.1] SELinux: Initializing.",
    "*** Warning -- SELinux targeted policy relabel is required.",
    "[   40.0] systemd[1]: Failed to load new SELinux policy. Continuing with old policy.",
    "[    3.0] SELinux:  policy capability network_peer_controls=1",
    "[    3.0] audit: type=1403 audit(1700000003.402:3): auid=4294967295 ses=4294967295 lsm=selinux res=1",
    "[    3.9] systemd[1]: Successfully loaded SELinux policy in 12.3ms.",
    "[    2.0] systemd[1]: Unable to load SELinux policy. Ignoring.",
    "libsemanage.semanage_install_active: Failed to load SELinux policy module",
    "[    3.0] SELinux:  Completing initialization.",
]


def test_every_signature_has_an_example() -> None:
    ids = [s.id for s in detect.SIGNATURES]
    assert len(ids) == len(set(ids)), "signature ids are unique"
    assert set(ids) == set(EXAMPLES)
    for sig in detect.SIGNATURES:
        assert sig.source, f"{sig.id} says where its message comes from"


def test_needle_gate_never_hides_a_match() -> None:
    """Lines that skip the signature table (no needle) must never be lines a signature would match."""
    lines = list(EXAMPLES.values()) + HARMLESS
    for log in SERIAL.glob("*.log"):
        lines += log.read_bytes().decode("utf-8", "replace").replace("\r", "\n").split("\n")
    checked = 0
    for raw in lines:
        line = detect.clean_line(raw)
        body = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", line)
        for sig in detect.SIGNATURES:
            if sig.pattern.search(body if sig.pattern.pattern.startswith("^") else line):
                checked += 1
                assert detect._GATE.search(line), (sig.id, line)
    assert checked > 100


@pytest.mark.parametrize("sig_id", sorted(EXAMPLES))
def test_signature_matches_its_example(sig_id: str) -> None:
    sig = detect.signature(sig_id)
    record_text = detect.clean_line(EXAMPLES[sig_id])
    body = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", record_text)
    assert sig.pattern.search(body if sig.pattern.pattern.startswith("^") else record_text)


# Weak and supporting signatures decide only with company (tested below).
@pytest.mark.parametrize("sig_id", sorted(s for s in EXAMPLES if detect.signature(s).weight is detect.Weight.STRONG))
def test_strong_signature_decides_a_boot(sig_id: str) -> None:
    sig = detect.signature(sig_id)
    finding = detect.analyze(text(boot(EXAMPLES[sig_id])))
    assert finding.verdict is sig.verdict
    assert finding.signature == sig_id
    assert finding.evidence[-1].text == detect.clean_line(EXAMPLES[sig_id])
    assert finding.evidence[-1].line == 5


@pytest.mark.parametrize("line", HARMLESS)
def test_harmless_selinux_lines_never_ask_for_repair(line: str) -> None:
    assert not detect.analyze(text(boot(line))).repairable
    assert detect.analyze(text(boot(line, LOGIN))).verdict is Verdict.BOOTED


@pytest.mark.parametrize(
    "line",
    [
        "Failed to load SELinux policy.",
        "Failed to load SELinux policy. Freezing.",
        "Failed to load SELinux policy, freezing.",
        "Failed to load SELinux policy",
        "systemd[1]: Failed to load SELinux policy :Input/output error",
        "systemd[1]: Failed to load SELinux policy: Permission denied",
        "\x1b[0;1;31m[!!!!!!]\x1b[0m Failed to load SELinux policy.",
        "[!!!!!!] Failed to load SELinux policy.",
        "Unable to load SELinux Policy. Machine is in enforcing mode. Halting now.",
        "Unable to load SELinux Policy.  Machine is in enforcing mode.  Halting now.",
    ],
)
def test_policy_failure_family(line: str) -> None:
    finding = detect.analyze(text(boot(line)))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE


def test_policy_file_missing_alone_is_not_enough() -> None:
    """Ubuntu kernels print the libselinux line without running SELinux: alone it decides nothing."""
    missing = EXAMPLES["selinux_policy_file_missing"]
    finding = detect.analyze(text(boot(missing)))
    assert finding.verdict is Verdict.INCONCLUSIVE
    assert finding.policy_type == "minimum"
    assert detect.analyze(text(boot(missing, LOGIN))).verdict is Verdict.BOOTED


def test_policy_file_missing_then_services_fail_is_missing() -> None:
    missing = EXAMPLES["selinux_policy_file_missing"]
    finding = detect.analyze(text(boot(missing, EXAMPLES["journald_failed"], EXAMPLES["getty_failed"])))
    assert finding.verdict is Verdict.SELINUX_POLICY_MISSING
    assert finding.policy_path == "/etc/selinux/minimum/policy/policy.33"
    assert [e.line for e in finding.evidence] == [5, 6, 7]


def test_policy_file_missing_then_generic_freeze_is_failure() -> None:
    """The systemd line can be lost (cut mid-line); the libselinux line plus the freeze still decide."""
    missing = EXAMPLES["selinux_policy_file_missing"]
    finding = detect.analyze(text(boot(missing, "[    3.2] systemd[1]: Freezing execution.")))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.policy_type == "minimum"


def test_policy_messages_after_login_come_from_tools_not_the_boot() -> None:
    tool_output = [
        "SELinux:  Could not open policy file <= /etc/selinux/targeted/policy/policy.33:  No such file or directory",
        "/sbin/load_policy:  Can't load policy:  No such file or directory",
        "[  300.0] systemd-journald[400]: Failed to start Journal Service",
    ]
    finding = detect.analyze(text(boot(LOGIN, *tool_output)))
    assert finding.verdict is Verdict.BOOTED
    assert finding.policy_path is None


def test_freeze_beats_everything_after_it() -> None:
    after = [
        "[    3.300000] hv_balloon: Max. dynamic memory size: 8192 MB",
        "[  245.400000] Kernel panic - not syncing: hung",
    ]
    finding = detect.analyze(text(boot(FREEZE, *after)))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.evidence[0].line == 5


def test_booted_only_after_the_last_failure() -> None:
    fstab = "[ TIME ] Timed out waiting for device dev-disk-by\\x2duuid-1.device."
    assert detect.analyze(text(boot(fstab))).verdict is Verdict.OTHER_BOOT_FAILURE
    # the operator pressed Control-D and the boot went on: it booted
    assert detect.analyze(text(boot(fstab, LOGIN))).verdict is Verdict.BOOTED
    # it reached login once, then panicked: the latest state is a failure
    late_panic = "[  900.0] Kernel panic - not syncing: Fatal exception"
    finding = detect.analyze(text(boot(LOGIN, late_panic)))
    assert finding.verdict is Verdict.OTHER_BOOT_FAILURE
    assert finding.signature == "kernel_panic"


def test_labeling_handle_failure_is_missing_policy() -> None:
    finding = detect.analyze(text(boot(EXAMPLES["selinux_labeling_handle_failed"], EXAMPLES["multi_user_reached"])))
    assert finding.verdict is Verdict.SELINUX_POLICY_MISSING
    assert finding.repairable


def test_login_prompt_shapes() -> None:
    for prompt in [
        "localhost login:",
        "vm-01.internal.cloudapp.net login: ",
        "myvm login: [   30.1] random: crng init",
    ]:
        assert detect.analyze(text(boot(prompt))).verdict is Verdict.BOOTED, prompt
    for not_prompt in ["Give root password for maintenance", "pam_unix(login:session): session opened"]:
        assert detect.analyze(text(boot(not_prompt))).verdict is not Verdict.BOOTED, not_prompt


# ---------------------------------------------------------------------------------------------- boot cutting


def test_old_failure_does_not_match_again() -> None:
    finding = detect.analyze(text(boot(FREEZE), boot(LOGIN)))
    assert finding.verdict is Verdict.BOOTED
    assert finding.boot_start_line == 6


def test_latest_boot_failure_after_clean_boot() -> None:
    finding = detect.analyze(text(boot(LOGIN, "[  800.0] reboot: Restarting system"), boot(FREEZE)))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.boot_start_line == 7


def test_firmware_and_kernel_banner_are_one_boot() -> None:
    firmware = [
        "SeaBIOS (version 1.16.2-1.fc39)",
        "Booting from Hard Disk...",
        "GNU GRUB  version 2.06",
        "Loading Linux 5.14.0 ...",
    ]
    finding = detect.analyze(text(boot(FREEZE), firmware + boot(LOGIN)))
    assert finding.verdict is Verdict.BOOTED
    assert finding.boot_start_line == 6  # the SeaBIOS line, not the kernel banner


def test_kernel_command_line_repeat_is_not_a_new_boot() -> None:
    lines = boot("[    0.050000] Kernel command line: BOOT_IMAGE=/vmlinuz root=/dev/sda1", FREEZE)
    finding = detect.analyze(text(lines))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.boot_start_line == 1


def test_timestamp_restart_starts_a_boot_without_banner() -> None:
    old = ["[  100.000000] systemd[1]: Failed to load SELinux policy."]
    new = [
        "[    0.000000] x86/fpu: Supporting XSAVE feature 0x001",
        "[    0.500000] Memory: 4096K",
        "[   20.0] cloud-init[1]: x",
        LOGIN,
    ]
    finding = detect.analyze(text(old, new))
    assert finding.verdict is Verdict.BOOTED
    assert finding.boot_start_line == 2


def test_banner_printed_by_a_user_is_not_a_boot() -> None:
    """`cat /proc/version` on the serial console prints a kernel banner with no early-boot lines after it."""
    lines = boot(LOGIN, "Linux version 5.14.0-362.8.1.el9_3.x86_64 (mockbuild@builder) (gcc 11.4.1) #1 SMP", "$ ")
    finding = detect.analyze(text(lines))
    assert finding.verdict is Verdict.BOOTED
    assert finding.boot_start_line == 1


def test_initramfs_banner_is_part_of_the_kernel_boot_and_separates_quiet_boots() -> None:
    initrd = "Welcome to Fedora Linux 39 (Cloud Edition) dracut-059-15.fc39 (Initramfs)!"
    finding = detect.analyze(text(boot(initrd, FREEZE)))
    assert finding.boot_start_line == 1
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    quiet = detect.analyze(text([initrd, "[!!!!!!] Failed to load SELinux policy."], [initrd, LOGIN]))
    assert quiet.verdict is Verdict.BOOTED
    assert quiet.boot_start_line == 3


def test_restart_line_ends_a_boot_even_without_banners() -> None:
    """With a quiet kernel and no firmware output, 'reboot: Restarting system' still separates boots."""
    old = ["systemd[1]: Failed to load SELinux policy.", "reboot: Restarting system"]
    new = ["Welcome to CentOS Linux 7 (Core)!", "[  OK  ] Reached target Multi-User System.", "centos login: "]
    assert detect.analyze(text(old, new)).verdict is Verdict.BOOTED


def test_grub_after_a_dead_end_is_a_new_boot() -> None:
    dead_end = ["Booting from Hard Disk...", "Welcome to GRUB!", "error: no such partition.", "grub rescue> "]
    again = ["GNU GRUB  version 2.06", "Booting `CentOS Linux'", *boot(LOGIN)]
    assert detect.analyze(text(dead_end, again)).verdict is Verdict.BOOTED
    assert detect.analyze(text(again, dead_end)).verdict is Verdict.OTHER_BOOT_FAILURE


@pytest.mark.parametrize(
    "prefix",
    ["Nov 27 10:00:01 vm01 ", "2026-11-27T10:00:01.123456+0000 vm01 ", "2026-11-27 10:00:01,123 vm-01.example "],
)
def test_syslog_and_journal_prefixes(prefix: str) -> None:
    """Logs forwarded through syslog or printed by journalctl carry a date and host before each message."""
    old = boot(FREEZE)
    new = [BANNER.replace("[", "kernel: [", 1), CMDLINE.replace("[", "kernel: [", 1), "[    2.0] systemd[1]: x"]
    lines = [prefix + line for line in old + new] + [LOGIN]
    finding = detect.analyze(text(lines))
    assert finding.verdict is Verdict.BOOTED
    assert finding.boot_start_line == len(old) + 1
    assert detect.analyze(text([prefix + line for line in old])).verdict is Verdict.SELINUX_POLICY_FAILURE


def test_needs_more() -> None:
    assert detect.needs_more("[  812.1] systemd[1]: Started Session 3 of user azureuser.\n")
    assert detect.needs_more(b"")
    assert not detect.needs_more(text(boot(FREEZE)))
    assert not detect.needs_more(text(boot(FREEZE)).encode())


# ---------------------------------------------------------------------------------------------- decoding


def test_clean_line() -> None:
    assert detect.clean_line("\x1b[0;1;31m[!!!!!!]\x1b[0m Failed\x00 to load\ufffd") == "[!!!!!!] Failed to load"
    assert detect.clean_line("[[0;32m  OK  [0m] Started") == "[  OK  ] Started"
    assert detect.clean_line("\x1b]0;title\x07\x1b(Bhost login:\t") == "host login:"


def test_analyze_bytes_is_robust_to_encodings() -> None:
    data = text(boot(LOGIN), boot(FREEZE)).encode()
    noisy = data.replace(b"\n", b"\r\n").replace(b"Run /init", b"Run \xff\xfe/init\x00")
    noisy = noisy.replace(b"systemd[1]: Failed", b"systemd[1]: \x1b[0;1;31mFailed\x1b[0m")
    finding = detect.analyze_bytes(noisy)
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.evidence[0] == detect.analyze_bytes(data).evidence[0]


def test_lone_carriage_returns_keep_line_numbers() -> None:
    """A console redraw (lone CR) splits records but not lines: line numbers stay those of `grep -n`."""
    lines = boot(
        "A start job is running for /dev/sdb1 (10s / 1min 30s)\r[ TIME ] Timed out waiting for device /dev/sdb1."
    )
    finding = detect.analyze(text(lines))
    assert finding.verdict is Verdict.OTHER_BOOT_FAILURE
    assert finding.evidence[0].line == 5
    assert finding.evidence[0].text.startswith("[ TIME ]")


def test_spliced_kernel_message_is_joined_back() -> None:
    lines = boot(
        "[    2.700000] systemd[1]: Failed to load SEL[    2.705000] hv_balloon: Using Dynamic Memory", "inux policy."
    )
    finding = detect.analyze(text(lines))
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert finding.evidence[0].line == 5


def test_inconclusive_reasons() -> None:
    assert detect.analyze("").reason == "the log is empty"
    firmware = detect.analyze("SeaBIOS (version 1.16.2)\nBooting from Hard Disk...\n")
    assert "only firmware" in firmware.reason
    assert firmware.boot_start_line == 1
    mid = detect.analyze(text(boot("[    1.500000] virtio_blk virtio2: [vda] 4194304 512-byte logical blocks")))
    assert "mid-boot" in mid.reason
    restarting = detect.analyze(text(boot(LOGIN, "[  900.000000] reboot: Restarting system")))
    assert restarting.verdict is Verdict.INCONCLUSIVE
    assert "restarting" in restarting.reason


def test_garbage_is_inconclusive() -> None:
    assert detect.analyze_bytes(os.urandom(4096) + b"\n" + bytes(range(256))).verdict is Verdict.INCONCLUSIVE


# ---------------------------------------------------------------------------------------------- tail reading


def _big_log(path: Path, earlier_mb: int, latest: list[str]) -> int:
    """Write `earlier_mb` of earlier boots followed by `latest`; return the size."""
    earlier = text(
        boot(FREEZE), boot(*(f"[{10 + i:12.6f}] systemd[1]: Started unit-{i}.service." for i in range(300)), LOGIN)
    )
    reps = earlier_mb * 1024 * 1024 // len(earlier) + 1
    with open(path, "w") as fh:
        for _ in range(reps):
            fh.write(earlier)
        fh.write(text(latest))
    return path.stat().st_size


def test_tail_read_reads_little_of_a_big_log(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    size = _big_log(log, 24, boot(FREEZE))
    with open(log, "rb") as fh:
        tail = detect.read_tail(fh)
    assert not tail.at_start
    assert tail.bytes_read == detect.DEFAULT_TAIL_BYTES
    finding = detect.analyze_path(log)
    assert finding.verdict is Verdict.SELINUX_POLICY_FAILURE
    assert size > 90 * tail.bytes_read


def test_tail_widens_until_the_boot_start(tmp_path: Path) -> None:
    """The latest boot printed 1 MiB after its banner: the window doubles until it holds the banner."""
    chatter = [
        f"[{3 + i / 1000:12.6f}] hv_netvsc eth0: chatty driver message number {i:06d} " + "x" * 60 for i in range(12000)
    ]
    log = tmp_path / "serial.log"
    _big_log(log, 4, boot(*chatter, t0=1.0))
    with open(log, "rb") as fh:
        tail = detect.read_tail(fh)
    assert detect.DEFAULT_TAIL_BYTES < tail.bytes_read <= 8 * detect.DEFAULT_TAIL_BYTES
    assert not detect.needs_more(tail.data[tail.data.index(b"\n") + 1 :])
    # the earlier boot in the window froze; the latest one is still running: not a failure
    assert detect.analyze_path(log).verdict is Verdict.INCONCLUSIVE
    assert detect.analyze(log.read_text()).verdict is Verdict.INCONCLUSIVE


def test_tail_stops_at_the_cap(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    pad = "z" * 80
    log.write_text("".join(f"[{100 + i:12.6f}] systemd[1]: Started unit-{i} {pad}.\n" for i in range(85000)))
    assert log.stat().st_size > detect.MAX_TAIL_BYTES
    with open(log, "rb") as fh:
        tail = detect.read_tail(fh, initial=64 * 1024, cap=1024 * 1024)
    assert tail.bytes_read == 1024 * 1024
    assert detect.analyze_path(log).verdict is Verdict.INCONCLUSIVE


def test_non_seekable_stream_keeps_a_bounded_tail(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    _big_log(log, 12, boot(LOGIN))
    with subprocess.Popen(["cat", str(log)], stdout=subprocess.PIPE) as feeder:
        assert feeder.stdout is not None
        assert not feeder.stdout.seekable()
        finding = detect.analyze_stream(feeder.stdout)
    assert feeder.returncode == 0
    assert finding.verdict is Verdict.BOOTED
    assert finding.evidence[0].text == LOGIN.strip()


class _Pipe(io.RawIOBase):
    """A non-seekable byte source, like a pipe, that hands out `data` in small reads."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), len(self._data) - self._pos, 65536)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_pipe_tail_is_bounded_by_the_cap() -> None:
    data = text(boot(FREEZE)).encode() * 20000 + text(boot(LOGIN)).encode()
    tail = detect._read_pipe_tail(io.BufferedReader(_Pipe(data)), cap=1024 * 1024)
    assert len(data) > 5 * 1024 * 1024
    assert tail.bytes_read == len(data)
    assert tail.data == data[-1024 * 1024 :]
    assert not tail.at_start
    assert detect.analyze_stream(io.BufferedReader(_Pipe(data))).verdict is Verdict.BOOTED


def test_analyze_reports_line_numbers_of_the_whole_text() -> None:
    filler = "".join(f"[{10 + i:12.6f}] systemd[1]: Started unit-{i}.service.\n" for i in range(20000))
    whole = text(boot(LOGIN)) + filler + text(boot(FREEZE))
    finding = detect.analyze(whole)
    expected_line = whole.splitlines().index(FREEZE) + 1
    assert finding.evidence[0].line == expected_line
    assert detect.analyze_bytes(whole.encode()).evidence[0].line == expected_line
