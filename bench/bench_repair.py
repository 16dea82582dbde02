"""The repair: its critical path next to `az vm repair create / run / restore`, and many repairs under the cap.

(a) One repair in a LocalWorld (Azurite, the local Azure with real disk images, the durable host, the
Function app), started by an alert. From the local Azure's long-running operations (start and end of
each, as the server recorded them; a Run Command lasts until its script ended) the bench merges
overlapping intervals between detection and verified boot: every merged group is one SEQUENTIAL stage
(disk copy || rescue VM creation || deallocation count as one). Measured: wall time / time_scale.
Computed: the sum of the latency model's figures (localazure.faults.TYPICAL_SECONDS) per stage.

Baseline under the same latency model: the `az vm repair create`, `run`, `restore` procedure back to
back, driven in this bench with the same SDK clients against the same local Azure, on a second frozen
VM: snapshot of the OS disk; disk copy from the snapshot || NIC + repair VM creation; attach; Run
Command (the product's repair script, so the repair itself is the same); detach; deallocate (the local
Azure, like Azure, swaps an OS disk only on a deallocated VM); OS-disk swap; start. It polls at the
product's poll interval. Its time is measured the same way and computed from the same figures.
The operator's time between the three commands is not counted (it would only add to the baseline).

(b) Throughput: 20 frozen VMs with real images, REMEDIATION_MAX_CONCURRENT_REPAIRS=5, the brake relaxed,
a sweep every 5 modelled minutes (the schedule's cadence); a queued incident starts as soon as a running
repair ends.
Measured: modelled total time (wall / time_scale), repairs resolved per modelled hour, peak concurrent
repairs (overlap of each repair's span of ARM writes in the local Azure's request log). This machine's CPU
time (real repair scripts on loop devices, the durable host, Azurite) is not scaled, so at a small
time_scale it inflates the modelled figures: they are pessimistic.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import row

SCALE_ONE = 0.05
SCALE_MANY = 0.02
POLL_S = 15.0  # REMEDIATION_POLL_INTERVAL_SECONDS default: the product's and the baseline's poll interval
MANY_BROKEN = 20
MANY_CAP = 5
SWEEP_EVERY_S = 300.0  # modelled seconds between sweeps (REMEDIATION_SWEEP_SCHEDULE "0 */5 * * * *")
MANY_TIMEOUT_WALL_S = 150.0
# An LRO shorter than this (modelled seconds) is an instant no-op (e.g. start of a running VM), not a stage.
MIN_STAGE_S = 2.0

REPAIRABLE = ("selinuxtype_disabled", "selinuxtype_typo", "policy_package_missing")
RELAXED = {
    "REMEDIATION_BLAST_RADIUS_MAX_VMS": "100",
    "REMEDIATION_BLAST_RADIUS_MAX_PERCENT": "100",
    "REMEDIATION_POLL_INTERVAL_SECONDS": str(int(POLL_S)),
}


def _fig(kind: str) -> float:
    from localazure.faults import TYPICAL_SECONDS

    return TYPICAL_SECONDS[kind]


def product_plan() -> list[tuple[str, float]]:
    """The product's sequential stages (remediation.orchestration.repair) and their modelled seconds."""
    return [
        ("copy OS disk || NIC + rescue VM || deallocate",
         max(_fig("disk_copy"), _fig("nic_create") + _fig("vm_create"), _fig("vm_deallocate"))),
        ("attach copy", _fig("vm_update")),
        ("run command", _fig("run_command")),
        ("detach copy", _fig("vm_update")),
        # swap_os_disk tags the original disk (kept for rollback) without waiting, then swaps.
        ("swap OS disk", _fig("vm_os_disk_swap")),
        ("start VM", _fig("vm_start")),
    ]


def baseline_plan() -> list[tuple[str, float]]:
    """`az vm repair create` + `run` + `restore`, back to back, as sequential stages."""
    return [
        ("snapshot OS disk", _fig("snapshot_create")),
        ("disk from snapshot || NIC + repair VM", max(_fig("disk_copy"), _fig("nic_create") + _fig("vm_create"))),
        ("attach copy", _fig("vm_update")),
        ("run command", _fig("run_command")),
        ("detach copy", _fig("vm_update")),
        ("deallocate VM", _fig("vm_deallocate")),
        ("swap OS disk", _fig("vm_os_disk_swap")),
        ("start VM", _fig("vm_start")),
    ]


