"""Settings: defaults, every setting's validation, and messages that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remediation.model import InvalidInput, SettingsError, VmRef
from remediation.settings import Settings, TagRule, load_local_settings

SUB = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
SUB2 = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"
BASE = {"REMEDIATION_SUBSCRIPTIONS": SUB}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def vm(sub: str = SUB, rg: str = "App-Prod", name: str = "web-01") -> VmRef:
    return VmRef.parse(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")


def test_defaults() -> None:
    s = settings()
    assert s.subscriptions == (SUB,)
    assert s.resource_groups == ()
    assert s.opt_out_tag == TagRule("selinux-remediation", "off", exact_value=False)
    assert s.opt_in_tag is None
    assert (s.dry_run, s.approval_required, s.repair_policy_missing) == (False, False, False)
    assert s.approval_timeout_minutes == 240
    assert (s.blast_radius_max_vms, s.blast_radius_max_percent, s.blast_radius_window_minutes) == (5, 10.0, 60)
    assert (s.max_concurrent_repairs, s.sweep_concurrency) == (3, 8)
    assert s.heartbeat_workspace_ids == () and s.heartbeat_stale_minutes == 15
    assert s.max_payload_bytes == 1048576
    assert s.storage_connection is None and s.storage_table_url is None
    assert s.incident_table == "SelinuxIncidents"
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.logs_endpoint == "https://api.loganalytics.io/v1"
    assert s.ca_bundle is None and s.rescue_subnet_id is None
    assert s.rescue_vm_size == "Standard_D2s_v5"
    assert s.rescue_image == "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
    assert (s.poll_interval_seconds, s.verify_timeout_minutes) == (15, 15)
    assert s.serial_tail_bytes == 262144


def test_subscriptions_are_required_unless_scope_is_not_needed() -> None:
    with pytest.raises(SettingsError, match="REMEDIATION_SUBSCRIPTIONS is required"):
        Settings.from_env({})
    with pytest.raises(SettingsError, match="REMEDIATION_SUBSCRIPTIONS is required"):
        Settings.from_env({"REMEDIATION_SUBSCRIPTIONS": " , "})
    assert Settings.from_env({}, require_scope=False).subscriptions == ()


def test_subscriptions_list_is_trimmed_lowercased_and_deduplicated() -> None:
    s = Settings.from_env({"REMEDIATION_SUBSCRIPTIONS": f" {SUB} ,{SUB2}, {SUB.upper()} "})
    assert s.subscriptions == (SUB, SUB2.lower())


def test_scope_rules() -> None:
    s = settings(REMEDIATION_SUBSCRIPTIONS=f"{SUB},{SUB2}", REMEDIATION_RESOURCE_GROUPS="app-prod, Data")
    assert s.in_scope(vm())
    assert s.in_scope(vm(sub=SUB2, rg="DATA"))
    assert s.scope_reason(vm(rg="other")) == "resource group other is not in REMEDIATION_RESOURCE_GROUPS"
    other = vm(sub="11111111-2222-4333-8444-555555555555")
    assert "not in REMEDIATION_SUBSCRIPTIONS" in (s.scope_reason(other) or "")
    assert settings().in_scope(vm(rg="anything"))


def test_tags() -> None:
    s = settings(REMEDIATION_OPT_IN_TAG="auto-repair=yes")
    assert s.tag_reason({"auto-repair": "yes"}) is None
    assert s.tag_reason({"Auto-Repair": " yes "}) is None
    assert s.tag_reason({"auto-repair": "YES"}) == "not opted in: lacks tag auto-repair=yes"
    assert s.tag_reason({}) == "not opted in: lacks tag auto-repair=yes"
    # Opting out wins over opting in, and its value compares case-insensitively.
    assert s.tag_reason({"auto-repair": "yes", "SELINUX-REMEDIATION": "OFF"}) == (
        "opted out: carries tag selinux-remediation=off"
    )
    custom = settings(REMEDIATION_OPT_OUT_TAG="team=frozen")
    assert custom.tag_reason({"team": "Frozen"}) is not None
    assert custom.tag_reason({"selinux-remediation": "off"}) is None


@pytest.mark.parametrize("value", ["off", "name=", "=value", "a<b=c", "x/y=z"])
def test_bad_tags(value: str) -> None:
    with pytest.raises(SettingsError, match="REMEDIATION_OPT_OUT_TAG"):
        settings(REMEDIATION_OPT_OUT_TAG=value)
    with pytest.raises(SettingsError, match="REMEDIATION_OPT_IN_TAG"):
        settings(REMEDIATION_OPT_IN_TAG=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
     ("false", False), ("0", False), ("no", False), ("NO", False), ("", False)],
)
def test_booleans(value: str, expected: bool) -> None:
    for name, attr in [("REMEDIATION_DRY_RUN", "dry_run"), ("REMEDIATION_APPROVAL_REQUIRED", "approval_required"),
                       ("REMEDIATION_REPAIR_POLICY_MISSING", "repair_policy_missing")]:
        assert getattr(settings(**{name: value}), attr) is expected


@pytest.mark.parametrize("value", ["on", "off", "y", "2", "truthy", "t"])
def test_bad_booleans_name_the_setting(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings(REMEDIATION_DRY_RUN=value)
    assert str(info.value).startswith("REMEDIATION_DRY_RUN:")
    assert "true/false, 1/0 or yes/no" in str(info.value)


INTS = {
    "REMEDIATION_APPROVAL_TIMEOUT_MINUTES": ("approval_timeout_minutes", 1),
    "REMEDIATION_BLAST_RADIUS_MAX_VMS": ("blast_radius_max_vms", 1),
    "REMEDIATION_BLAST_RADIUS_WINDOW_MINUTES": ("blast_radius_window_minutes", 1),
    "REMEDIATION_MAX_CONCURRENT_REPAIRS": ("max_concurrent_repairs", 1),
    "REMEDIATION_SWEEP_CONCURRENCY": ("sweep_concurrency", 1),
    "REMEDIATION_HEARTBEAT_STALE_MINUTES": ("heartbeat_stale_minutes", 1),
    "REMEDIATION_MAX_PAYLOAD_BYTES": ("max_payload_bytes", 1024),
    "REMEDIATION_POLL_INTERVAL_SECONDS": ("poll_interval_seconds", 1),
    "REMEDIATION_VERIFY_TIMEOUT_MINUTES": ("verify_timeout_minutes", 1),
    "REMEDIATION_SERIAL_TAIL_BYTES": ("serial_tail_bytes", 4096),
}


@pytest.mark.parametrize("name", sorted(INTS))
def test_integers(name: str) -> None:
    attr, low = INTS[name]
    assert getattr(settings(**{name: f" {low + 7} "}), attr) == low + 7
    for bad in ["abc", "1.5", "", "1e3"]:
        if bad == "":
            continue  # empty means default
        with pytest.raises(SettingsError, match=f"^{name}: .*not a whole number"):
            settings(**{name: bad})
    with pytest.raises(SettingsError, match=f"^{name}: {low - 1} is out of range"):
        settings(**{name: str(low - 1)})
    with pytest.raises(SettingsError, match=f"^{name}: .* is out of range"):
        settings(**{name: "999999999999"})


def test_blast_radius_percent() -> None:
    assert settings(REMEDIATION_BLAST_RADIUS_MAX_PERCENT="12.5").blast_radius_max_percent == 12.5
    assert settings(REMEDIATION_BLAST_RADIUS_MAX_PERCENT="100").blast_radius_max_percent == 100.0
    for bad in ["0", "101", "-5"]:
        with pytest.raises(SettingsError, match=r"REMEDIATION_BLAST_RADIUS_MAX_PERCENT: .* out of range"):
            settings(REMEDIATION_BLAST_RADIUS_MAX_PERCENT=bad)
    with pytest.raises(SettingsError, match="not a number"):
        settings(REMEDIATION_BLAST_RADIUS_MAX_PERCENT="ten")


def test_workspace_ids() -> None:
    assert settings(REMEDIATION_HEARTBEAT_WORKSPACE_IDS=f"{SUB2}").heartbeat_workspace_ids == (SUB2.lower(),)
    with pytest.raises(SettingsError, match="REMEDIATION_HEARTBEAT_WORKSPACE_IDS: 'ops-logs' is not a workspace GUID"):
        settings(REMEDIATION_HEARTBEAT_WORKSPACE_IDS="ops-logs")


def test_resource_groups_are_validated() -> None:
    with pytest.raises(SettingsError, match="REMEDIATION_RESOURCE_GROUPS: 'bad/rg' is not a resource group name"):
        settings(REMEDIATION_RESOURCE_GROUPS="good,bad/rg")


def test_storage_connection_defaults_to_azure_webjobs_storage() -> None:
    conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    s = settings(AzureWebJobsStorage=conn)
    assert s.storage_connection == conn
    assert "c2VjcmV0" not in repr(s)
    own = "AccountName=other;AccountKey=a2V5"
    assert settings(AzureWebJobsStorage=conn, REMEDIATION_STORAGE_CONNECTION=own).storage_connection == own


def test_storage_table_url_and_identity_based_webjobs_storage() -> None:
    s = settings(REMEDIATION_STORAGE_TABLE_URL="https://acct.table.core.windows.net/")
    assert (s.storage_connection, s.storage_table_url) == (None, "https://acct.table.core.windows.net")
    s = settings(AzureWebJobsStorage__accountName="acct")
    assert s.storage_table_url == "https://acct.table.core.windows.net"
    s = settings(AzureWebJobsStorage__tableServiceUri="https://acct.table.core.windows.net")
    assert s.storage_table_url == "https://acct.table.core.windows.net"


def test_storage_errors_never_echo_the_secret() -> None:
    with pytest.raises(SettingsError, match="set only one of"):
        settings(REMEDIATION_STORAGE_CONNECTION="AccountName=a;AccountKey=k", REMEDIATION_STORAGE_TABLE_URL="https://a.b")
    with pytest.raises(SettingsError) as info:
        settings(REMEDIATION_STORAGE_CONNECTION="supersecretvalue")
    assert "REMEDIATION_STORAGE_CONNECTION" in str(info.value)
    assert "supersecretvalue" not in str(info.value)
    with pytest.raises(SettingsError, match="names no AccountName"):
        settings(AzureWebJobsStorage="Foo=bar")
    with pytest.raises(SettingsError, match=r"REMEDIATION_STORAGE_TABLE_URL: .* is not an https URL"):
        settings(REMEDIATION_STORAGE_TABLE_URL="http://acct.table.core.windows.net")


@pytest.mark.parametrize("name", ["REMEDIATION_ARM_ENDPOINT", "REMEDIATION_LOGS_ENDPOINT"])
def test_endpoints_must_be_https(name: str) -> None:
    assert getattr(settings(**{name: "https://127.0.0.1:8443/v1/"}), name.removeprefix("REMEDIATION_").lower()) == (
        "https://127.0.0.1:8443/v1"
    )
    for bad in ["http://localhost:8080", "management.azure.com", "https://", "https://h/?x=1", "https://u:p@h"]:
        with pytest.raises(SettingsError, match=f"^{name}:"):
            settings(**{name: bad})


def test_incident_table_name() -> None:
    assert settings(REMEDIATION_INCIDENT_TABLE="Incidents2").incident_table == "Incidents2"
    for bad in ["ab", "1abc", "has-dash", "x" * 64]:
        with pytest.raises(SettingsError, match=r"REMEDIATION_INCIDENT_TABLE: .* is not a table name"):
            settings(REMEDIATION_INCIDENT_TABLE=bad)


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert settings(REMEDIATION_CA_BUNDLE=str(ca)).ca_bundle == str(ca)
    with pytest.raises(SettingsError, match=r"REMEDIATION_CA_BUNDLE: .* does not exist"):
        settings(REMEDIATION_CA_BUNDLE=str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="REMEDIATION_CA_BUNDLE"):
        settings(REMEDIATION_CA_BUNDLE=str(tmp_path))


def test_rescue_settings() -> None:
    subnet = f"/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v1/subnets/rescue"
    s = settings(REMEDIATION_RESCUE_SUBNET_ID=subnet, REMEDIATION_RESCUE_VM_SIZE="Standard_B2s",
                 REMEDIATION_RESCUE_IMAGE="Debian:debian-12:12-gen2:latest")
    assert (s.rescue_subnet_id, s.rescue_vm_size, s.rescue_image) == (
        subnet, "Standard_B2s", "Debian:debian-12:12-gen2:latest")
    with pytest.raises(SettingsError, match=r"REMEDIATION_RESCUE_SUBNET_ID: .* is not a subnet resource id"):
        settings(REMEDIATION_RESCUE_SUBNET_ID=f"/subscriptions/{SUB}/resourceGroups/net")
    with pytest.raises(SettingsError, match="REMEDIATION_RESCUE_VM_SIZE"):
        settings(REMEDIATION_RESCUE_VM_SIZE="Standard D2s")
    for bad in ["Canonical:ubuntu:22", "a:b:c:d:e", "Canonical::sku:latest", "a b:c:d:e"]:
        with pytest.raises(SettingsError, match=r"REMEDIATION_RESCUE_IMAGE: .* publisher:offer:sku:version"):
            settings(REMEDIATION_RESCUE_IMAGE=bad)


def test_repair_options_carry_what_the_orchestrator_needs() -> None:
    s = settings(REMEDIATION_POLL_INTERVAL_SECONDS="5", REMEDIATION_APPROVAL_REQUIRED="yes")
    options = s.repair_options()
    assert options["poll_interval_seconds"] == 5
    assert options["approval_required"] is True
    assert set(options) >= {"verify_timeout_minutes", "approval_timeout_minutes", "rescue_image", "rescue_vm_size",
                            "rescue_subnet_id"}
    json.dumps(options)


def test_settings_are_read_on_demand_from_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATION_SUBSCRIPTIONS", SUB2)
    monkeypatch.setenv("REMEDIATION_DRY_RUN", "true")
    assert Settings.from_env().subscriptions == (SUB2.lower(),)
    assert Settings.from_env().dry_run is True
    assert Settings.from_env(BASE).dry_run is False


def test_load_local_settings(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "REMEDIATION_SUBSCRIPTIONS": SUB, "REMEDIATION_DRY_RUN": True, "REMEDIATION_MAX_CONCURRENT_REPAIRS": 2,
        "Unset": None,
    }}))
    values = load_local_settings(path)
    assert values == {"REMEDIATION_SUBSCRIPTIONS": SUB, "REMEDIATION_DRY_RUN": "true",
                      "REMEDIATION_MAX_CONCURRENT_REPAIRS": "2"}
    s = Settings.from_env(values)
    assert s.dry_run and s.max_concurrent_repairs == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{", "not JSON"), ("[]", "\"Values\" object"), ('{"Values": []}', "\"Values\" object"),
     ('{"Values": {"A": {"x": 1}}}', "Values.A must be")],
)
def test_load_local_settings_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "local.settings.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidInput, match=None) as info:
        load_local_settings(path)
    assert message in str(info.value)
