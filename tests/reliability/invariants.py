"""Invariants every reliability run must keep, checked from the local Azure's state and request log.

* no disk that existed before the run was deleted (state, and no DELETE of it in the request log);
* nothing is orphaned: every resource tagged with an incident is either the repaired copy now serving
  as a VM's OS disk or the original OS disk kept (tagged) for rollback;
* every VM is either healed (booted from the repaired copy, running) or exactly as before (OS disk,
  power state, tags, data disks);
* no healthy VM, and no VM the product had no incident for, saw a single write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from localazure.world import LocalWorld
from remediation import detect, steps

# POSTs that only read (boot diagnostics SAS, the heartbeat query).
READ_ONLY_POSTS = {"virtualMachines.retrieveBootDiagnosticsData", "logs.query"}


@dataclass
class Snapshot:
    """What a VM looked like before the run: compared with after."""

    os_disk_id: str | None
    power: str
    tags: dict[str, str]
    data_disks: list[str]


@dataclass
class Outcome:
    """The verdict per VM (by lower-case id) and the problems found."""

    healed: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def snapshot(world: LocalWorld) -> dict[str, Snapshot]:
    """Record every VM's state; take it right after the world starts, before any signal."""
    assert world.azure is not None
    state = world.azure.state
    with state.lock:
        return {vm.id.lower(): Snapshot(vm.os_disk_id, vm.power, dict(vm.tags), [d.disk_id for d in vm.data_disks])
                for vm in state.vms.values()}


def recorded(world: LocalWorld) -> dict[str, Snapshot]:
    """The VMs as LocalWorld recorded them at start (its fingerprint: disk, power, tags, data disks)."""
    return {key: Snapshot(fp[0], fp[1], dict(fp[2]), list(fp[3])) for key, fp in world._before.items()}


def _writes_to(world: LocalWorld, resource_id: str) -> list[str]:
    assert world.azure is not None
    rid = resource_id.lower()
    return [f"{r.method} {r.operation} {r.resource_id}" for r in world.azure.requests
            if r.write and r.operation not in READ_ONLY_POSTS and r.status < 400
            and (r.resource_id.lower() == rid or r.resource_id.lower().startswith(rid + "/"))]


def evaluate(world: LocalWorld, before: dict[str, Snapshot]) -> Outcome:
    """Judge the run; the caller asserts on `problems` and on which VMs healed."""
    assert world.azure is not None
    state = world.azure.state
    out = Outcome()
    with state.lock:
        vms = {vm.id.lower(): vm for vm in state.vms.values()}
        disks = {d.id.lower(): d for d in state.disks.values()}
        nics = list(state.nics.values())
    # 1. No pre-existing disk deleted: neither gone from state nor ever the target of a successful DELETE.
    for disk_id in sorted(world.preexisting_disks - set(disks)):
        out.problems.append(f"pre-existing disk deleted: {disk_id}")
    for r in world.azure.requests:
        if r.method == "DELETE" and r.status < 400 and r.resource_id.lower() in world.preexisting_disks:
            out.problems.append(f"DELETE of a pre-existing disk was accepted: {r.resource_id}")
    preexisting_vms = set(before)
    for r in world.azure.requests:
        if r.method == "DELETE" and r.status < 400 and r.resource_id.lower() in preexisting_vms:
            out.problems.append(f"DELETE of a pre-existing VM was accepted: {r.resource_id}")

    # 2. No orphan.
    os_disks = {(vm.os_disk_id or "").lower() for vm in vms.values()}
    for disk in disks.values():
        if steps.TAG_INCIDENT not in disk.tags:
            continue
        role = disk.tags.get(steps.TAG_ROLE)
        if role == steps.ROLE_ORIGINAL and disk.id.lower() in world.preexisting_disks \
                and disk.id.lower() not in os_disks:
            continue  # the original, kept for rollback (after a rollback it must have lost the marks)
        if role == steps.ROLE_COPY and disk.id.lower() in os_disks:
            continue  # the repaired copy, now serving as the OS disk
        out.problems.append(f"orphaned disk {disk.id} (role {role}, managed by {disk.managed_by})")
    for vm in vms.values():
        if steps.TAG_INCIDENT in vm.tags or vm.id.lower() not in preexisting_vms:
            out.problems.append(f"orphaned VM {vm.id}")
    for nic in nics:
        if steps.TAG_INCIDENT in nic.tags or not nic.preexisting:
            out.problems.append(f"orphaned NIC {nic.id}")

    # 3. Each VM healed or exactly as before; 4. healthy VMs never written.
    for key, snap in before.items():
        vm = vms.get(key)
        exp = world.expectations.get(key)
        if vm is None:
            out.problems.append(f"VM {key} disappeared")
            continue
        now = Snapshot(vm.os_disk_id, vm.power, dict(vm.tags), [d.disk_id for d in vm.data_disks])
        if now == snap:
            out.unchanged.add(key)
        else:
            copy = disks.get((vm.os_disk_id or "").lower())
            verdict = detect.analyze_bytes(vm.serial_bytes()[-262_144:]).verdict.value
            healed = (copy is not None and copy.tags.get(steps.TAG_ROLE) == steps.ROLE_COPY
                      and copy.tags.get(steps.TAG_SOURCE_VM, "").lower() == key
                      and vm.power == "running" and verdict == "booted" and now.tags == snap.tags
                      and now.data_disks == snap.data_disks)
            if healed:
                out.healed.add(key)
            else:
                out.problems.append(f"VM {vm.name} neither healed nor as before: before {snap}, now {now}, "
                                    f"latest boot {verdict}")
        if exp is not None and exp.breakage == "healthy":
            writes = _writes_to(world, vm.id)
            if writes:
                out.problems.append(f"healthy VM {vm.name} was written: {writes[:5]}")
    return out


def check_invariants(world: LocalWorld, before: dict[str, Snapshot] | None = None) -> Outcome:
    """Assert the invariants; return the outcome so the test can say which VMs must have healed.

    `before` defaults to what the world recorded when it started (before any signal).
    """
    outcome = evaluate(world, before if before is not None else recorded(world))
    assert not outcome.problems, "invariants broken:\n  " + "\n  ".join(outcome.problems)
    return outcome


def creates_by_name(world: LocalWorld) -> dict[str, int]:
    """Successful PUTs that created a resource (201, or 200/202 on a name not seen before), per resource id."""
    assert world.azure is not None
    counts: dict[str, int] = {}
    for r in world.azure.requests:
        if r.method == "PUT" and r.status < 400 and "/runcommands/" not in r.resource_id.lower():
            counts[r.resource_id.lower()] = counts.get(r.resource_id.lower(), 0) + 1
    return counts


def incident_resource_names(world: LocalWorld) -> set[str]:
    """Names of every resource ever PUT in the run (created by the product)."""
    return {rid.rsplit("/", 1)[-1] for rid in creates_by_name(world)}


def summary_line(world: LocalWorld) -> dict[str, Any]:
    """A compact summary for assertion messages."""
    s = world.summary()
    return {k: s[k] for k in ("healed", "repairable", "failed_vms", "orphans", "incident_states")}
