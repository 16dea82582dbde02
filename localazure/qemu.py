"""Real boots under qemu (TCG): watch the serial console, stop a frozen guest, run jobs in a rescue VM.

KVM is not usable on the machines this runs on (they are VMs themselves), so guests run with
``-accel tcg -cpu max``. A guest frozen by systemd never exits: ``boot`` stops qemu itself once the
console shows what the caller waits for, or at the timeout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from localazure import images

DEFAULT_CMDLINE = f"root={images.Layout().root_device()} rw console=ttyS0 security=selinux"
LOGIN_PROMPT = " login:"
FREEZE_MARKERS = ("Freezing execution", "Failed to load SELinux policy")
JOB_DONE = "rescue-job: done"


class QemuError(RuntimeError):
    """qemu could not be started, or a rescue job produced no result."""


@dataclass(frozen=True)
class BootResult:
    """What the serial console showed, and why the boot was stopped."""

    serial: str
    reason: Literal["matched", "timeout", "exited"]
    seconds: float


@dataclass(frozen=True)
class RescueResult:
    """The outcome of a script run as root in a rescue VM."""

    stdout: str
    stderr: str
    exit_code: int
    serial: str
    seconds: float


def qemu_binary() -> str | None:
    """The qemu-system-x86_64 on PATH, or None."""
    return shutil.which("qemu-system-x86_64")


def unavailable_reason() -> str | None:
    """Why real boots cannot run here (None when they can)."""
    if qemu_binary() is None:
        return "qemu-system-x86_64 is not installed (run `make setup`)"
    if os.geteuid() != 0:
        return "building and booting disk images needs root (loop devices, mounts, debootstrap)"
    return None


def login_prompt_seen(text: str) -> bool:
    """True once a getty has printed its login prompt."""
    return LOGIN_PROMPT in text


def freeze_seen(text: str) -> bool:
    """True once systemd has given up loading the SELinux policy."""
    return any(marker in text for marker in FREEZE_MARKERS) and "Freezing" in text


def boot(
    disk: Path,
    kernel: Path,
    initrd: Path,
    *,
    cmdline: str = DEFAULT_CMDLINE,
    extra_disks: Sequence[Path] = (),
    timeout: float = 120,
    until: Callable[[str], bool] | None = None,
    serial_log: Path | None = None,
    memory_mb: int = 1024,
    snapshot: bool = False,
) -> BootResult:
    """Boot `disk` (as /dev/vda, extra disks as vdb, vdc ...) and stream the serial console.

    Stops qemu when `until(serial_text)` becomes true, at `timeout`, or when the guest powers off.
    With snapshot=True the system disk is not modified (writes go to a throwaway overlay).
    """
    binary = qemu_binary()
    if binary is None:
        raise QemuError("qemu-system-x86_64 is not installed (run `make setup`)")
    for path in (disk, kernel, initrd, *extra_disks):
        if not Path(path).is_file():
            raise QemuError(f"{path} does not exist")
    own_log = serial_log is None
    log = serial_log or Path(tempfile.mkstemp(prefix="serial-", suffix=".log")[1])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    drives = [f"file={disk},if=virtio,format=raw,cache=unsafe" + (",snapshot=on" if snapshot else "")]
    drives += [f"file={extra},if=virtio,format=raw,cache=unsafe" for extra in extra_disks]
    cmd = [
        binary, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", "1",
        "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
        "-serial", f"file:{log}",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
    ]
    for drive in drives:
        cmd += ["-drive", drive]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    reason: Literal["matched", "timeout", "exited"] = "timeout"
    text = ""
    try:
        while True:
            text = log.read_bytes().decode(errors="replace")
            if until is not None and until(text):
                reason = "matched"
                break
            if proc.poll() is not None:
                reason = "exited"
                break
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.25)
    finally:
        _stop(proc)
    text = log.read_bytes().decode(errors="replace")
    if own_log:
        log.unlink(missing_ok=True)
    if reason == "exited" and proc.returncode not in (0, None) and not text:
        err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
        raise QemuError(f"qemu failed to start (exit {proc.returncode}): {err[-300:]}")
    if proc.stderr:
        proc.stderr.close()
    return BootResult(serial=text, reason=reason, seconds=time.monotonic() - started)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop qemu (and only it): SIGTERM to its own process group, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_in_rescue_vm(
    script: Path,
    args: Sequence[str],
    disk: Path,
    timeout: float = 300,
    *,
    env: Mapping[str, str] | None = None,
    extra_disks: Sequence[Path] = (),
    cache_dir: Path | None = None,
    serial_log: Path | None = None,
    layout: images.Layout = images.Layout(),  # noqa: B008 - frozen dataclass, never mutated
) -> RescueResult:
    """Run `script` as root in a Debian rescue VM with `disk` attached as /dev/vdb.

    The rescue VM is the cached Debian image booted read-only (snapshot) without SELinux; the job
    (script, arguments, environment) travels on a small third disk (/dev/vdc), which also brings
    back stdout, stderr and the exit code. `extra_disks` are attached after it (/dev/vdd ...).
    `layout` picks the rescue VM's own disk layout: the same as the disk under repair reproduces a
    rescue VM of the same image (duplicate filesystem UUIDs).
    """
    if not script.is_file():
        raise QemuError(f"script {script} does not exist")
    rescue = images.debian_image(cache_dir, layout)
    work = Path(tempfile.mkdtemp(prefix="rescue-job-"))
    try:
        tree = work / "tree"
        tree.mkdir()
        shutil.copyfile(script, tree / "script.sh")
        lines = ["#!/bin/sh"]
        for key, value in (env or {}).items():
            if not key.isidentifier():
                raise QemuError(f"invalid environment variable name {key!r}")
            lines.append(f"export {key}={shlex.quote(value)}")
        lines.append("exec sh /job/script.sh " + " ".join(shlex.quote(a) for a in args))
        (tree / "job.sh").write_text("\n".join(lines) + "\n")
        job = work / "job.img"
        with job.open("wb") as fh:
            fh.truncate(16 * images.MIB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "job", "-d", str(tree), str(job)], check=True,
                       capture_output=True)
        cmdline = f"root={rescue.layout.root_device()} rw console=ttyS0 selinux=0 rescue.job=1"
        result = boot(
            rescue.disk, rescue.kernel, rescue.initrd, cmdline=cmdline, extra_disks=[disk, job, *extra_disks],
            timeout=timeout, until=lambda text: JOB_DONE in text, serial_log=serial_log, snapshot=True,
        )
        # the job disk is synced and unmounted before the marker; give qemu a moment to flush
        time.sleep(0.5)
        code = _read_job_file(job, "/exitcode")
        if code is None:
            raise QemuError(
                f"the rescue VM produced no result ({result.reason} after {result.seconds:.0f} s); "
                f"serial tail: {result.serial[-800:]}"
            )
        return RescueResult(
            stdout=(_read_job_file(job, "/stdout") or b"").decode(errors="replace"),
            stderr=(_read_job_file(job, "/stderr") or b"").decode(errors="replace"),
            exit_code=int(code.decode().strip() or "255"),
            serial=result.serial,
            seconds=result.seconds,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_job_file(job: Path, name: str) -> bytes | None:
    stat = subprocess.run(["debugfs", "-R", f"stat {name}", str(job)], capture_output=True, check=False)
    if b"Type: regular" not in stat.stdout:
        return None
    return subprocess.run(["debugfs", "-R", f"cat {name}", str(job)], capture_output=True, check=False).stdout
