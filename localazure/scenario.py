"""Scenario files: the subscriptions, networks and VMs a local Azure starts with; and a synthetic generator.

A scenario is JSON:

    {"workspace_id": "<guid>", "images": true, "real_boot": false,
     "subscriptions": [{"id": "<guid>", "name": "Production",
       "resource_groups": [{"name": "rg-web", "location": "eastus", "tags": {},
         "vnets": [{"name": "vnet-web", "prefixes": ["10.1.0.0/16"],
                    "subnets": [{"name": "default", "prefix": "10.1.0.0/24"}]}],
         "vms": [{"name": "web-01", "os": "linux", "size": "Standard_D2s_v5", "zones": ["1"], "tags": {},
                  "power": "running", "disk": "selinuxtype_disabled", "encrypted": false, "unmanaged": false,
                  "layout": {"table": "gpt", "root_fs": "ext4", "lvm": false, "separate_boot": true},
                  "heartbeat_minutes_ago": 120, "monitored": true, "boot_diagnostics": true}]}]}]}

`disk` is "healthy" or a breakage named in bootmodel.BREAKAGES. With `images` true, every managed
Linux OS disk that is not encrypted gets a real raw image (built once per layout and breakage, then
copied per VM). A broken VM starts frozen: its serial log holds an earlier healthy boot, then the
failing one; its agent is not ready and its last heartbeat is `heartbeat_minutes_ago` (scaled) ago.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localazure import bootmodel
from localazure.state import (
    COMPUTE,
    NETWORK,
    Disk,
    Nic,
    ResourceGroup,
    State,
    Subnet,
    Subscription,
    Vm,
    Vnet,
    arm_id,
)

DEFAULT_SCENARIO = Path(__file__).with_name("scenarios") / "default.json"
IMAGE_RECIPE = "2"
IMAGE_MB = 256


class ScenarioError(ValueError):
    """The scenario file is wrong; the message says where."""


def load(path: Path | str | None) -> dict[str, Any]:
    """Read and validate a scenario file (the default scenario when path is None)."""
    p = Path(path) if path is not None else DEFAULT_SCENARIO
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ScenarioError(f"scenario file {p} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"scenario file {p} is not valid JSON: {exc}") from exc
    validate(data, str(p))
    result: dict[str, Any] = data
    return result


def _req(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ScenarioError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise ScenarioError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def validate(data: Any, where: str = "scenario") -> None:
    """Raise ScenarioError naming the first problem."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: the top level must be an object")
    subs = _req(data, "subscriptions", list, where)
    if not subs:
        raise ScenarioError(f"{where}.subscriptions: at least one subscription is needed")
    for i, sub in enumerate(subs):
        w = f"{where}.subscriptions[{i}]"
        if not isinstance(sub, dict):
            raise ScenarioError(f"{w}: expected an object")
        sid = _req(sub, "id", str, w)
        try:
            uuid.UUID(sid)
        except ValueError as exc:
            raise ScenarioError(f"{w}.id: {sid!r} is not a GUID") from exc
        for j, rg in enumerate(_req(sub, "resource_groups", list, w)):
            wr = f"{w}.resource_groups[{j}]"
            if not isinstance(rg, dict):
                raise ScenarioError(f"{wr}: expected an object")
            _req(rg, "name", str, wr)
            _req(rg, "location", str, wr)
            for k, vm in enumerate(rg.get("vms", [])):
                wv = f"{wr}.vms[{k}]"
                if not isinstance(vm, dict):
                    raise ScenarioError(f"{wv}: expected an object")
                _req(vm, "name", str, wv)
                disk = vm.get("disk", "healthy")
                if disk not in bootmodel.BREAKAGES:
                    raise ScenarioError(f"{wv}.disk: unknown state {disk!r} (known: {sorted(bootmodel.BREAKAGES)})")
                if vm.get("os", "linux") not in ("linux", "windows"):
                    raise ScenarioError(f"{wv}.os: expected 'linux' or 'windows'")
                if vm.get("power", "running") not in ("running", "deallocated", "stopped"):
                    raise ScenarioError(f"{wv}.power: expected running, deallocated or stopped")


