"""Durable host: what an orchestration step costs on the local host (Azurite-backed, real SDK replay)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import row

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "integration" / "durable_app_fixture.py"
ORCHESTRATIONS = 20
FAN_OUT = 4
LONG_CHAIN = 40


def _direct_activity_seconds(funchost: Any, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        funchost.call_activity_json("square", json.dumps(i))
    return time.perf_counter() - start


def run() -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from localazure import azurite
    from localazure.durable import DurableHost, VirtualClock
    from localazure.funchost import FunctionHost

    server = azurite.start(prefix="bench-durable-")
    try:
        funchost = FunctionHost(str(APP))
        with DurableHost(funchost, server.connection_string, hub=f"B{uuid.uuid4().hex[:10]}",
                         clock=VirtualClock(), max_concurrent_activities=4) as host:
            # Throughput: many small orchestrations (2 activities + a fan-out of FAN_OUT each).
            start = time.perf_counter()
            for i in range(ORCHESTRATIONS):
                host.start_new("chain", f"bench-{i}", {"value": i, "numbers": list(range(FAN_OUT))})
            host.run_until_idle(timeout=600)
            elapsed = time.perf_counter() - start
            outputs = [host.status(f"bench-{i}") for i in range(ORCHESTRATIONS)]
            assert all(o and o["runtimeStatus"] == "Completed" for o in outputs)
            activities = ORCHESTRATIONS * (2 + FAN_OUT)

            # Replay cost: one long sequential orchestration (history grows with every step).
            start = time.perf_counter()
            host.start_new("monitor", "bench-long", {"duration_s": LONG_CHAIN, "interval_s": 1})
            host.run_until_idle(timeout=600)
            long_elapsed = time.perf_counter() - start
            long_status = host.status("bench-long")
            assert long_status and long_status["output"]["polls"] == LONG_CHAIN
        direct = _direct_activity_seconds(funchost, activities)
    finally:
        server.stop()
    per_activity_ms = elapsed / activities * 1000
    return [
        row("durable host: orchestrations completed per second", round(ORCHESTRATIONS / elapsed, 2), "1/s",
            notes=f"{ORCHESTRATIONS} orchestrations of {2 + FAN_OUT} activities (fan-out {FAN_OUT}), "
                  "4 activity threads, Azurite tables, virtual clock"),
        row("durable host: wall time per activity step", round(per_activity_ms, 2), "ms",
            baseline_name="direct call of the same activity", baseline_value=round(direct / activities * 1000, 3),
            notes="the ratio is the host's overhead: history writes, inbox, replay"),
        row("durable host: per step of a 40-step monitor loop", round(long_elapsed / (2 * LONG_CHAIN) * 1000, 2),
            "ms", notes="activity + durable timer per poll; each episode replays the whole history"),
    ]


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
