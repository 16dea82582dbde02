"""`demo --real-boot`: the default subscription healed with genuine qemu boots as the verification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localazure import qemu

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_with_real_boots_heals_every_repairable_vm() -> None:
    reason = qemu.unavailable_reason()
    if reason:
        pytest.skip(f"qemu cannot run here: {reason}")
    result = subprocess.run([sys.executable, "-m", "remediation", "demo", "--real-boot", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=1500, check=False)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, (summary, result.stderr[-3000:])
    assert summary["healed"] == summary["repairable"] == 3
    assert summary["healthy_touched"] == 0
    assert summary["orphaned_resources"] == 0
    assert summary["original_disks_deleted"] == 0