# ---------------------------------------------------------------------------------------------- time compression


class _ScaledPolling:
    """Compress the SDK poller's wait like every other duration.

    The product's AzureCloud waits `polling_interval` (1 s) between polls of an operation it blocks on
    (the rescue NIC); the local Azure's Retry-After rounds to 0 at a small time_scale, so the SDK would
    wait 1 real second, i.e. 1 / time_scale modelled seconds. The durable timers are scaled by the
    durable host already; this scales the SDK's interval the same way, inside the bench only.
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._saved: Any = None

    def __enter__(self) -> _ScaledPolling:
        import functools
        import inspect

        from remediation import entrypoints
        from remediation.azure.compute import AzureCloud

        self._saved = entrypoints.cloud
        scale = self.scale

        default = inspect.signature(AzureCloud).parameters["polling_interval"].default

        @functools.cache
        def scaled_cloud() -> Any:
            s = entrypoints.settings()
            return AzureCloud(entrypoints.credential(), arm_endpoint=s.arm_endpoint, ca_bundle=s.ca_bundle,
                              polling_interval=default * scale)

        entrypoints.cloud = scaled_cloud  # type: ignore[assignment]
        entrypoints.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        from remediation import entrypoints

        entrypoints.cloud = self._saved
        entrypoints.reset()


# ---------------------------------------------------------------------------------------------- scenarios


def _scenario(names: list[str], breakages: tuple[str, ...] = ("selinuxtype_disabled",), healthy: int = 1,
              ) -> dict[str, Any]:
    """Frozen VMs (breakages in turn) with real disk images, and a few healthy VMs, in one resource group."""
    vms: list[dict[str, Any]] = [{"name": n, "disk": breakages[i % len(breakages)], "heartbeat_minutes_ago": 60}
                                 for i, n in enumerate(names)]
    vms += [{"name": f"healthy-{i:02d}", "disk": "healthy"} for i in range(healthy)]
    return {"workspace_id": str(uuid.UUID(int=1)), "images": True, "subscriptions": [{
        "id": str(uuid.UUID(int=0xB0B, version=4)), "name": "Bench", "resource_groups": [{
            "name": "rg-bench", "location": "eastus", "vms": vms,
            "vnets": [{"name": "vnet-bench", "prefixes": ["10.5.0.0/16"],
                       "subnets": [{"name": "default", "prefix": "10.5.0.0/24"}]}]}]}]}


# ---------------------------------------------------------------------------------------------- intervals


def _lro_intervals(state: Any, since: float, until: float) -> list[tuple[float, float, str]]:
    """(start, end, name) of every long-running operation that started in [since, until] (wall clock)."""
    mono_to_wall = time.time() - time.monotonic()
    run_end: dict[str, float] = {}
    with state.lock:
        for rc in state.run_commands.values():
            if rc.run.ended is not None:
                run_end[rc.id.lower()] = rc.run.ended + mono_to_wall
        out = []
        for op in state.ops.values():
            if op.ended is None or not since <= op.started <= until:
                continue
            end = max(op.ended, run_end.get(op.resource_id.lower(), op.ended))
            out.append((op.started, end, op.name))
    return sorted(out)


def _stages(intervals: list[tuple[float, float, str]], scale: float, until: float) -> list[dict[str, Any]]:
    """Merge overlapping intervals (ending by `until`): each merged group is one sequential stage."""
    stages: list[dict[str, Any]] = []
    for start, end, name in intervals:
        if end > until or (end - start) / scale < MIN_STAGE_S:
            continue
        if stages and start < stages[-1]["end"]:
            stages[-1]["end"] = max(stages[-1]["end"], end)
            stages[-1]["ops"].append(name)
        else:
            stages.append({"start": start, "end": end, "ops": [name]})
    for s in stages:
        s["modelled_s"] = round((s["end"] - s["start"]) / scale, 1)
    return stages


# ---------------------------------------------------------------------------------------------- (a) one repair


class _Recorder:
    """Durable host observer: wall time of each completed activity, by name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed: list[tuple[float, str, str]] = []

    def __call__(self, point: str, instance_id: str, details: dict[str, Any]) -> None:
        if point == "activity_completed":
            with self.lock:
                self.completed.append((time.time(), instance_id, str(details.get("name"))))

    def last(self, name: str) -> float | None:
        with self.lock:
            times = [t for t, _, n in self.completed if n == name]
        return max(times) if times else None


