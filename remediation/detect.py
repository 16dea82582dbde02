"""The boot-log detector: serial console text -> Finding.

Pure: no Azure SDK, no network. The only I/O is reading a file or stream handed in by the caller.

How a log is judged:

1. Only the tail is read. A VM's serial log can be hundreds of megabytes; the latest boot sits at its end.
   `analyze_path` / `analyze_stream` read `DEFAULT_TAIL_BYTES` from the end and widen (doubling) up to
   `MAX_TAIL_BYTES` while the start of the latest boot is not inside the window (`needs_more`).
2. The text is cleaned line by line: ANSI escapes, NUL and other control bytes, invalid UTF-8 and
   carriage returns are removed; a kernel message spliced into the middle of another line is split off
   and the two halves of the interrupted line are joined again.
3. The log is cut to the latest boot. The serial buffer survives reboots, so an old failure that has since
   been fixed is still in the log; matching the whole log would report it again and "repair" a healthy VM.
   A boot starts at a firmware or boot-loader banner, a kernel banner, a kernel timestamp that restarts
   from zero, or whatever follows a "reboot: Restarting system" line; a firmware banner and the kernel
   banner that follows it are the same boot.
4. The latest boot is matched against `SIGNATURES` (a data table) and the hits are weighed in order:
   a frozen or halted boot after a policy-load failure beats everything printed after it; a boot counts
   as booted only when its boot signal comes after the last failure signal.

Verdicts, in order of precedence:

- selinux_policy_failure: init (systemd of any era, sysvinit/upstart, nash, busybox) or the initramfs
  (dracut, initramfs-tools) could not load the policy in enforcing mode and froze or halted; also a
  missing policy file followed by a systemd freeze whose own message was lost.
- selinux_policy_missing: the kernel runs SELinux without a policy and the boot goes on broken (systemd
  cannot open its labeling handle, or the policy file is missing and journald / the serial getty fail),
  with no login prompt after it. A missing policy file alone decides nothing: kernels that do not run
  SELinux print it too, and SELinux messages after a login prompt come from an administrator's tools.
- other_boot_failure: emergency mode, root device not found, kernel panic, GRUB rescue ... named by the
  signature id so an operator sees it; never repaired.
- booted: a login prompt, cloud-init finished, or systemd's default target, after the last failure.
- inconclusive: empty, firmware only, still booting, or restarting.

Line numbers in evidence count from 1 in the text analysed: the whole text for `analyze` and
`analyze_bytes`, the tail that was read for `analyze_path` and `analyze_stream`.
"""

from __future__ import annotations

import enum
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from remediation.model import Evidence, Finding, Verdict

__all__ = [
    "DEFAULT_TAIL_BYTES",
    "MAX_TAIL_BYTES",
    "SIGNATURES",
    "Signature",
    "TailRead",
    "Weight",
    "analyze",
    "analyze_bytes",
    "analyze_path",
    "analyze_stream",
    "clean_line",
    "needs_more",
    "read_tail",
]

# A healthy boot of an Azure image prints 40-150 KiB on the serial console, a frozen one far less; 256 KiB
# holds the decisive lines of the latest boot with margin and is one cheap ranged read of a blob.
DEFAULT_TAIL_BYTES = 256 * 1024
# Past this, stop widening and judge what we have: a boot that prints more than 8 MiB is not frozen early.
MAX_TAIL_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_MAX_EVIDENCE = 8
_MAX_EVIDENCE_CHARS = 400


class Weight(enum.Enum):
    """How much one hit of a signature says on its own."""

    STRONG = "strong"  # decides the verdict on its own
    WEAK = "weak"  # decides only with company (see _judge)
    SUPPORT = "support"  # never decides; corroborates a weak policy-missing hit


@dataclass(frozen=True)
class Signature:
    """One row of the signature table: a message family and what it means."""

    id: str
    verdict: Verdict
    pattern: re.Pattern[str]
    source: str
    weight: Weight = Weight.STRONG


