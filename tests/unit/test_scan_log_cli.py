"""`python -m remediation scan-log`: verdicts for files and stdin, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SERIAL = Path(__file__).resolve().parents[1] / "data" / "serial"
REPO = Path(__file__).resolve().parents[2]
FROZEN = SERIAL / "qemu-debian12-frozen.log"
BOOTED = SERIAL / "qemu-debian12-booted.log"


def scan(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remediation", "scan-log", *args],
        input=stdin.decode("utf-8", "replace") if stdin is not None else None,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


def test_json_one_object_per_input_and_exit_zero_whatever_the_verdict() -> None:
    result = scan(str(FROZEN), str(BOOTED), "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(FROZEN), str(BOOTED)]
    assert [r["verdict"] for r in rows] == ["selinux_policy_failure", "booted"]
    frozen = rows[0]
    assert frozen["policy_type"] == "disabled"
    assert frozen["policy_path"] == "/etc/selinux/disabled/policy/policy.33"
    lines = FROZEN.read_bytes().decode(errors="replace").split("\n")  # numbered as `grep -n` does
    for ev in frozen["evidence"]:
        assert set(ev) == {"line", "text"}
        assert ev["text"][-25:] in lines[ev["line"] - 1]
    assert any("Failed to load SELinux policy" in ev["text"] for ev in frozen["evidence"])


def test_human_output_names_verdict_and_lines() -> None:
    result = scan(str(FROZEN))
    assert result.returncode == 0
    first, *evidence = result.stdout.splitlines()
    assert first.startswith(f"{FROZEN}: selinux_policy_failure (")
    assert evidence and all(line.startswith("  line ") for line in evidence)


def test_stdin_dash() -> None:
    result = scan("-", "--json", stdin=FROZEN.read_bytes())
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["path"] == "-"
    assert row["verdict"] == "selinux_policy_failure"


def test_stdin_large_earlier_boots_then_latest(tmp_path: Path) -> None:
    """A pipe of many earlier frozen boots followed by a healthy one: judged from a bounded tail."""
    data = FROZEN.read_bytes() * 400 + BOOTED.read_bytes()  # about 10 MB
    result = scan("-", "--json", stdin=data)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "booted"


def test_unreadable_path_is_one_line_error_exit_two(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.log"
    result = scan(str(FROZEN), str(missing), "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["verdict"] == "selinux_policy_failure"  # the good input is still reported
    assert result.stderr.count("\n") == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_directory_is_one_line_error(tmp_path: Path) -> None:
    result = scan(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_empty_and_binary_inputs_are_analysed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    binary = tmp_path / "binary.log"
    binary.write_bytes(bytes(range(256)) * 64)
    result = scan(str(empty), str(binary), "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["verdict"] for line in result.stdout.splitlines()] == ["inconclusive", "inconclusive"]


def test_no_path_is_a_usage_error() -> None:
    result = scan()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
