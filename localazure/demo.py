"""`make demo` / `python -m remediation demo`: heal the broken VMs of a local subscription, end to end.

Starts Azurite, the local Azure (real disk images; the repair script runs for real on loop devices;
with --real-boot the VMs boot under qemu), a managed-identity endpoint and the local durable host;
sends an Azure Monitor alert for one broken VM and a duplicate of it, runs the sweep for the rest,
shows each repair's progress, and ends with a summary. Exit 0 only if every repairable VM healed,
no healthy VM was touched, nothing was left behind and no original disk was deleted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from typing import Any

from localazure import scenario as scenario_mod
from localazure.world import LocalWorld


def log_alert(vm_id: str) -> dict[str, Any]:
    """A log search alert (common alert schema) whose target VM is carried in the _ResourceId dimension."""
    workspace = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/monitoring/providers/" \
                "Microsoft.OperationalInsights/workspaces/ops"
    return {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": "/subscriptions/x/providers/Microsoft.AlertsManagement/alerts/demo",
                "alertRule": "vm-heartbeat-missing",
                "severity": "Sev1",
                "signalType": "Log",
                "monitorCondition": "Fired",
                "monitoringService": "Log Alerts V2",
                "alertTargetIDs": [workspace],
                "firedDateTime": "2026-11-27T10:00:00Z",
            },
            "alertContext": {
                "condition": {
                    "windowSize": "PT5M",
                    "allOf": [{
                        "searchQuery": "Heartbeat | summarize max(TimeGenerated) by _ResourceId",
                        "metricMeasureColumn": None,
                        "operator": "LessThan",
                        "threshold": "1",
                        "timeAggregation": "Count",
                        "dimensions": [{"name": "_ResourceId", "value": vm_id.lower()}],
                        "metricValue": 0,
                    }],
                },
            },
        },
    }


class Progress:
    """Prints each repair's step as it changes (from the orchestrations' custom status)."""

    def __init__(self, world: LocalWorld, quiet: bool) -> None:
        self.world, self.quiet = world, quiet
        self.seen: dict[str, str] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-progress")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.poll()

    def poll(self) -> None:
        durable = self.world.durable
        if durable is None:
            return
        for inst in durable.list_instances():
            status = inst.get("customStatus") or {}
            step = status.get("step")
            key = inst["instanceId"]
            if step and self.seen.get(key) != step:
                self.seen[key] = step
                vm = str(status.get("vm_id", "")).rsplit("/", 1)[-1]
                self.say(f"{vm:<10} {step:<18} {status.get('message', '')}")

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def main(args: argparse.Namespace) -> int:
    quiet = bool(args.json)
    if args.vms is not None or args.broken is not None:
        vms = args.vms if args.vms is not None else 20
        broken = args.broken if args.broken is not None else max(1, vms // 10)
        scenario: Any = scenario_mod.synthetic(vms, broken, seed=args.seed, images_for_broken=True)
    else:
        scenario = None  # the default demo subscription
    settings = {
        # A demo subscription is small: a few broken VMs out of ten must not trip the blast-radius brake.
        "REMEDIATION_BLAST_RADIUS_MAX_VMS": "50",
        "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "60",
        "REMEDIATION_MAX_CONCURRENT_REPAIRS": "10",
    }
    time_scale = args.time_scale if args.time_scale is not None else (0.05 if args.real_boot else 0.01)
    if args.real_boot:
        # Modelled time runs at time_scale, but a qemu boot takes real seconds (minutes under emulation,
        # several at once on a small machine): give verification ten real minutes.
        settings["REMEDIATION_VERIFY_TIMEOUT_MINUTES"] = str(max(15, math.ceil(600 / (time_scale * 60))))
    started = time.monotonic()
    world = LocalWorld(scenario=scenario, time_scale=time_scale, faults=args.faults, seed=args.seed,
                       real_boot=args.real_boot, settings=settings)
    progress = Progress(world, quiet)
    progress.say("starting Azurite, the local Azure, the managed identity and the durable host ...")
    with world:
        exp = world.expectations
        broken = [e for e in exp.values() if e.breakage != "healthy"]
        progress.say(f"subscription ready: {len(exp)} VMs, {len(broken)} with a broken SELinux config "
                     f"({', '.join(sorted(e.id.rsplit('/', 1)[-1] + '=' + e.breakage for e in broken))})")
        with progress:
            first = next((e for e in broken if e.repairable), None)
            if first is not None:
                for label in ("alert webhook", "duplicate alert"):
                    status, body = world.post_alert(log_alert(first.id))
                    progress.say(f"{label} -> HTTP {status}: {_actions(body)}")
            progress.say("timer sweep: heartbeats and agent status find the other candidates ...")
            world.sweep()
            world.wait_for_repairs(timeout=1800 if args.real_boot else 600)
        summary = world.summary()
        summary["seconds"] = round(time.monotonic() - started, 1)
        if not quiet:
            _print_summary(world, summary)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary["ok"] else 1


def _actions(body: dict[str, Any]) -> str:
    parts = [f"{r.get('vm_id', '').rsplit('/', 1)[-1]} {r.get('action')} ({r.get('reason')})"
             for r in body.get("results", [])]
    parts += [f"ignored {i.get('resource', '').rsplit('/', 1)[-1]} ({i.get('reason')})"
              for i in body.get("ignored", [])]
    return "; ".join(parts) or json.dumps(body)


def _print_summary(world: LocalWorld, summary: dict[str, Any]) -> None:
    from remediation import entrypoints

    print("\nIncidents:")
    for inc in sorted(entrypoints.store().list(limit=1000), key=lambda i: i.vm.name):
        print(f"  {inc.vm.name:<10} {inc.state.value:<12} {inc.reason or ''}")
    print("\nSummary:")
    for key in ("vms", "broken", "repairable", "healed", "failed", "refused", "healthy_touched",
                "orphaned_resources", "original_disks_deleted", "incidents", "seconds"):
        print(f"  {key:<24} {summary[key]}")
    print("  (failed: repairable VMs not healed; refused: broken VMs the product must not repair, left as they were)")
    verdict = "every repairable VM healed; nothing else touched" if summary["ok"] else "NOT OK: see above"
    print(f"\n{verdict}", flush=True)


if __name__ == "__main__":
    from remediation.cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