# ---------------------------------------------------------------------------------------------- images


def image_cache_dir() -> Path:
    base = os.environ.get("CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selinux-remediator")
    return Path(base) / "localazure-images"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def base_image(layout: dict[str, Any], breakage: str, cache: Path | None = None) -> Path:
    """The cached raw image of an OS disk with this layout and breakage (built on first use)."""
    from localazure import images

    lay = images.Layout(**layout)
    spec = bootmodel.BREAKAGES[breakage]
    root = cache or image_cache_dir()
    target = root / f"v{IMAGE_RECIPE}-{lay.name}-{breakage}.img"
    if target.exists():
        return target
    with _locked(root / f"{target.name}.lock"):
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="la-tree-") as tmp:
            tree = images.selinux_tree(Path(tmp) / "root", mode=spec.mode, policy_type=spec.policy_type,
                                       installed=spec.installed, label=spec.labeled)
            partial = target.with_suffix(".partial")
            images.build_disk(partial, tree, layout=lay, size_mb=IMAGE_MB)
            partial.rename(target)
    return target


def debian_base_image(breakage: str, cache: Path | None = None) -> Path:
    """A bootable Debian SELinux disk with this breakage written into /etc/selinux/config (cached)."""
    from localazure import images

    if breakage not in bootmodel.DEBIAN_CONFIGS:
        raise ScenarioError(f"disk state {breakage!r} is not available with real boots "
                            f"(available: {sorted(bootmodel.DEBIAN_CONFIGS)})")
    root = cache or image_cache_dir()
    target = root / f"v{IMAGE_RECIPE}-debian-{breakage}.img"
    if target.exists():
        return target
    with _locked(root / f"{target.name}.lock"):
        if target.exists():
            return target
        partial = target.with_suffix(".partial")
        images.copy_disk(images.debian_image(None, images.Layout()).disk, partial)
        images.write_file(partial, "/etc/selinux/config", bootmodel.DEBIAN_CONFIGS[breakage].encode())
        partial.rename(target)
    return target


# ---------------------------------------------------------------------------------------------- building state


def populate(state: State, data: dict[str, Any], images: bool | None = None, now: float | None = None,
             real_boot: bool = False) -> None:
    """Create every resource of the scenario in `state` (images: override the scenario's flag).

    With real_boot, OS disks are bootable Debian images (the default layout) with the breakage written in.
    """
    validate(data)
    use_images = data.get("images", True) if images is None else images
    started = time.time() if now is None else now
    state.workspace_id = str(data.get("workspace_id") or state.workspace_id)
    for sub in data["subscriptions"]:
        sid = sub["id"].lower()
        state.subscriptions[sid] = Subscription(sid, sub.get("name", sid))
        for rg in sub["resource_groups"]:
            _populate_group(state, sid, rg, bool(use_images), started, real_boot)


def _populate_group(state: State, sid: str, rg: dict[str, Any], use_images: bool, started: float,
                    real_boot: bool) -> None:
    location = rg["location"].lower()
    group = ResourceGroup(sid, rg["name"], location, dict(rg.get("tags") or {}))
    state.groups[group.id.lower()] = group
    first_subnet: Subnet | None = None
    for vn in rg.get("vnets") or [{"name": f"vnet-{rg['name']}", "prefixes": ["10.0.0.0/16"],
                                   "subnets": [{"name": "default", "prefix": "10.0.0.0/24"}]}]:
        vid = arm_id(sid, group.name, NETWORK, "virtualNetworks", vn["name"])
        vnet = Vnet(vid, vn["name"], vn.get("location", location).lower(), list(vn.get("prefixes", ["10.0.0.0/16"])))
        for sn in vn.get("subnets", [{"name": "default", "prefix": "10.0.0.0/24"}]):
            subnet = Subnet(f"{vid}/subnets/{sn['name']}", sn["name"], sn.get("prefix", "10.0.0.0/24"))
            vnet.subnets[sn["name"].lower()] = subnet
            first_subnet = first_subnet or subnet
        state.vnets[vid.lower()] = vnet
    for spec in rg.get("vms", []):
        _populate_vm(state, sid, group, spec, first_subnet, use_images, started, real_boot)