def _one_repair() -> dict[str, Any]:
    from localazure.demo import log_alert
    from localazure.world import LocalWorld
    from remediation import entrypoints, steps

    recorder = _Recorder()
    scenario = _scenario(["vm-product", "vm-baseline"])
    world = LocalWorld(scenario=scenario, time_scale=SCALE_ONE, settings=dict(RELAXED), observer=recorder)
    with world, _ScaledPolling(SCALE_ONE):
        assert world.azure is not None
        state = world.azure.state
        vm_ids = {e.id.rsplit("/", 1)[-1]: e.id for e in world.expectations.values()}
        detected = time.time()
        status, body = world.post_alert(log_alert(vm_ids["vm-product"]))
        if status != 202 or not any(r.get("action") == "repair_started" for r in body.get("results", [])):
            raise RuntimeError(f"the alert did not start a repair: HTTP {status} {body}")
        instances = world.wait_for_repairs(timeout=150)
        verified = recorder.last(steps.VERIFY_BOOT)
        incidents = [i.to_dict() for i in entrypoints.store().list(limit=10)]
        if verified is None or not any(i["state"] == "resolved" for i in incidents):
            raise RuntimeError(f"the repair did not resolve: {incidents} {instances}")
        product_stages = _stages(_lro_intervals(state, detected, verified), SCALE_ONE, verified)
        product = {"wall_s": verified - detected, "stages": product_stages,
                   "writes": _writes(world.azure.requests, detected, verified)}

        base_started = time.time()
        base_verified = _az_vm_repair(world, vm_ids["vm-baseline"])
        baseline_stages = _stages(_lro_intervals(state, base_started, base_verified), SCALE_ONE, base_verified)
        baseline = {"wall_s": base_verified - base_started, "stages": baseline_stages,
                    "writes": _writes(world.azure.requests, base_started, base_verified)}
    return {"product": product, "baseline": baseline}


def _writes(records: list[Any], since: float, until: float) -> int:
    return sum(1 for r in records if r.write and since <= r.at <= until and r.status < 400)