def _sig(id_: str, verdict: Verdict, pattern: str, source: str, weight: Weight = Weight.STRONG) -> Signature:
    return Signature(id_, verdict, re.compile(pattern), source, weight)


_F = Verdict.SELINUX_POLICY_FAILURE
_M = Verdict.SELINUX_POLICY_MISSING
_O = Verdict.OTHER_BOOT_FAILURE
_B = Verdict.BOOTED

# fmt: off
SIGNATURES: tuple[Signature, ...] = (
    # -- the policy could not be loaded and init froze or halted ---------------------------------------------
    _sig("systemd_selinux_load_failed", _F,
         r"Failed to load SELinux policy(?!\s*modul)(?:\s*$|\s*[.,:;]|\s+(?:[Ff]reezing|-|\())",
         "systemd PID 1 (selinux-setup.c, main.c), every era: '... policy. Freezing.', '..., freezing.', "
         "'... policy :%m', '[!!!!!!] Failed to load SELinux policy.'"),
    _sig("init_selinux_halt", _F,
         r"(?:Unable to|Cannot|Can't) load SELinux Policy\W+Machine is in enforcing mode",
         "sysvinit / upstart on RHEL and CentOS 5-6, busybox init: '... Machine is in enforcing mode. Halting now.'"),
    _sig("dracut_selinux_halt", _F,
         r"Initial SELinux policy load failed and enforcing mode requested",
         "dracut selinux-loadpolicy.sh (RHEL 6 and later initramfs), followed by 'Not continuing'"),
    _sig("initramfs_selinux_halt", _F,
         r"SELinux policy load failed and enforcing mode requested",
         "Debian / Ubuntu init and initramfs: '... enforcing mode requested, halting now'"),
    _sig("load_policy_enforcing_failed", _F,
         r"Can't load policy and enforcing mode requested",
         "load_policy -i (policycoreutils) as run from initramfs and init scripts"),
    _sig("enforcing_without_policy_halt", _F,
         r"Enforcing mode requested but no policy loaded",
         "RHEL 4 / 5 nash and init: '... Halting now.'"),
    # -- the kernel runs SELinux without a policy and the boot carries on broken -----------------------------
    _sig("selinux_labeling_handle_failed", _M,
         r"Failed to initialize SELinux (?:labeling|context) handle",
         "systemd selinux-util.c: labels cannot be looked up, units fail afterwards"),
    _sig("selinux_policy_file_missing", _M,
         r"Could not open policy file|Can't load policy:|SELinux:\s+Could not (?:downgrade|load) policy",
         "libselinux load_policy.c: 'SELinux:  Could not open policy file <= /etc/selinux/<type>/policy/policy.<N>:"
         "  No such file or directory' (also printed by healthy systems whose kernel does not run SELinux)",
         Weight.WEAK),
    _sig("journald_failed", _M,
         r"Failed to start (?:Journal Service|systemd-journald)|"
         r"systemd-journald\.service: (?:Main process exited|Failed)",
         "systemd: journald cannot label its files when no policy is loaded", Weight.SUPPORT),
    _sig("getty_failed", _M,
         r"Failed to start (?:Serial )?Getty|getty@\S*\.service: (?:Main process exited|Failed)",
         "systemd: the serial getty fails when no policy is loaded", Weight.SUPPORT),
    # -- other boot failures: named for the operator, never repaired -----------------------------------------
    _sig("systemd_freeze", _O,
         r"Freezing execution|[,.]\s*[Ff]reezing\.?\s*$",
         "systemd PID 1 froze for a reason other than SELinux (crash, failed mount of API file systems)"),
    _sig("emergency_mode", _O,
         r"You are in emergency mode|Welcome to emergency mode|Entering emergency mode|"
         r"Reached target (?:Emergency Mode|emergency\.target)",
         "systemd / dracut emergency shell (fstab entry, missing root device)"),
    _sig("maintenance_prompt", _O,
         r"Give root password for maintenance|Press Enter for maintenance|"
         r"Cannot open access to console, the root account is locked",
         "sulogin in emergency or rescue mode"),
    _sig("root_device_missing", _O,
         r"/dev/\S+ does not exist|Could not boot\.?$|Gave up waiting for root (?:file system )?device|"
         r"ALERT!\s+\S+ does not exist|Failed to mount /sysroot|Failed to start Switch Root",
         "dracut-initqueue timeout / initramfs-tools: the root file system was not found or not mounted"),
    _sig("dracut_initqueue_timeout", _O,
         r"dracut-initqueue timeout",
         "dracut waited for the root device too long; emergency mode follows unless it turns up"),
    _sig("kernel_panic", _O,
         r"Kernel panic - not syncing",
         "the kernel stopped"),
    _sig("vfs_no_root", _O,
         r"VFS: Unable to mount root fs|VFS: Cannot open root device",
         "the kernel could not mount the root file system"),
    _sig("initramfs_shell", _O,
         r"^\(initramfs\)|Dropping to a shell|rdsosreport\.txt|built-in shell \(ash\)",
         "the initramfs gave up and opened a shell (busybox / dracut)"),
    _sig("fsck_failed", _O,
         r"UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY|fsck\S* (?:died|failed) with exit status",
         "fsck found damage it would not repair unattended"),
    _sig("fstab_device_timeout", _O,
         r"Timed out waiting for device|Dependency failed for (?:Local File Systems|/)",
         "systemd: an fstab device did not appear (emergency mode follows unless nofail)"),
    _sig("grub_rescue", _O,
         r"grub rescue>|error: no such partition|error: unknown filesystem|Entering rescue mode\.\.\.|"
         r"error: (?:file|disk) .{0,80}not found|you need to load the kernel first|^grub>",
         "GRUB could not load its modules, config or kernel"),
    _sig("no_bootable_device", _O,
         r"No bootable device|Boot failed: (?:not a bootable disk|could not read)|No bootable option or device",
         "the firmware found nothing to boot"),
    # -- the boot got through ---------------------------------------------------------------------------------
    _sig("login_prompt", _B,
         r"^[A-Za-z0-9][\w.-]{0,252} login:(?:\s|$)",
         "agetty / mingetty on the serial console: '<host> login:' (every distribution and era)"),
    _sig("cloud_init_finished", _B,
         r"Cloud-init v\. \S+ finished at",
         "cloud-init final stage (Azure images with cloud-init)"),
    _sig("multi_user_reached", _B,
         r"Reached target (?:Multi-User System|multi-user\.target|Graphical Interface|graphical\.target|"
         r"Login Prompts|getty\.target)",
         "systemd reached its default target", Weight.WEAK),
    _sig("getty_started", _B,
         r"Started (?:Serial )?Getty on|Started (?:serial-)?getty@\S+\.service",
         "systemd started a getty", Weight.WEAK),
)
# fmt: on

