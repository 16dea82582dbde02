"""The command line's contract: JSON on stdout, exit 0 / 2, one-line errors and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "tests" / "data" / "alerts"


def cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remediation", *args], check=False, cwd=ROOT, input=stdin.decode(),
                          capture_output=True, text=True, env=env or {"PATH": "/usr/bin:/bin"},
                          timeout=60)


def test_handle_alert_dry_run_json_lists_targets_and_ignored() -> None:
    sample = next(p for p in sorted(ALERTS.glob("*.json")) if "log" in p.name)
    result = cli("handle-alert", str(sample), "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["targets"] and all("/virtualMachines/" in t for t in out["targets"])
    assert isinstance(out["ignored"], list)


def test_handle_alert_reads_stdin() -> None:
    body = json.dumps([{"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                        "subject": "", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1",
                        "data": {"validationCode": "abc"}}]).encode()
    result = cli("handle-alert", "-", "--dry-run", "--json", stdin=body)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["validation_code"] == "abc"


def test_handle_alert_invalid_payload_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("handle-alert", str(bad), "--dry-run", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_handle_alert_needs_dry_run_and_a_readable_file(tmp_path: Path) -> None:
    assert cli("handle-alert", str(tmp_path / "missing.json"), "--dry-run").returncode == 2
    result = cli("handle-alert", str(next(ALERTS.glob("*.json"))))
    assert result.returncode == 2 and "--dry-run" in result.stderr


def test_sweep_without_settings_names_the_missing_setting() -> None:
    result = cli("sweep", "--dry-run")
    assert result.returncode == 2
    assert "REMEDIATION_SUBSCRIPTIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_and_bad_options_exit_2() -> None:
    assert cli("frobnicate").returncode == 2
    assert cli("incidents", "delete").returncode == 2
    assert cli("demo", "--faults", "lots").returncode == 2