def _az_vm_repair(world: Any, vm_id: str) -> float:
    """Drive `az vm repair create / run / restore` back to back with the SDK; return when the VM booted."""
    from remediation import activities, detect, entrypoints
    from remediation.azure.compute import AzureCloud, parse_id
    from remediation.model import VmRef

    s = entrypoints.settings()
    poll = POLL_S * SCALE_ONE
    cloud = AzureCloud(entrypoints.credential(), arm_endpoint=s.arm_endpoint, ca_bundle=s.ca_bundle,
                       polling_interval=poll)
    vm = VmRef.parse(vm_id)
    sub, rg = vm.subscription_id, vm.resource_group
    compute = cloud.compute(sub)
    info = cloud.get_vm(vm)
    os_disk = cloud.get_disk(info.os_disk_id or "")
    if os_disk is None:
        raise RuntimeError(f"{vm_id} has no managed OS disk")
    tag = {"bench": "az-vm-repair"}
    snap_name, copy_name, rescue_name = f"{vm.name}-snap", f"{vm.name}-fixed", f"repair-{vm.name}"
    rescue = VmRef.parse(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/"
                         f"{rescue_name}")

    def wait_vm(ref: VmRef) -> None:
        while compute.virtual_machines.get(ref.resource_group, ref.name).provisioning_state != "Succeeded":
            time.sleep(poll)

    # az vm repair create: snapshot, then the copy and the repair VM side by side, then attach.
    snap = compute.snapshots.begin_create_or_update(rg, snap_name, {
        "location": os_disk.location, "tags": tag,
        "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": os_disk.id}}}).result()
    nic_info = cloud.get_nic(info.nic_ids[0]) if info.nic_ids else None
    subnet = nic_info.subnet_id if nic_info is not None else None
    if subnet is None:
        raise RuntimeError(f"{vm_id} has no NIC in a subnet")

    def copy() -> str:
        disk = compute.disks.begin_create_or_update(rg, copy_name, {
            "location": os_disk.location, "tags": tag, "sku": {"name": os_disk.sku or "Premium_LRS"},
            "properties": {"osType": "Linux",
                           "creationData": {"createOption": "Copy", "sourceResourceId": snap.id}}}).result()
        return str(disk.id)

    def repair_vm() -> None:
        nic = cloud.create_nic(sub, rg, f"{rescue_name}-nic", os_disk.location, subnet, tag)
        cloud.begin_create_rescue_vm(rescue, location=os_disk.location, zones=(), size=s.rescue_vm_size,
                                     image=s.rescue_image, nic_id=nic.id, os_disk_name=f"{rescue_name}-osdisk",
                                     tags=tag)
        wait_vm(rescue)

    with ThreadPoolExecutor(2) as pool:
        copy_future = pool.submit(copy)
        pool.submit(repair_vm).result()
        copy_id = copy_future.result()
    cloud.begin_set_data_disk(rescue, copy_id)
    wait_vm(rescue)

    # az vm repair run: the same repair script the product runs.
    cloud.start_run_command(rescue, "repair", activities.repair_script(),
                            {"REPAIR_INCIDENT": "inc-0000000000b1", "REPAIR_DRY_RUN": "false"}, 600)
    while True:
        rc = cloud.get_run_command(rescue, "repair")
        if rc is not None and rc.finished:
            break
        time.sleep(poll)
    report = activities.parse_script_report(rc.output) or {}
    if report.get("status") != "repaired":
        raise RuntimeError(f"the baseline's repair script reported {report or rc.error!r}")

    # az vm repair restore: detach, stop (deallocate), swap, start.
    cloud.begin_set_data_disk(rescue, None)
    wait_vm(rescue)
    compute.virtual_machines.begin_deallocate(rg, vm.name).result()
    cloud.begin_swap_os_disk(vm, copy_id, parse_id(copy_id)[2])
    wait_vm(vm)
    mark = len(world.azure.state.vms[vm.id.lower()].serial_bytes())
    compute.virtual_machines.begin_start(rg, vm.name).result()
    while True:
        data = cloud.read_serial_from(vm, mark, s.serial_tail_bytes)
        if detect.analyze_bytes(data).verdict.value == "booted":
            return time.time()
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------- (b) many


def _many() -> dict[str, Any]:
    from localazure.durable import parse_ts
    from localazure.world import LocalWorld
    from remediation import entrypoints

    # Only repairable breakages: a VM the repair cannot heal is rolled back, stays frozen and is found again
    # by every later sweep, which would measure the brake rather than the throughput.
    data = _scenario([f"vm-{i:02d}" for i in range(MANY_BROKEN)], REPAIRABLE, healthy=5)
    settings = {**RELAXED, "REMEDIATION_MAX_CONCURRENT_REPAIRS": str(MANY_CAP)}
    world = LocalWorld(scenario=data, time_scale=SCALE_MANY, settings=settings)
    with world, _ScaledPolling(SCALE_MANY):
        assert world.durable is not None
        started = time.time()
        deadline = time.monotonic() + MANY_TIMEOUT_WALL_S
        sweeps = 0
        while True:
            world.sweep()
            sweeps += 1
            next_sweep = time.monotonic() + SWEEP_EVERY_S * SCALE_MANY
            done = False
            while time.monotonic() < next_sweep:
                incidents = entrypoints.store().list(limit=1000)
                instances = world.durable.list_instances()
                if incidents and not any(i.state.is_open for i in incidents) and \
                        all(x["runtimeStatus"] in ("Completed", "Failed", "Terminated") for x in instances):
                    done = True
                    break
                time.sleep(0.2)
            if done:
                finished = time.time()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"repairs not done after {MANY_TIMEOUT_WALL_S:.0f} s wall")
        instances = world.durable.list_instances()
        # The durable host's timestamps run on its scaled clock; only their order matters here.
        spans = [(parse_ts(x["createdTime"]).timestamp(), parse_ts(x["lastUpdatedTime"]).timestamp())
                 for x in instances]
        states: dict[str, int] = {}
        for inc in entrypoints.store().list(limit=1000):
            states[inc.state.value] = states.get(inc.state.value, 0) + 1
        summary = world.summary()
        work = [(start, end) for start, end, _ in world.repair_write_spans()]
    return {"total_s": (finished - started) / SCALE_MANY, "states": states, "sweeps": sweeps,
            "peak": _peak(work), "peak_instances": _peak(spans), "instances": len(instances),
            "healthy_touched": summary["healthy_touched"],
            "orphans": summary["orphaned_resources"], "repairable": summary["repairable"],
            "healed": summary["healed"]}