_BY_ID = {s.id: s for s in SIGNATURES}

# Every signature's match contains one of these strings. Lines without any of them (nearly all lines of a
# boot) skip the table: this gate makes matching several times faster. A test checks it over the corpus.
_NEEDLES = (
    "SELinux", "enforcing mode", "Enforcing mode", "Could not", "Can't load policy", "Failed to start", "journald",
    "getty@", "reezing", "mergency", "maintenance", "root account", "does not exist", "Gave up waiting",
    "/sysroot", "Switch Root", "initqueue timeout", "Kernel panic", "VFS:", "(initramfs)", "to a shell",
    "rdsosreport", "built-in shell", "fsck", "Timed out waiting", "Dependency failed", "grub", "error: ",
    "rescue mode", "load the kernel", "bootable", "Boot failed", " login:", "Cloud-init", "Reached target",
    "Getty on",
)
_GATE = re.compile("|".join(re.escape(n) for n in _NEEDLES))

# ---------------------------------------------------------------------------------------------- cleaning

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor moves)
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (titles)
    r"|\x1b[()*+][0-9A-Za-z]"  # charset selection
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_ORPHAN_SGR = re.compile(r"\[(?:\d{1,3}(?:;\d{1,3})*)?m")  # a colour code whose ESC byte was lost
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]+")
# A syslog or journal prefix ("Nov 27 10:00:01 host " / "2026-11-27T10:00:01+0000 host "), then "kernel: ".
_LOG_PREFIX = re.compile(
    r"(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) [\w.-]+ (?:kernel: )?"
)
_KERNEL_TS = re.compile(r"^\[\s*(\d{1,7})\.(\d{1,9})\](?:\[\s*[TC]\d+\])?\s?")
_SPLICED_TS = re.compile(r"\[\s*\d{1,7}\.\d{6}\]")
_POLICY_PATH = re.compile(r"(/etc/selinux/([^/\s:]+)/policy/policy(?:\.\d+)?)")