def _populate_vm(state: State, sid: str, group: ResourceGroup, spec: dict[str, Any], subnet: Subnet | None,
                 use_images: bool, started: float, real_boot: bool) -> None:
    name = spec["name"]
    location = group.location
    rid = arm_id(sid, group.name, COMPUTE, "virtualMachines", name)
    windows = spec.get("os", "linux") == "windows"
    breakage = spec.get("disk", "healthy")
    vm = Vm(id=rid, name=name, subscription=sid, resource_group=group.name, location=location,
            vm_size=spec.get("size", "Standard_D2s_v5"), os_type="Windows" if windows else "Linux",
            zones=[str(z) for z in spec.get("zones", [])], tags=dict(spec.get("tags") or {}),
            computer_name=spec.get("computer_name", name), preexisting=True,
            monitored=bool(spec.get("monitored", True)), boot_diagnostics=bool(spec.get("boot_diagnostics", True)),
            image_reference=({"publisher": "MicrosoftWindowsServer", "offer": "WindowsServer",
                              "sku": "2022-datacenter-g2", "version": "latest"} if windows else
                             {"publisher": "RedHat", "offer": "RHEL", "sku": "9-lvm-gen2", "version": "latest"}),
            declared=breakage)
    vm.created = started - 30 * 86400
    if spec.get("unmanaged"):
        vm.vhd_uri = f"https://{group.name.lower().replace('-', '')[:16]}sa.blob.core.windows.net/vhds/{name}.vhd"
        vm.os_disk_name = f"{name}-osdisk"
    else:
        disk_name = spec.get("os_disk_name", f"{name}_OsDisk_1_{uuid.uuid5(uuid.NAMESPACE_URL, rid).hex}")
        did = arm_id(sid, group.name, COMPUTE, "disks", disk_name)
        disk = Disk(id=did, name=disk_name, location=location, zones=list(vm.zones), tags={},
                    size_gb=int(spec.get("disk_size_gb", 30 if not windows else 127)),
                    os_type=vm.os_type, managed_by=rid, declared=breakage, ade=bool(spec.get("encrypted")),
                    creation_data={"createOption": "FromImage"}, preexisting=True)
        disk.created = vm.created
        if use_images and not windows and not disk.ade and spec.get("image", True):
            layout = spec.get("layout") or {}
            disk.path = state.data_dir / "disks" / sid / group.name.lower() / f"{disk_name}.img"
            from localazure import images as images_mod

            base = debian_base_image(breakage) if real_boot else base_image(layout, breakage)
            images_mod.copy_disk(base, disk.path)
        state.disks[did.lower()] = disk
        vm.os_disk_id, vm.os_disk_name = did, disk_name
    if subnet is not None:
        nic_name = f"{name}-nic"
        nid = arm_id(sid, group.name, NETWORK, "networkInterfaces", nic_name)
        nic = Nic(nid, nic_name, location, subnet.id, state.next_ip(subnet.prefix), vm_id=rid, preexisting=True,
                  mac=_mac(nid))
        state.nics[nid.lower()] = nic
        vm.nic_ids.append(nid)
    power = spec.get("power", "running")
    vm.power = power
    transcript = bootmodel.windows_transcript() if windows else bootmodel.transcript(
        bootmodel.SelinuxFacts.from_spec(bootmodel.BREAKAGES[breakage]), vm.computer_name)
    healthy = bootmodel.windows_transcript() if windows else bootmodel.transcript(
        bootmodel.SelinuxFacts.from_spec(bootmodel.BREAKAGES["healthy"]), vm.computer_name)
    stale_for = state.latency.scaled(float(spec.get("heartbeat_minutes_ago", 120)) * 60)
    if power == "running":
        outcome = transcript.outcome
        if spec.get("lazy_serial"):
            text = healthy.text + ("" if outcome is bootmodel.Outcome.BOOTED else transcript.text)
            vm.serial_seed = lambda text=text: text
        else:
            vm.append_serial(healthy.text)
            if outcome is not bootmodel.Outcome.BOOTED:
                vm.append_serial(transcript.text)
        vm.last_outcome = outcome.value
        vm.agent_ready = outcome.guest_runs
        vm.heartbeat_at = None if outcome.guest_runs else started - stale_for
    else:
        vm.append_serial(healthy.text)
        vm.agent_ready = False
        vm.heartbeat_at = started - stale_for
    state.vms[rid.lower()] = vm


