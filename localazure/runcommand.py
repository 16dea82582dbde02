"""Run Command, for real: the script runs as root on this machine with the VM's data disks as block devices.

Each data disk image is attached with `losetup -f --show` and its partitions are added with `partx -a`
(the host kernel does not scan partition tables itself). The script runs in a private mount namespace
(`unshare -m`) where a tmpfs covers /dev/disk and /dev/disk/azure/scsi1/lun<N> (and lun<N>-part<M>)
link to the loop devices, as the Azure Linux agent's udev rules arrange on a real VM. Parameters are
environment variables. Afterwards the processes are killed, partitions removed and loop devices detached.

Only data disks are ever exposed: a VM's own OS disk is not handed to the script.
If /dev/disk does not exist on the host, an empty directory is created there to mount over.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from localazure.state import ScriptRun

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RunCommandError(RuntimeError):
    """The script could not be started (not root, no loop devices ...)."""


def _run(cmd: list[str], timeout: float = 30) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RunCommandError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


@contextlib.contextmanager
def attached(disks: list[tuple[int, Path]]) -> Iterator[dict[int, str]]:
    """Attach each (lun, image) as a loop device with its partitions; detach on exit. Yields lun -> /dev/loopN."""
    loops: dict[int, str] = {}
    try:
        for lun, image in disks:
            dev = _run(["losetup", "-f", "--show", str(image)])
            loops[lun] = dev
            # A disk without a partition table is fine: partx then has nothing to add.
            subprocess.run(["partx", "-a", dev], capture_output=True, check=False, timeout=30)
        yield loops
    finally:
        for dev in loops.values():
            subprocess.run(["partx", "-d", dev], capture_output=True, check=False, timeout=30)
            for _ in range(20):
                if subprocess.run(["losetup", "-d", dev], capture_output=True, check=False).returncode == 0:
                    break
                time.sleep(0.1)


def _partitions(dev: str) -> list[tuple[int, str]]:
    base = os.path.basename(dev)
    out = []
    for entry in sorted(os.listdir("/dev")):
        m = re.fullmatch(rf"{re.escape(base)}p(\d+)", entry)
        if m:
            out.append((int(m[1]), f"/dev/{entry}"))
    return out


def wrapper_script(loops: dict[int, str], script: Path) -> str:
    """The shell run inside the private mount namespace: build /dev/disk/azure, then run the script."""
    lines = ["set -e", "mkdir -p /dev/disk", "mount -t tmpfs -o mode=755 localazure-dev-disk /dev/disk",
             "mkdir -p /dev/disk/azure/scsi1"]
    for lun, dev in sorted(loops.items()):
        lines.append(f"ln -s {dev} /dev/disk/azure/scsi1/lun{lun}")
        for num, part in _partitions(dev):
            lines.append(f"ln -s {part} /dev/disk/azure/scsi1/lun{lun}-part{num}")
    lines += ["set +e", f"exec /bin/bash {script}"]
    return "\n".join(lines) + "\n"


def execute(run: ScriptRun, disks: list[tuple[int, Path]]) -> None:
    """Run `run.script` with the disks attached; fill in exit code, output and timing."""
    if os.geteuid() != 0:
        raise RunCommandError("Run Command needs root on the machine that runs the local Azure (loop devices)")
    for name in run.parameters:
        if not _NAME.match(name):
            raise RunCommandError(f"parameter name {name!r} is not a valid environment variable name")
    with tempfile.TemporaryDirectory(prefix="la-runcmd-") as tmp, attached(disks) as loops:
        work = Path(tmp)
        script = work / "script.sh"
        script.write_text(run.script)
        wrapper = work / "wrapper.sh"
        wrapper.write_text(wrapper_script(loops, script))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", **run.parameters}
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "/bin/bash", str(wrapper)],
                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=work, env=env,
                                    start_new_session=True)
            try:
                run.exit_code = proc.wait(timeout=run.timeout)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                run.exit_code = -9
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        run.stdout = (work / "stdout").read_bytes().decode("utf-8", "replace")
        run.stderr = (work / "stderr").read_bytes().decode("utf-8", "replace")