def clean_line(line: str) -> str:
    """Remove terminal escapes, control characters and surrounding blanks from one line of console text."""
    if "\x1b" in line or "\x9b" in line:
        line = _ANSI.sub("", line)
    if "m" in line and "[" in line:
        line = _ORPHAN_SGR.sub("", line)
    line = line.replace("\t", " ")
    return _CONTROL.sub("", line).strip()


@dataclass(frozen=True, slots=True)
class _Record:
    line: int  # 1-based line number in the text analysed
    text: str  # cleaned text
    body: str  # text without a leading syslog/journal prefix and kernel timestamp
    ts: float | None  # the kernel timestamp, when the line has one


def _make_record(line: int, text: str) -> _Record:
    rest = text
    if text[:1].isdigit() or text[:1].isupper():
        prefix = _LOG_PREFIX.match(text)
        if prefix:
            rest = text[prefix.end() :]
    m = _KERNEL_TS.match(rest)
    if m:
        return _Record(line, text, rest[m.end() :].lstrip(), float(f"{m[1]}.{m[2]}"))
    return _Record(line, text, rest, None)


def _records(text: str, first_line: int = 1) -> list[_Record]:
    """Split decoded text into cleaned records.

    Lines are counted at '\\n' (as editors and `grep -n` do); a lone '\\r' inside a line (a console redraw)
    splits it into several records that share the line number. A kernel message spliced into the middle of
    another message gives two extra records: the kernel message alone, and the interrupted message joined
    with its continuation on the next line.
    """
    out: list[_Record] = []
    raw_lines = text.split("\n")
    cleaned: list[list[str]] = []
    for raw in raw_lines:
        parts = raw.split("\r") if "\r" in raw else [raw]
        cleaned.append([c for c in (clean_line(p) for p in parts) if c])
    for idx, segments in enumerate(cleaned):
        number = first_line + idx
        for seg in segments:
            rec = _make_record(number, seg)
            out.append(rec)
            m = _SPLICED_TS.search(rec.body, 1)
            if m is None:
                continue
            cut = len(seg) - len(rec.body) + m.start()  # the body is the end of the segment
            head, spliced = seg[:cut], seg[cut:]
            out.append(_make_record(number, spliced))
            following = cleaned[idx + 1] if idx + 1 < len(cleaned) else []
            if following:
                out.append(_make_record(number, head + following[0]))
    return out


# ---------------------------------------------------------------------------------------------- boot cutting

_FIRMWARE = re.compile(
    r"SeaBIOS \(version|Booting from (?:Hard Disk|DVD|CD|Floppy|ROM)|BdsDxe:|iPXE \(|GNU GRUB +version|"
    r"Welcome to GRUB!|^Booting [`'\"]|Booting a command list|UEFI Interactive Shell|"
    r"Hyper-V UEFI|^Loading Linux \S"
)
_BANNER = re.compile(r"(?:^|kernel: )Linux version \d+\.\d+")
_BANNER_CONFIRM = re.compile(
    r"Command line:|BIOS-provided physical RAM map|KERNEL supported cpus|x86/fpu:|Hypervisor detected|"
    r"Booting paravirtualized kernel|DMI: |Machine model:"
)
_ARM_BOOT = re.compile(r"Booting Linux on physical CPU")
_CMDLINE = re.compile(r"(?:^|kernel: )Command line: ")
_BOOT_END = re.compile(
    r"reboot: (?:Restarting system|Power down|System halted)|^Restarting system\.?$|^Rebooting\.?$"
)


