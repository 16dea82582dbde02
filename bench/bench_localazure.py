"""The local Azure: start-up, memory of a 10,000-VM subscription, SDK request rate and a full status sweep."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median_of, row

ROOT = str(Path(__file__).resolve().parents[1])
GETS = 300

MEMORY = """
import json, resource, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
from pathlib import Path
import tempfile
from localazure import scenario, state, faults
before = rss()
data = scenario.synthetic(int(sys.argv[1]), int(sys.argv[2]), seed=1)
st = state.State(faults.LatencyModel(0.001), Path(tempfile.mkdtemp()))
scenario.populate(st, data)
print(json.dumps({"before": before, "after": rss(), "vms": len(st.vms)}))
"""


def _serve_startup() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "localazure", "serve", "--no-images", "--port", "0",
                                 "--state-dir", tmp], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.terminate()
        proc.wait(timeout=10)
        if not line.startswith("endpoint="):
            raise RuntimeError(f"serve printed {line!r}")
        return elapsed


def _azurite_startup() -> float:
    from localazure import azurite

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        server = azurite.start(Path(tmp))
        elapsed = time.perf_counter() - start
        server.stop()
        return elapsed


def _memory(vms: int, broken: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEMORY, str(vms), str(broken)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def _request_rates() -> tuple[float, float, float, float]:
    from localazure import scenario
    from localazure.testing import running

    with running(scenario.synthetic(10_000, 50, seed=1), time_scale=0.001) as az:
        c = az.compute_client()
        sub = az.subscription_id
        rg, name = "rg-app-0000", "vm-00000"
        c.virtual_machines.get(rg, name)
        start = time.perf_counter()
        for _ in range(GETS):
            c.virtual_machines.get(rg, name)
        sdk = GETS / (time.perf_counter() - start)
        ctx = ssl.create_default_context(cafile=az.ca_path)
        conn = http.client.HTTPSConnection("127.0.0.1", az.server.port, context=ctx)
        path = (f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
                "?api-version=2024-07-01")
        headers = {"Authorization": "Bearer x"}
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()
        start = time.perf_counter()
        for _ in range(GETS):
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
        raw = GETS / (time.perf_counter() - start)
        conn.close()
        start = time.perf_counter()
        n = sum(1 for _ in c.virtual_machines.list_all(status_only="true"))
        sweep = time.perf_counter() - start
        if n != 10_000:
            raise RuntimeError(f"list_all returned {n} VMs")
        server = sum(r.duration for r in az.requests if r.operation == "virtualMachines.listAll")
        return sdk, raw, sweep, server


def run() -> list[dict[str, Any]]:
    startup = median_of(_serve_startup, 3)
    azurite_startup = median_of(_azurite_startup, 3)
    big = _memory(10_000, 50)
    small = _memory(10, 3)
    sdk, raw, sweep, server = _request_rates()
    per_vm_kb = (big["after"] - big["before"]) * 1024 / 10_000
    return [
        row("localazure serve start-up (to the endpoint line)", startup, "s", baseline_name="Azurite start-up",
            baseline_value=azurite_startup, notes="median of 3; default scenario without images; new interpreter"),
        row("memory of a 10,000-VM synthetic subscription", big["after"], "MB RSS",
            baseline_name="same with 10 VMs", baseline_value=small["after"],
            notes=f"{per_vm_kb:.1f} KB per VM (VM, OS disk, NIC; serial log rendered on first read)"),
        row("GET VM through ComputeManagementClient", sdk, "req/s", baseline_name="raw keep-alive HTTPS GET",
            baseline_value=raw, notes=f"{GETS} sequential gets, one client, 10,000-VM scenario"),
        row("list_all(statusOnly) of 10,000 VMs through the SDK", sweep, "s",
            baseline_name="server time for the same 10 pages", baseline_value=server,
            notes="pages of 1,000 with instance views; the rest is the SDK building 10,000 models"),
    ]


if __name__ == "__main__":
    for r in run():
        print(r)