def _mac(seed: str) -> str:
    raw = uuid.uuid5(uuid.NAMESPACE_URL, seed).bytes[:6]
    return "-".join(f"{b:02X}" for b in (bytes([0x00, 0x0D, 0x3A]) + raw[3:]))


# ---------------------------------------------------------------------------------------------- synthetic


SYNTHETIC_BREAKAGES = ("selinuxtype_disabled", "selinuxtype_typo", "policy_package_missing",
                       "enforcing_nothing_installed")


def synthetic(vms: int, broken: int, seed: int = 0, subscriptions: int = 1, group_size: int = 100,
              images_for_broken: bool = False) -> dict[str, Any]:
    """A large scenario: `vms` VMs in groups of `group_size`, `broken` of them frozen on SELinux.

    Healthy VMs have no disk image and render their serial log on first read, so 10,000 VMs stay cheap.
    """
    if vms < 0 or broken < 0 or broken > vms:
        raise ScenarioError(f"synthetic scenario: need 0 <= broken ({broken}) <= vms ({vms})")
    if subscriptions < 1:
        raise ScenarioError("synthetic scenario: need at least one subscription")
    rng = random.Random(seed)
    broken_idx = set(rng.sample(range(vms), broken))
    subs: list[dict[str, Any]] = []
    for s in range(subscriptions):
        subs.append({"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "name": f"Synthetic {s + 1}",
                     "resource_groups": []})
    locations = ("eastus", "westeurope", "southeastasia")
    for i in range(vms):
        sub = subs[i % subscriptions]
        g_index = i // (group_size * subscriptions)
        if len(sub["resource_groups"]) <= g_index:
            loc = locations[g_index % len(locations)]
            sub["resource_groups"].append({"name": f"rg-app-{g_index:04d}", "location": loc, "vms": [],
                                           "vnets": [{"name": f"vnet-{g_index:04d}",
                                                      "prefixes": [f"10.{g_index % 250}.0.0/16"],
                                                      "subnets": [{"name": "default",
                                                                   "prefix": f"10.{g_index % 250}.0.0/24"}]}]})
        is_broken = i in broken_idx
        vm: dict[str, Any] = {"name": f"vm-{i:05d}", "size": rng.choice(["Standard_D2s_v5", "Standard_B2ms",
                                                                          "Standard_E4s_v5"]),
                              "tags": {"env": rng.choice(["prod", "test", "dev"])}, "lazy_serial": True,
                              "image": images_for_broken and is_broken,
                              "disk": SYNTHETIC_BREAKAGES[i % len(SYNTHETIC_BREAKAGES)] if is_broken else "healthy",
                              "heartbeat_minutes_ago": rng.randint(30, 600)}
        if not is_broken and rng.random() < 0.05:
            vm["power"] = "deallocated"
        sub["resource_groups"][g_index]["vms"].append(vm)
    return {"workspace_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "images": images_for_broken,
            "subscriptions": subs}