class _Phase(enum.Enum):
    NONE = 0
    FIRMWARE = 1
    KERNEL = 2
    ENDED = 3


# Output of an operating system (or of a boot loader that gave up): once seen, the next banner is a new boot.
_OS_CONTENT = re.compile(
    r"systemd\[|\[\s*(?:OK|FAILED|DEPEND|TIME)\s*\]|^Welcome to (?!GRUB)|login:|[Ff]ail|FAIL|[Ee]rror|[Pp]anic|"
    r"[Ff]reez|[Hh]alt|[Ee]mergency|SELinux|[Rr]escue|[Nn]o bootable|dracut"
)


def _kernel_marker(records: Sequence[_Record], i: int, last_ts: float | None) -> str | None:
    rec = records[i]
    body = rec.body
    if body.startswith("Welcome to ") and "(Initramfs)" in body:
        return "initrd"  # systemd in a dracut initramfs: once per boot, even with a quiet kernel
    if "Linux" not in body and "Command line: " not in body:
        if rec.ts is not None and last_ts is not None and rec.ts < 1.0 and last_ts - rec.ts > 1.0:
            return "restart"
        return None
    if _BANNER.search(body):
        if rec.ts is not None and rec.ts < 1.0:
            return "banner"
        if rec.ts is None and any(_BANNER_CONFIRM.search(r.body) for r in records[i + 1 : i + 12]):
            return "banner"
    if _ARM_BOOT.search(body) and (rec.ts is None or rec.ts < 1.0):
        return "arm"
    if _CMDLINE.search(body) and ("BOOT_IMAGE=" in body or (rec.ts is not None and rec.ts < 5.0)):
        return "cmdline"
    if rec.ts is not None and last_ts is not None and rec.ts < 1.0 and last_ts - rec.ts > 1.0:
        return "restart"
    return None


def _latest_boot_start(records: Sequence[_Record]) -> int | None:
    """Index of the record where the latest boot starts, or None when no boot start is in the records.

    Markers of one boot (firmware, boot loader, kernel banner, kernel command line) merge into one start as
    long as no operating-system output came between them; a marker after such output, a second kernel banner,
    or a kernel timestamp that falls back to zero starts a new boot.
    """
    start: int | None = None
    phase = _Phase.NONE
    seen: set[str] = set()
    os_seen = False
    last_ts: float | None = None

    def begin(i: int, new_phase: _Phase) -> None:
        nonlocal start, phase, os_seen, last_ts
        start, phase, os_seen, last_ts = i, new_phase, False, None
        seen.clear()

    for i, rec in enumerate(records):
        if phase is _Phase.ENDED:
            begin(i, _Phase.FIRMWARE)
        if _FIRMWARE.search(rec.body):
            if phase is not _Phase.FIRMWARE or os_seen:
                begin(i, _Phase.FIRMWARE)
        else:
            kind = _kernel_marker(records, i, last_ts)
            if kind is not None:
                if kind == "initrd":  # comes after kernel output of the same boot: only a repeat is new
                    new = phase is _Phase.NONE or kind in seen or (phase is _Phase.FIRMWARE and os_seen)
                else:
                    new = (
                        phase is _Phase.NONE
                        or os_seen
                        or (phase is _Phase.KERNEL and (kind in seen or kind == "restart"))
                    )
                if new:
                    begin(i, _Phase.KERNEL)
                phase = _Phase.KERNEL
                seen.add(kind)
            elif (
                phase is not _Phase.NONE
                and not os_seen
                and ((rec.ts is not None and rec.ts >= 1.0) or _OS_CONTENT.search(rec.body))
            ):
                os_seen = True
        if rec.ts is not None:
            last_ts = rec.ts
        if ("Restart" in rec.body or "Reboot" in rec.body or "reboot" in rec.body) and _BOOT_END.search(rec.body):
            phase = _Phase.ENDED
    if phase is _Phase.ENDED:
        return len(records)  # the machine is restarting: the latest boot has printed nothing yet
    return start


