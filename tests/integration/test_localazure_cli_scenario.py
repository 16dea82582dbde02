"""`python -m localazure serve`, scenario files, the synthetic generator and the boot model's rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from localazure import bootmodel, scenario
from localazure.testing import running

pytestmark = pytest.mark.localazure

ROOT = Path(__file__).resolve().parents[2]


def _serve(*args: str, state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "localazure", "serve", "--port", "0", "--time-scale", "0.001",
                             "--state-dir", str(state_dir), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(info) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        key, _, value = line.strip().partition("=")
        if key in ("endpoint", "ca"):
            info[key] = value
    return proc, info


def test_serve_prints_endpoint_and_ca_and_answers(tmp_path: Path) -> None:
    proc, info = _serve("--no-images", state_dir=tmp_path)
    try:
        assert info["endpoint"].startswith("https://127.0.0.1:")
        assert Path(info["ca"]).is_file()
        written = json.loads((tmp_path / "endpoint.json").read_text())
        assert written["endpoint"] == info["endpoint"] and written["ca"] == info["ca"]
        subs = requests.get(f"{info['endpoint']}/subscriptions?api-version=2022-12-01", verify=info["ca"],
                            headers={"Authorization": "Bearer x"}, timeout=10).json()["value"]
        assert subs[0]["displayName"] == "Contoso Production"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_serve_synthetic_scenario(tmp_path: Path) -> None:
    proc, info = _serve("--vms", "300", "--broken", "7", "--seed", "5", state_dir=tmp_path)
    try:
        sub = json.loads((tmp_path / "endpoint.json").read_text())["subscriptions"][0]
        vms = requests.get(f"{info['endpoint']}/subscriptions/{sub}/providers/Microsoft.Compute/virtualMachines",
                           params={"api-version": "x", "statusOnly": "true"}, verify=info["ca"], timeout=10,
                           headers={"Authorization": "Bearer x"}).json()["value"]
        not_ready = [v for v in vms if v["properties"]["instanceView"]["vmAgent"]["statuses"][0]["displayStatus"]
                     == "Not Ready" and "PowerState/running" in
                     [s["code"] for s in v["properties"]["instanceView"]["statuses"]]]
        assert len(not_ready) == 7
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "/nonexistent/s.json"], "does not exist"),
    (["--time-scale", "0"], "--time-scale must be positive"),
    (["--faults", "2"], "between 0 and 1"),
    (["--vms", "5", "--broken", "9"], "broken"),
])
def test_serve_bad_arguments_exit_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "localazure", "serve", "--state-dir", str(tmp_path), *args],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_scenario_validation_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"subscriptions": [{"id": "3f2b6c1d-8a4e-4f7b-9c2d-1e5a7b9c0d24",
                                                  "resource_groups": [{"name": "rg", "location": "eastus",
                                                                       "vms": [{"name": "x", "disk": "melted"}]}]}]}))
    with pytest.raises(scenario.ScenarioError, match=r"vms\[0\]\.disk: unknown state 'melted'"):
        scenario.load(bad)
    bad.write_text("{")
    with pytest.raises(scenario.ScenarioError, match="not valid JSON"):
        scenario.load(bad)
    with pytest.raises(scenario.ScenarioError, match="not a GUID"):
        scenario.validate({"subscriptions": [{"id": "nope", "resource_groups": []}]})


def test_synthetic_generator_is_seeded_and_counts_right() -> None:
    a = scenario.synthetic(1000, 13, seed=4)
    b = scenario.synthetic(1000, 13, seed=4)
    assert a == b
    vms = [vm for s in a["subscriptions"] for g in s["resource_groups"] for vm in g["vms"]]
    assert len(vms) == 1000
    assert sum(vm["disk"] != "healthy" for vm in vms) == 13
    with running(a, time_scale=0.001) as az:
        frozen = [v for v in az.state.vms.values() if v.last_outcome == "selinux_freeze"]
        assert len(frozen) == 13
        assert all(v.heartbeat_at is not None and not v.agent_ready for v in frozen)


@pytest.mark.disk
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_default_scenario_has_real_images_for_managed_linux_disks(tmp_path: Path) -> None:
    with running(None, time_scale=0.001, state_dir=tmp_path) as az:
        by_vm = {d.managed_by.rsplit("/", 1)[1]: d for d in az.state.disks.values() if d.managed_by}
        assert by_vm["vault-01"].path is None and by_vm["vault-01"].ade  # encrypted: refused by the product
        assert by_vm["win-01"].path is None
        for name in ("web-03", "db-02", "cache-01"):
            disk = by_vm[name]
            assert disk.path is not None
            facts = bootmodel.facts_from_disk(disk.path)
            assert bootmodel.predict(facts) is bootmodel.Outcome.SELINUX_FREEZE, name
        assert bootmodel.predict(bootmodel.facts_from_disk(by_vm["db-01"].path)) is bootmodel.Outcome.BOOTED


# ---------------------------------------------------------------------------------------------- boot model rules


@pytest.mark.parametrize(("value", "mode"), [
    ("enforcing", "enforcing"), ("Enforcing", "enforcing"), ("ENFORCING # note", "enforcing"),
    ("permissive", "permissive"), ("disabled", "disabled"), ("enforce", "other"), ("", "other"),
])
def test_selinux_mode_is_a_case_insensitive_prefix(value: str, mode: str) -> None:
    assert bootmodel.parse_mode(value) == mode


def test_config_parsing_follows_libselinux() -> None:
    assert bootmodel.parse_config("# c\nSELINUX=enforcing\nSELINUXTYPE=disabled\n") == ("enforcing", "disabled")
    assert bootmodel.parse_config("SELINUX=permissive\n") == ("permissive", "targeted")  # default type
    # selinux_getenforcemode matches the tag at column 0 only; the type tag may be indented.
    assert bootmodel.parse_config(" SELINUX=enforcing\n SELINUXTYPE=mls  \n") == ("other", "mls")


@pytest.mark.parametrize(("breakage", "outcome"), [
    ("healthy", bootmodel.Outcome.BOOTED),
    ("selinuxtype_disabled", bootmodel.Outcome.SELINUX_FREEZE),
    ("selinuxtype_typo", bootmodel.Outcome.SELINUX_FREEZE),
    ("policy_package_missing", bootmodel.Outcome.SELINUX_FREEZE),
    ("enforcing_nothing_installed", bootmodel.Outcome.SELINUX_FREEZE),
    ("permissive_missing_policy", bootmodel.Outcome.PERMISSIVE_MISSING_POLICY),
    ("unlabeled_config", bootmodel.Outcome.UNLABELED_CONFIG),
])
def test_each_breakage_predicts_its_outcome(breakage: str, outcome: bootmodel.Outcome) -> None:
    facts = bootmodel.SelinuxFacts.from_spec(bootmodel.BREAKAGES[breakage])
    assert bootmodel.predict(facts) is outcome
    text = bootmodel.transcript(facts, "host-1").text
    assert ("Freezing execution." in text) is (outcome is bootmodel.Outcome.SELINUX_FREEZE)
    assert text.rstrip().endswith("host-1 login:") is (outcome is bootmodel.Outcome.BOOTED)
    assert ("emergency mode" in text) is (outcome in (bootmodel.Outcome.UNLABELED_CONFIG,
                                                      bootmodel.Outcome.PERMISSIVE_MISSING_POLICY))


def test_kernel_enforcing_turns_permissive_missing_policy_into_a_freeze() -> None:
    facts = bootmodel.SelinuxFacts.from_spec(bootmodel.BREAKAGES["permissive_missing_policy"])
    assert bootmodel.predict(facts, kernel_enforcing=True) is bootmodel.Outcome.SELINUX_FREEZE


class _DirReader:
    """A DiskReader over a directory tree, standing in for a disk image."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read_file(self, disk: Path, path: str) -> bytes | None:
        p = self.root / path.lstrip("/")
        return p.read_bytes() if p.is_file() else None

    def list_dir(self, disk: Path, path: str) -> list[str] | None:
        p = self.root / path.lstrip("/")
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else None

    def file_xattr(self, disk: Path, path: str, name: str) -> bytes | None:
        return b"system_u:object_r:selinux_config_t:s0\0" if (self.root / path.lstrip("/")).is_file() else None


def test_facts_from_disk_reads_config_and_installed_policies(tmp_path: Path) -> None:
    policy = tmp_path / "etc/selinux/targeted/policy"
    policy.mkdir(parents=True)
    (policy / "policy.33").write_bytes(b"x")
    (tmp_path / "etc/selinux/mls/policy").mkdir(parents=True)  # a directory without a policy file
    (tmp_path / "etc/selinux/config").write_text("SELINUX=enforcing\nSELINUXTYPE=mls\n")
    facts = bootmodel.facts_from_disk(tmp_path / "disk.img", _DirReader(tmp_path))
    assert facts is not None and facts.installed == ("targeted",) and facts.policy_type == "mls"
    assert bootmodel.predict(facts) is bootmodel.Outcome.SELINUX_FREEZE
    assert bootmodel.facts_from_disk(tmp_path / "x", _DirReader(tmp_path / "empty")) is None
