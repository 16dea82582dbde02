"""The sweep at 1,000, 10,000 and 50,000 VMs (1% frozen), next to a naive sweep that reads every serial log.

What runs: a synthetic local subscription (localazure.scenario.synthetic) served by the local Azure over
HTTPS, Azurite for the incident table, a managed-identity endpoint; the product's sweep
(remediation.entrypoints.run_sweep) runs in a separate process with REMEDIATION_DRY_RUN=true, so it finds
and confirms candidates and records them, but repairs nothing. The blast-radius brake is relaxed so that
it does not stop confirmation half-way.

The naive baseline, in its own process with the same SDK clients (the product's AzureCloud adapter):
list every VM, then for EVERY VM call retrieveBootDiagnosticsData (an ARM POST, i.e. a write) and read
the serial log's tail (blob HEAD + range GET), judging each log with the same detector.

Where each figure comes from:
- ARM reads / writes: the local Azure's request log (GET = read; POST/PUT/PATCH/DELETE = write;
  retrieveBootDiagnosticsData is a POST). Log Analytics queries and blob requests are counted apart:
  they are not ARM and are not throttled by ARM's per-subscription limits.
- Serial bytes: counted in the sweep process by wrapping AzureCloud.read_serial_from (sum of the bytes
  the range reads returned).
- Wall time: measured, with the local Azure's latency model at TIME_SCALE (every ARM read sleeps
  0.05 s x scale, every write 0.3 s x scale); CPU time of this machine is not scaled.
- Modelled front-door time (scale 1): computed from the request counts and the latency model's figures,
  with per-VM requests spread over REMEDIATION_SWEEP_CONCURRENCY and the listing / query pages in series.
- Peak memory: VmHWM of the sweep process (its peak resident set, from /proc/self/status) and the growth
  over its resident set just before the sweep (after imports and client set-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import row

ROOT = str(Path(__file__).resolve().parents[1])
TIME_SCALE = 0.01
SIZES = (1_000, 10_000, 50_000)
NAIVE_SIZES = (1_000, 10_000)
BROKEN_SHARE = 0.01
SEED = 7
CONCURRENCY = 8  # REMEDIATION_SWEEP_CONCURRENCY, the product's default
# The 50k size is skipped when the 10k sweep process took longer than this (the run must stay bounded).
LARGEST_SIZE_BUDGET_S = 180.0


# ---------------------------------------------------------------------------------------------- sweep process


def _child(mode: str) -> dict[str, Any]:
    """Run in a fresh interpreter: one product sweep (dry run) or one naive sweep; print the figures."""
    import asyncio
    import threading

    from remediation import detect, entrypoints
    from remediation.azure import compute

    counted = {"bytes": 0, "reads": 0}
    lock = threading.Lock()
    original = compute.AzureCloud.read_serial_from

    def counting(self: compute.AzureCloud, vm: Any, offset: int, max_bytes: int) -> bytes:
        data = original(self, vm, offset, max_bytes)
        with lock:
            counted["bytes"] += len(data)
            counted["reads"] += 1
        return data

    compute.AzureCloud.read_serial_from = counting  # type: ignore[method-assign]
    settings = entrypoints.settings()
    cloud = entrypoints.cloud()
    if mode == "product":
        entrypoints.store()
    rss_before = _memory_kb("VmRSS")
    started = time.perf_counter()
    if mode == "product":

        class NoStarts:
            async def start_repair(self, instance_id: str, payload: dict[str, Any]) -> bool:
                raise AssertionError("a dry-run sweep never starts a repair")

            async def running_repairs(self) -> int:
                return 0

        result = asyncio.run(entrypoints.run_sweep(NoStarts()))
        summary = {k: v for k, v in result.items() if not isinstance(v, list)}
        summary["errors"] = result["errors"]
        found = sum(1 for r in result["results"] if r["action"] == "dry_run")
    else:
        from concurrent.futures import ThreadPoolExecutor

        infos = [info for sub in settings.subscriptions for info in cloud.list_vm_statuses(sub)]

        def judge(info: Any) -> str:
            data = cloud.read_serial_tail(info.ref, settings.serial_tail_bytes)
            return detect.analyze_bytes(data, tail=len(data) >= settings.serial_tail_bytes).verdict.value

        with ThreadPoolExecutor(settings.sweep_concurrency) as pool:
            verdicts = list(pool.map(judge, infos))
        found = sum(1 for v in verdicts if v == "selinux_policy_failure")
        summary = {"vms_seen": len(infos), "candidates": len(infos), "confirmed": found}
    wall = time.perf_counter() - started
    rss_after = _memory_kb("VmHWM")
    return {"mode": mode, "wall_s": wall, "serial_bytes": counted["bytes"], "serial_reads": counted["reads"],
            "rss_peak_mb": rss_after / 1024, "rss_growth_mb": (rss_after - rss_before) / 1024,
            "found": found, "summary": summary}


def _memory_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in kB. Not getrusage's ru_maxrss: Linux carries that over from the
    parent through fork and exec, so a child of a large process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


# ---------------------------------------------------------------------------------------------- driver


class _Fleet:
    """Azurite and the identity endpoint, shared by every size; one local Azure per size."""

    def __init__(self) -> None:
        from localazure import azurite
        from localazure.identity import IdentityEndpoint

        self.storage = azurite.start()
        self.identity = IdentityEndpoint().start()

    def stop(self) -> None:
        self.identity.stop()
        self.storage.stop()

    def measure(self, vms: int, modes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        from localazure import scenario, testing

        broken = max(1, round(vms * BROKEN_SHARE))
        data = scenario.synthetic(vms, broken, seed=SEED, group_size=100)
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
            built = time.perf_counter()
            server = testing.build(data, time_scale=TIME_SCALE, state_dir=Path(tmp), images=False).start()
            build_s = time.perf_counter() - built
            try:
                state = server.state
                env = {
                    **os.environ,
                    "AzureWebJobsStorage": self.storage.connection_string,
                    "REMEDIATION_SUBSCRIPTIONS": ",".join(state.subscriptions),
                    "REMEDIATION_ARM_ENDPOINT": server.endpoint,
                    "REMEDIATION_LOGS_ENDPOINT": f"{server.endpoint}/v1",
                    "REMEDIATION_CA_BUNDLE": str(server.ca_path),
                    "REMEDIATION_HEARTBEAT_WORKSPACE_IDS": state.workspace_id,
                    "REMEDIATION_INCIDENT_TABLE": f"BenchSweep{vms}",
                    "REMEDIATION_DRY_RUN": "true",
                    "REMEDIATION_BLAST_RADIUS_MAX_VMS": "10000",
                    "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "100",
                    "REMEDIATION_SWEEP_CONCURRENCY": str(CONCURRENCY),
                    **self.identity.environment(),
                }
                out: dict[str, dict[str, Any]] = {}
                for mode in modes:
                    since = time.time()
                    proc = subprocess.run([sys.executable, "-m", "bench.bench_sweep", "--child", mode], cwd=ROOT,
                                          env=env, capture_output=True, text=True, timeout=600, check=False)
                    if proc.returncode != 0:
                        raise RuntimeError(f"{mode} sweep of {vms} VMs failed: {proc.stderr.strip()[-2000:]}")
                    figures = json.loads(proc.stdout.strip().splitlines()[-1])
                    figures.update(_requests([r for r in server.records() if r.at >= since]))
                    figures["broken"] = broken
                    figures["build_s"] = build_s
                    out[mode] = figures
                return out
            finally:
                server.stop()


def _requests(records: list[Any]) -> dict[str, Any]:
    """Split the request log of one sweep into ARM reads / writes, Log Analytics queries and blob requests."""
    from localazure.faults import TYPICAL_SECONDS

    arm_reads = arm_writes = logs = blobs = listing = 0
    per_vm_model = 0.0
    serial_model = 0.0
    ops: dict[str, int] = {}
    pages = [r for r in records if r.operation in ("virtualMachines.listAll", "virtualMachines.list")]
    list_s = (max(r.at for r in pages) - min(r.at - r.duration for r in pages)) if pages else 0.0
    for r in records:
        ops[r.operation] = ops.get(r.operation, 0) + 1
        model = TYPICAL_SECONDS["write" if r.write else "read"]
        if r.operation.startswith("blob."):
            blobs += 1
        elif r.operation.startswith("logs."):
            logs += 1
        elif r.write:
            arm_writes += 1
        else:
            arm_reads += 1
        if r.operation in ("virtualMachines.listAll", "virtualMachines.list") or r.operation.startswith("logs."):
            listing += not r.operation.startswith("logs.")
            serial_model += model
        else:
            per_vm_model += model
    return {"arm_reads": arm_reads, "arm_writes": arm_writes, "logs_queries": logs, "blob_requests": blobs,
            "list_pages": listing, "operations": ops, "list_s": list_s,
            "modelled_s": serial_model + per_vm_model / CONCURRENCY}


def run() -> list[dict[str, Any]]:
    fleet = _Fleet()
    results: dict[int, dict[str, dict[str, Any]]] = {}
    skipped: str | None = None
    try:
        for vms in SIZES:
            if vms == SIZES[-1] and results:
                prev_vms = max(results)
                prev = results[prev_vms]["product"]
                projected = prev["wall_s"] * vms / prev_vms
                if projected > LARGEST_SIZE_BUDGET_S or prev["rss_peak_mb"] * vms / prev_vms > 4096:
                    skipped = (f"{vms:,} VMs skipped: projected {projected:.0f} s / "
                               f"{prev['rss_peak_mb'] * vms / prev_vms:.0f} MB from the {prev_vms:,} run")
                    break
            modes = ("product", "naive") if vms in NAIVE_SIZES else ("product",)
            results[vms] = fleet.measure(vms, modes)
    finally:
        fleet.stop()
    return _rows(results, skipped)


def _rows(results: dict[int, dict[str, dict[str, Any]]], skipped: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    how = (f"dry-run sweep (finds and confirms, repairs nothing), 1% frozen, time_scale {TIME_SCALE}, "
           f"sweep concurrency {CONCURRENCY}")
    for vms, by_mode in results.items():
        p = by_mode["product"]
        n = by_mode.get("naive")
        k = f"{vms // 1000}k VMs"
        nb = (lambda key, n=n: n[key] if n else None)  # noqa: E731 - a short local accessor
        base = "naive sweep (boot diagnostics + tail for every VM)" if n else None
        if p["found"] != p["broken"] or (n and n["found"] != n["broken"]):
            how_found = f"; found {p['found']} (naive {nb('found')}) of {p['broken']} frozen"
        else:
            how_found = f"; {'both' if n else 'the sweep'} found all {p['broken']} frozen VMs"
        rows += [
            row(f"sweep {k}: ARM writes", p["arm_writes"], "requests", baseline_name=base,
                baseline_value=nb("arm_writes"),
                notes="POSTs (retrieveBootDiagnosticsData) from the local Azure's request log" + how_found),
            row(f"sweep {k}: ARM reads", p["arm_reads"], "requests", baseline_name=base,
                baseline_value=nb("arm_reads"),
                notes=f"GETs incl. {p['list_pages']} VM-listing pages; plus {p['logs_queries']} Log Analytics "
                      f"query(s) and {p['blob_requests']} blob requests (naive: {nb('blob_requests')})"),
            row(f"sweep {k}: serial log bytes read", p["serial_bytes"], "bytes", baseline_name=base,
                baseline_value=nb("serial_bytes"),
                notes=f"sum of range-read sizes, {p['serial_reads']} reads (naive {nb('serial_reads')})"),
            row(f"sweep {k}: wall time", round(p["wall_s"], 2), "s", baseline_name=base,
                baseline_value=round(n["wall_s"], 2) if n else None,
                notes=how + f"; measured, includes this machine's CPU time (not scaled); listing the VMs took "
                            f"{p['list_s']:.2f} s (naive {round(n['list_s'], 2) if n else None})"),
            row(f"sweep {k}: modelled front-door time at scale 1", round(p["modelled_s"], 1), "s",
                baseline_name=base, baseline_value=round(n["modelled_s"], 1) if n else None,
                notes="computed: requests x latency-model figure (read 0.05 s, write 0.3 s), per-VM requests "
                      f"over {CONCURRENCY} at once, listing pages in series"),
            row(f"sweep {k}: peak memory (VmHWM)", round(p["rss_peak_mb"], 1), "MB", baseline_name=base,
                baseline_value=round(n["rss_peak_mb"], 1) if n else None,
                notes=f"peak resident set of the sweep process (VmHWM); growth over its RSS before the sweep "
                      f"{p['rss_growth_mb']:.1f} MB (naive {round(n['rss_growth_mb'], 1) if n else None})"),
            row(f"sweep {k}: candidates", p["summary"]["candidates"], "VMs",
                notes=f"{p['summary']['vms_seen']} VMs seen, {p['summary']['confirmed']} confirmed "
                      f"(agent not ready / stale heartbeat, then the serial tail)"),
        ]
    sizes = sorted(results)
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        metrics = (("ARM writes", lambda f: f["arm_writes"]), ("ARM reads", lambda f: f["arm_reads"]),
                   ("serial log bytes", lambda f: f["serial_bytes"]), ("wall time s", lambda f: round(f["wall_s"], 2)),
                   ("peak memory MB", lambda f: round(f["rss_peak_mb"], 1)),
                   ("candidates", lambda f: f["summary"]["candidates"]))
        for label, get in metrics:
            chain = ", ".join(f"{v // 1000}k: {get(results[v]['product']):,}" for v in sizes)
            rows.append(row(f"sweep growth {first // 1000}k -> {last // 1000}k: {label}",
                            round(get(results[last]["product"]) / max(get(results[first]["product"]), 1e-9), 2), "x",
                            notes=f"{chain} (VMs x{last // first})" + (f"; {skipped}" if skipped else "")))
    elif skipped:
        rows.append(row("sweep largest size", 0, "", notes=skipped))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2])))
    else:
        json.dump(run(), sys.stdout, indent=2)
