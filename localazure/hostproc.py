"""`python -m localazure.hostproc`: the Functions app and its durable host in a process of their own.

The crash tests kill this process with SIGKILL and start another on the same storage, while Azurite,
the local Azure and the managed-identity endpoint live on in the parent. Settings come from the
environment, exactly the app settings LocalWorld sets (AzureWebJobsStorage, REMEDIATION_*,
IDENTITY_*).

Every step boundary of the durable host (an activity about to run, an activity finished, history
appended, an episode committed) is printed as one line on stdout and flushed:

    boundary <n> <point> <instance id> <activity or -> <task id or ->

With --pause the host then waits for one line on stdin before it goes on, so the parent can kill it
exactly there (boundaries reached by other threads meanwhile wait their turn). Other lines:
`ready`, `alert <status> <json>` for --start-alert, and `done` once every instance has ended
(with --exit-when-done, the process then exits 0).

Durable timers run on a clock shared by every process of one run (--clock-origin, a Unix time): a
restarted host sees the same accelerated time as the one it replaces, so timers and deadlines keep
their meaning across a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TERMINAL = {"Completed", "Failed", "Terminated"}


class SharedClock:
    """Accelerated wall time anchored at a fixed origin, so every host process of a run agrees on it."""

    virtual = False

    def __init__(self, origin: float, timer_scale: float) -> None:
        if timer_scale <= 0:
            raise ValueError("timer scale must be positive")
        self.origin = origin
        self.timer_scale = timer_scale
        self._origin_dt = datetime.fromtimestamp(origin, UTC)

    def now(self) -> datetime:
        return self._origin_dt + timedelta(seconds=(time.time() - self.origin) / self.timer_scale)

    def seconds_until(self, when: datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds() * self.timer_scale)

    def advance_to(self, when: datetime) -> None:
        raise RuntimeError("a shared wall clock cannot be advanced")


class BoundaryReporter:
    """The durable host's observer: one numbered line per step boundary, optionally waiting for a go."""

    def __init__(self, pause: bool, out: Any = None, inp: Any = None) -> None:
        self.pause = pause
        self.out = out or sys.stdout
        self.inp = inp or sys.stdin
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, point: str, instance_id: str, details: dict[str, Any]) -> None:
        with self._lock:
            self.count += 1
            name = details.get("name") or "-"
            task = details.get("task_id")
            self.out.write(f"boundary {self.count} {point} {instance_id} {name} {'-' if task is None else task}\n")
            self.out.flush()
            if self.pause and not self.inp.readline() and self.pause:
                os._exit(3)  # the parent went away mid-run: stop here rather than run on unobserved


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localazure.hostproc",
                                     description="Run function_app and its durable host in this process.")
    parser.add_argument("--app", default="function_app", help="module holding the Functions app object")
    parser.add_argument("--hub", default="SelinuxRemediation", help="task hub name")
    parser.add_argument("--timer-scale", type=float, default=1.0, help="durable timers wait this fraction")
    parser.add_argument("--clock-origin", type=float, default=None,
                        help="Unix time the accelerated clock starts from (share it between restarts)")
    parser.add_argument("--start-alert", type=Path, help="POST this JSON file to the alert webhook once started")
    parser.add_argument("--pause", action="store_true", help="wait for a line on stdin after every boundary")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit once at least one instance exists and every instance has ended")
    parser.add_argument("--max-activities", type=int, default=8, help="concurrent activities")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    conn = os.environ.get("AzureWebJobsStorage")  # noqa: SIM112 - the Functions setting's own name
    if not conn:
        sys.stderr.write("hostproc: AzureWebJobsStorage is not set (the task hub's storage connection)\n")
        return 2
    if args.timer_scale <= 0:
        sys.stderr.write(f"hostproc: --timer-scale must be positive, got {args.timer_scale}\n")
        return 2
    alert: bytes | None = None
    if args.start_alert is not None:
        try:
            alert = args.start_alert.read_bytes()
        except OSError as exc:
            sys.stderr.write(f"hostproc: cannot read --start-alert {args.start_alert}: {exc.strerror}\n")
            return 2

    from localazure.durable import DurableHost, DurableHostError
    from localazure.funchost import FunctionHost, FunctionHostError

    sys.path.insert(0, os.getcwd())
    reporter = BoundaryReporter(args.pause)
    clock = SharedClock(args.clock_origin if args.clock_origin is not None else time.time(), args.timer_scale)
    try:
        functions = FunctionHost(args.app)
        host = DurableHost(functions, conn, hub=args.hub, clock=clock,
                           max_concurrent_activities=args.max_activities, observer=reporter)
        host.start()
    except (FunctionHostError, DurableHostError, ValueError, OSError) as exc:
        sys.stderr.write(f"hostproc: {exc}\n")
        return 2
    print("ready", flush=True)
    if alert is not None:
        resp = functions.call_http("alert_webhook", "POST", "http://localhost/api/alerts", body=alert,
                                   headers={"Content-Type": "application/json"})
        print(f"alert {resp.status_code} {resp.get_body().decode() or '{}'}", flush=True)
    if not args.exit_when_done:
        threading.Event().wait()
    while True:
        instances = host.list_instances()
        if instances and all(i["runtimeStatus"] in TERMINAL for i in instances):
            break
        time.sleep(0.1)
    reporter.pause = False  # boundaries reached while stopping are reported, not waited on
    print("done " + json.dumps({i["instanceId"]: i["runtimeStatus"] for i in instances}), flush=True)
    host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