def _peak(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


# ---------------------------------------------------------------------------------------------- rows


def run() -> list[dict[str, Any]]:
    one = _one_repair()
    many = _many()
    p, b = one["product"], one["baseline"]
    pp, bp = product_plan(), baseline_plan()
    p_fig, b_fig = sum(s for _, s in pp), sum(s for _, s in bp)
    stage_txt = (lambda st: " | ".join("+".join(sorted(set(s["ops"]))) + f" {s['modelled_s']}s" for s in st))  # noqa: E731
    rows = [
        row("repair: sequential LROs, detection to verified boot", len(p["stages"]), "stages",
            baseline_name="az vm repair create+run+restore (driven here)", baseline_value=len(b["stages"]),
            notes=f"merged overlapping LROs from the local Azure; product: {stage_txt(p['stages'])}; "
                  f"baseline: {stage_txt(b['stages'])}"),
        row("repair: sequential LROs by plan", len(pp), "stages", baseline_name="az vm repair (plan)",
            baseline_value=len(bp), notes="product: " + "; ".join(n for n, _ in pp)
                                          + " / baseline: " + "; ".join(n for n, _ in bp)),
        row("repair: detection to verified boot, measured", round(p["wall_s"] / SCALE_ONE, 1), "modelled s",
            baseline_name="az vm repair, measured the same way", baseline_value=round(b["wall_s"] / SCALE_ONE, 1),
            notes=f"wall / time_scale {SCALE_ONE}; both poll every {POLL_S:.0f} modelled s and the SDK poller's "
                  "1 s interval is scaled too (unscaled, the product's blocking wait for the rescue NIC would start "
                  "the rescue VM ~20 modelled s late); includes the durable host, Azurite and the real repair "
                  f"script's CPU time (not scaled); successful ARM writes {p['writes']} vs {b['writes']}"),
        row("repair: detection to verified boot, from latency figures", p_fig, "modelled s",
            baseline_name="az vm repair, from the same figures", baseline_value=b_fig,
            notes="computed: sum over sequential stages of localazure.faults.TYPICAL_SECONDS (parallel stage = "
                  "its longest branch); no polling delay, no operator time"),
        row("repairs under the cap: throughput", round(many["states"].get("resolved", 0)
                                                      / (many["total_s"] / 3600.0), 1), "repairs/modelled h",
            baseline_name="upper bound from the figures (cap x 3600 / plan seconds)",
            baseline_value=round(MANY_CAP * 3600.0 / p_fig, 1),
            notes=f"{MANY_BROKEN} frozen VMs with real images (+5 healthy), REMEDIATION_MAX_CONCURRENT_REPAIRS="
                  f"{MANY_CAP}, a sweep every {SWEEP_EVERY_S / 60:.0f} modelled min ({many['sweeps']} sweeps; a "
                  f"queued incident starts when a running repair ends), time_scale {SCALE_MANY}; incident states "
                  f"{many['states']}; healed {many['healed']} of {many['repairable']}; healthy VMs touched "
                  f"{many['healthy_touched']}, orphaned resources {many['orphans']}"),
        row("repairs under the cap: total time", round(many["total_s"], 0), "modelled s",
            notes="first sweep until every incident is closed and every orchestration ended (checked every "
                  "0.2 s wall), wall / time_scale; this machine's CPU time is inflated 1/time_scale times, so "
                  "this is pessimistic"),
        row("repairs under the cap: peak concurrent repairs", many["peak"], "repairs",
            baseline_name="REMEDIATION_MAX_CONCURRENT_REPAIRS", baseline_value=MANY_CAP,
            notes="max overlap of the repairs' spans of ARM writes (first to last write on the VM and on the "
                  "resources named after its incident, from the local Azure's request log); the durable instances' "
                  f"created..last-updated intervals overlap up to {many['peak_instances']}, because a repair hands "
                  "its slot on after recording its outcome, before its orchestration completes"),
    ]
    return rows


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