# ---------------------------------------------------------------------------------------------- judging


@dataclass(frozen=True, slots=True)
class _Hit:
    index: int
    record: _Record
    sig: Signature


def _hits(records: Sequence[_Record]) -> list[_Hit]:
    hits: list[_Hit] = []
    for i, rec in enumerate(records):
        if not _GATE.search(rec.text):
            continue
        for sig in SIGNATURES:
            text = rec.body if sig.pattern.pattern.startswith("^") else rec.text
            if sig.pattern.search(text):
                hits.append(_Hit(i, rec, sig))
    return hits


def _evidence(hits: Iterable[_Hit], extra: Iterable[_Record] = ()) -> tuple[Evidence, ...]:
    seen: dict[tuple[int, str], Evidence] = {}
    for rec in [h.record for h in hits] + list(extra):
        key = (rec.line, rec.text)
        if key not in seen:
            seen[key] = Evidence(rec.line, rec.text[:_MAX_EVIDENCE_CHARS])
    ordered = sorted(seen.values(), key=lambda e: e.line)
    return tuple(ordered[:_MAX_EVIDENCE])


def _policy_path(records: Iterable[_Record]) -> tuple[str | None, str | None, _Record | None]:
    found: tuple[str | None, str | None, _Record | None] = (None, None, None)
    for rec in records:
        m = _POLICY_PATH.search(rec.text)
        if m:
            found = (m[1], m[2], rec)
    return found


