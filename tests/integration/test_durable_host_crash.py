"""A durable host killed with SIGKILL at any point resumes on the same storage: no step lost, none doubled.

Each test runs the host in a subprocess (durable_app_fixture.py's runner), kills it at one point of an
orchestration, starts a second host on the same Azurite storage and checks the activity side effects
(recorded by the activities themselves) and the stored history.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from localazure.durable_store import TaskHubStore

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

APP = Path(__file__).with_name("durable_app_fixture.py")
ROOT = Path(__file__).resolve().parents[2]
EXPECTED_OUTPUT = [{"echo": "step-1"}, "unblocked step-2", [9, 16], {"echo": "step-4"}]


class Runs:
    def __init__(self, tmp_path: Path, conn: str) -> None:
        self.log = tmp_path / "activities.jsonl"
        self.flag = tmp_path / "flag"
        self.conn = conn
        self.hub = f"C{uuid.uuid4().hex[:12]}"

    def host(self, *args: str) -> subprocess.Popen[str]:
        env = {"DURABLE_FIXTURE_LOG": str(self.log), "DURABLE_FIXTURE_BLOCK": str(self.flag),
               "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, str(APP), "--conn", self.conn, "--hub", self.hub, "--instance", "crash-1", *args]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def calls(self) -> list[tuple[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [(r["activity"], r["payload"]) for r in rows]

    def finish(self) -> dict[str, Any]:
        """A fresh host on the same storage runs the instance to its end."""
        proc = self.host()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        status: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return status

    def history(self) -> list[dict[str, Any]]:
        store = TaskHubStore(self.conn, self.hub)
        rec = store.get_instance("crash-1")
        assert rec is not None
        return store.load_history(rec)


@pytest.fixture
def runs(tmp_path: Path, storage_connection_string: str) -> Runs:
    return Runs(tmp_path, storage_connection_string)


def killed(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"expected the host to die by SIGKILL: {err[-3000:]}"


def assert_history_has_no_duplicates(history: list[dict[str, Any]]) -> None:
    scheduled = [e["EventId"] for e in history if e["EventType"] == 4]
    done = [e["TaskScheduledId"] for e in history if e["EventType"] in (5, 6)]
    assert len(scheduled) == len(set(scheduled)), scheduled
    assert sorted(done) == sorted(scheduled)
    kinds = Counter(e["EventType"] for e in history)
    assert kinds[0] == 1  # one ExecutionStarted
    assert kinds[1] == 1  # one ExecutionCompleted
    assert kinds[12] == kinds[13]  # every episode committed whole


def test_killed_inside_an_activity_runs_it_again_and_loses_nothing(runs: Runs) -> None:
    first = runs.host("--start", "crashable")
    deadline = time.monotonic() + 60
    while ("block_until_flag", "step-2") not in runs.calls():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the blocking activity never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    killed(first)
    runs.flag.touch()

    status = runs.finish()

    assert status["runtimeStatus"] == "Completed"
    assert status["output"] == EXPECTED_OUTPUT
    calls = Counter((name, json.dumps(p)) for name, p in runs.calls())
    # The interrupted activity ran twice (at least once); everything else exactly once.
    assert calls == Counter({("echo", '"step-1"'): 1, ("block_until_flag", '"step-2"'): 2,
                             ("square", "3"): 1, ("square", "4"): 1, ("echo", '"step-4"'): 1})
    assert_history_has_no_duplicates(runs.history())


@pytest.mark.parametrize("kill_at", ["scheduled:square", "appended:square"])
def test_killed_around_scheduling_runs_each_scheduled_activity_once(runs: Runs, kill_at: str) -> None:
    """`scheduled`: the TaskScheduled events are committed, the activities not yet dispatched.
    `appended`: the events are written but the episode's commit never happened."""
    runs.flag.touch()
    killed(runs.host("--start", "crashable", "--kill-at", kill_at))
    assert ("square", 3) not in runs.calls()

    status = runs.finish()

    assert status["output"] == EXPECTED_OUTPUT
    calls = Counter((name, json.dumps(p)) for name, p in runs.calls())
    assert calls == Counter({("echo", '"step-1"'): 1, ("block_until_flag", '"step-2"'): 1,
                             ("square", "3"): 1, ("square", "4"): 1, ("echo", '"step-4"'): 1})
    assert_history_has_no_duplicates(runs.history())


def test_killed_between_activity_result_and_replay_applies_the_result_once(runs: Runs) -> None:
    runs.flag.touch()
    killed(runs.host("--start", "crashable", "--kill-at", "completed:echo"))
    assert runs.calls() == [("echo", "step-1")]

    status = runs.finish()

    assert status["output"] == EXPECTED_OUTPUT
    # The recorded result is replayed, not recomputed: step-1 ran once.
    assert [p for name, p in runs.calls() if name == "echo"] == ["step-1", "step-4"]
    assert_history_has_no_duplicates(runs.history())
