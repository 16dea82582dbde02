"""The command line against a running `python -m localazure serve`, selected with --local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.azurite, pytest.mark.localazure, pytest.mark.disk]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "localazure", "serve", "--state-dir", str(state),
                             "--time-scale", "0.01"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    endpoint = state / "endpoint.json"
    deadline = time.monotonic() + 120
    while not (endpoint.exists() and "settings" in endpoint.read_text()):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "serve exited"
        assert time.monotonic() < deadline, "the local Azure did not start"
        time.sleep(0.2)
    try:
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([sys.executable, "-m", "remediation", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_dry_run_sweep_and_incidents_against_the_local_azure(served: Path) -> None:
    result = cli("sweep", "--dry-run", "--json", "--local", str(served))
    assert result.returncode == 0, result.stderr
    sweep = json.loads(result.stdout.strip().splitlines()[-1])
    assert sweep["vms_seen"] == 10 and sweep["confirmed"] == 4 and sweep["started"] == 0
    assert {r["action"] for r in sweep["results"]} == {"dry_run"}

    listed = cli("incidents", "list", "--json", "--local", str(served))
    assert listed.returncode == 0, listed.stderr
    incidents = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(incidents) == 4 and {i["state"] for i in incidents} == {"suppressed"}

    shown = cli("incidents", "show", incidents[0]["id"], "--json", "--local", str(served))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["timeline"]


def test_local_needs_a_readable_endpoint_file(tmp_path: Path) -> None:
    result = cli("incidents", "list", "--local", str(tmp_path / "missing.json"))
    assert result.returncode == 2
    assert "endpoint file" in result.stderr and "Traceback" not in result.stderr