def _judge(records: Sequence[_Record], start: int | None) -> Finding:
    boot = records[start:] if start is not None else records
    offset = start or 0
    start_line = records[start].line if start is not None and start < len(records) else None
    hits = [_Hit(h.index + offset, h.record, h.sig) for h in _hits(boot)]

    def finding(verdict: Verdict, sig: str | None, reason: str, ev: tuple[Evidence, ...], **kw: str | None) -> Finding:
        return Finding(verdict, ev, sig, reason, kw.get("policy_type"), kw.get("policy_path"), start_line)

    strong_boot = [h for h in hits if h.sig.verdict is _B and h.sig.weight is Weight.STRONG]
    first_login = strong_boot[0].index if strong_boot else None
    # SELinux lines printed after a login prompt come from an administrator's tools, not from the boot.
    before_login = [h for h in hits if first_login is None or h.index < first_login]
    selinux_records = [r for i, r in enumerate(boot) if first_login is None or i + offset < first_login]
    path, ptype, path_rec = _policy_path(selinux_records)
    policy = {"policy_type": ptype, "policy_path": path}

    failures = [h for h in hits if h.sig.verdict is _F]
    missing_weak = [h for h in before_login if h.sig.id == "selinux_policy_file_missing"]
    if failures:
        first = failures[0]
        after = [h for h in hits if h.index >= first.index and h.sig.id == "systemd_freeze"]
        extra = [path_rec] if path_rec is not None else []
        return finding(
            _F, first.sig.id, f"the boot froze or halted because the SELinux policy could not be loaded "
            f"({first.sig.id})", _evidence(failures + after[:1], extra), **policy,
        )
    freezes = [h for h in hits if h.sig.id == "systemd_freeze"]
    if missing_weak and freezes and freezes[-1].index > missing_weak[0].index:
        return finding(
            _F, "selinux_policy_file_missing", "the SELinux policy file is missing and init froze",
            _evidence(missing_weak[:1] + freezes[-1:]), **policy,
        )

    def later_login(idx: int) -> bool:
        return any(h.index > idx for h in strong_boot)

    missing_strong = [h for h in before_login if h.sig.verdict is _M and h.sig.weight is Weight.STRONG]
    support = [h for h in before_login if h.sig.weight is Weight.SUPPORT]
    if missing_strong and not later_login(missing_strong[0].index):
        first = missing_strong[0]
        return finding(
            _M, first.sig.id, "SELinux runs without a loaded policy and the boot carries on broken",
            _evidence(missing_strong[:2] + missing_weak[:1] + support[:2]), **policy,
        )
    if missing_weak and not later_login(missing_weak[0].index):
        broken = [h for h in support if h.index > missing_weak[0].index]
        if broken:
            return finding(
                _M, missing_weak[0].sig.id,
                "the SELinux policy file is missing and system services fail without it",
                _evidence(missing_weak[:1] + broken[:3]), **policy,
            )

    others = [h for h in hits if h.sig.verdict is _O]
    booted = [h for h in hits if h.sig.verdict is _B]
    last_boot_idx = booted[-1].index if booted else -1
    pending = [h for h in others if h.index > last_boot_idx]
    if pending:
        first = pending[0]
        return finding(
            _O, first.sig.id, f"the boot failed for a reason other than SELinux ({first.sig.id})",
            _evidence(pending),
        )
    if booted:
        best = strong_boot[-1] if strong_boot else booted[-1]
        note = ""
        if missing_weak:
            note = " (a SELinux policy file was missing, but the boot got through)"
        return finding(_B, best.sig.id, f"the boot reached {best.sig.id.replace('_', ' ')}{note}", _evidence([best]))
    if missing_weak:
        return finding(
            Verdict.INCONCLUSIVE, None,
            "a SELinux policy file is missing, but the log shows neither a freeze nor a finished boot yet",
            _evidence(missing_weak[:2]), **policy,
        )
    if not boot:
        reason = "the log is empty" if not records else "the machine is restarting; the new boot printed nothing yet"
    elif not any(r.ts is not None or _BANNER.search(r.body) or _OS_CONTENT.search(r.body) for r in boot):
        reason = "the latest boot shows only firmware or boot-loader output"
    else:
        reason = "the latest boot has not failed or finished yet (the log ends mid-boot)"
    return finding(Verdict.INCONCLUSIVE, None, reason, ())


# ---------------------------------------------------------------------------------------------- entry points


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
    return data.decode("utf-8", errors="replace")


def _window_records(text: str, cut_first_line: bool, first_line: int) -> list[_Record]:
    if cut_first_line:
        nl = text.find("\n")
        if nl < 0:
            return []
        text = text[nl + 1 :]
        first_line += 1
    return _records(text, first_line)


def needs_more(text_tail: str | bytes) -> bool:
    """True when a tail of a serial log does not show where the latest boot starts.

    A caller that holds only the last bytes of a log (a ranged read of a blob) uses this to decide whether
    to read a larger tail before trusting the verdict: without the boot start, the tail may be the end of a
    boot whose decisive lines are further back. The ranged-read loop is the one `read_tail` runs on files:

        size = DEFAULT_TAIL_BYTES
        data = read_last(size)
        while needs_more(data) and size < MAX_TAIL_BYTES and size < blob_size:
            size *= 2
            data = read_last(size)
        finding = analyze_bytes(data, tail=size < blob_size)
    """
    text = _decode(text_tail) if isinstance(text_tail, bytes) else text_tail
    return _latest_boot_start(_records(text)) is None


def _analyze_sized(
    buffer: str | bytes, size: int, partial_start: bool = False, window: int = DEFAULT_TAIL_BYTES
) -> Finding:
    """Judge an in-memory log, looking at a growing tail of it until the latest boot's start is inside.

    `partial_start`: the buffer is itself the end of a longer log, so its first line is probably cut.
    """
    while True:
        begin = max(0, size - window)
        piece = buffer[begin:]
        text = _decode(piece) if isinstance(piece, bytes) else piece
        if begin == 0:
            first_line = 1
        elif isinstance(buffer, bytes):
            first_line = buffer.count(b"\n", 0, begin) + 1
        else:
            first_line = buffer.count("\n", 0, begin) + 1
        records = _window_records(text, begin > 0 or partial_start, first_line)
        start = _latest_boot_start(records)
        if start is not None or begin == 0:
            return _judge(records, start)
        window *= 2


def analyze(text: str) -> Finding:
    """Classify the latest boot in serial console text (line numbers count from 1 in `text`)."""
    return _analyze_sized(text, len(text))


def analyze_bytes(data: bytes, *, tail: bool = False) -> Finding:
    """Classify the latest boot in raw serial log bytes (invalid UTF-8, NULs and escapes are tolerated).

    With `tail=True` the bytes are the end of a longer log (a ranged read): the first, probably cut, line
    is ignored.
    """
    return _analyze_sized(data, len(data), partial_start=tail)


@dataclass(frozen=True)
class TailRead:
    """The end of a log as read by `read_tail`."""

    data: bytes
    at_start: bool  # True when `data` is the whole log (its first line is complete)
    bytes_read: int


def read_tail(
    stream: BinaryIO, initial: int = DEFAULT_TAIL_BYTES, cap: int = MAX_TAIL_BYTES
) -> TailRead:
    """Read the end of a seekable log, widening (doubling) while the latest boot's start is not inside."""
    end = stream.seek(0, io.SEEK_END)
    window = max(1, min(initial, cap))
    have = b""
    read = 0
    while True:
        begin = max(0, end - window)
        want = end - begin - len(have)
        if want > 0:
            stream.seek(begin)
            chunk = stream.read(want)
            read += len(chunk)
            have = chunk + have
        if begin == 0 or window >= cap or not needs_more(_cut_first_line(have)):
            return TailRead(have, begin == 0, read)
        window = min(window * 2, cap)


def _cut_first_line(data: bytes) -> bytes:
    nl = data.find(b"\n")
    return data[nl + 1 :] if nl >= 0 else b""


def _read_pipe_tail(stream: BinaryIO, cap: int = MAX_TAIL_BYTES) -> TailRead:
    """Read a non-seekable stream to its end, keeping only the last `cap` bytes in memory."""
    buf = bytearray()
    dropped = False
    read = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        read += len(chunk)
        buf += chunk
        if len(buf) > 2 * cap:
            del buf[: len(buf) - cap]
            dropped = True
    if len(buf) > cap:
        del buf[: len(buf) - cap]
        dropped = True
    return TailRead(bytes(buf), not dropped, read)


def _judge_tail(tail_read: TailRead, window: int = DEFAULT_TAIL_BYTES) -> Finding:
    data = tail_read.data
    return _analyze_sized(data, len(data), partial_start=not tail_read.at_start, window=window)


def analyze_stream(stream: BinaryIO) -> Finding:
    """Classify the latest boot read from a binary stream: tail reads when seekable, a bounded tail if not.

    Line numbers count from 1 in the part of the log that was read.
    """
    try:
        seekable = stream.seekable()
    except (AttributeError, ValueError):
        seekable = False
    if seekable:
        tail_read = read_tail(stream)
        # read_tail already looked for the boot start in every smaller window: judge what it kept.
        return _judge_tail(tail_read, window=max(len(tail_read.data), 1))
    return _judge_tail(_read_pipe_tail(stream))


def analyze_path(path: str | os.PathLike[str]) -> Finding:
    """Classify the latest boot in a serial log file, reading only its tail (OSError if unreadable)."""
    with open(path, "rb") as fh:
        return analyze_stream(fh)


def signature(sig_id: str) -> Signature:
    """The signature with this id (KeyError if there is none)."""
    return _BY_ID[sig_id]
