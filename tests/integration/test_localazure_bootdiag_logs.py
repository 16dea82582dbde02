"""Boot diagnostics blobs through BlobClient and the heartbeat query through LogsQueryClient."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.monitor.query import LogsQueryStatus

from localazure.testing import LocalAzureHandle, running
from tests.integration.conftest import SUBSCRIPTION, WORKSPACE, small_scenario

pytestmark = pytest.mark.localazure

RG = "rg-app"
STALE_QUERY = ("Heartbeat | summarize LastHeartbeat = max(TimeGenerated) by _ResourceId = tolower(_ResourceId) "
               "| where LastHeartbeat < ago({n}m)")


def _serial_url(az: LocalAzureHandle, vm: str) -> str:
    data = az.compute_client().virtual_machines.retrieve_boot_diagnostics_data(
        RG, vm, sas_uri_expiration_time_in_minutes=10)
    assert data.console_screenshot_blob_uri.startswith(az.endpoint)
    return str(data.serial_console_log_blob_uri)


def _vm_id(name: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION}/resourcegroups/{RG}/providers/microsoft.compute/virtualmachines/{name}"


def test_serial_log_tail_of_frozen_vm_shows_selinux_freeze(local_azure: LocalAzureHandle) -> None:
    blob = local_azure.blob_client(_serial_url(local_azure, "app-frozen"))
    props = blob.get_blob_properties()
    assert props.size > 1000
    assert props.blob_type == "BlockBlob"
    tail = blob.download_blob(offset=props.size - 400, length=400).readall().decode()
    assert len(tail) == 400
    assert "systemd[1]: Failed to load SELinux policy." in tail
    assert "[!!!!!!] Failed to load SELinux policy." in tail
    assert tail.rstrip().endswith("Freezing execution.")
    whole = blob.download_blob().readall().decode()
    # The buffer survives reboots: an earlier healthy boot comes before the frozen one.
    assert whole.index("app-frozen login:") < whole.index("Freezing execution.")
    ranged = [r for r in local_azure.requests if r.operation == "blob.get"]
    assert {r.status for r in ranged} == {206}


def test_serial_log_of_healthy_and_permissive_vms(local_azure: LocalAzureHandle) -> None:
    ok = local_azure.blob_client(_serial_url(local_azure, "app-ok")).download_blob().readall().decode()
    assert ok.rstrip().endswith("app-ok login:")
    assert "Failed to load SELinux policy" not in ok
    perm = local_azure.blob_client(_serial_url(local_azure, "app-permissive")).download_blob().readall().decode()
    assert "Could not open policy file <= /etc/selinux/disabled/policy/policy.33" in perm
    assert "Freezing execution." not in perm


def test_bad_or_expired_signature_is_refused(local_azure: LocalAzureHandle) -> None:
    url = _serial_url(local_azure, "app-frozen")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query["sig"] = ["AAAA" + query["sig"][0][4:]]
    forged = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    with pytest.raises(ClientAuthenticationError) as exc:
        local_azure.blob_client(forged).download_blob().readall()
    assert exc.value.status_code == 403
    server = local_azure.server
    past = datetime.now(UTC) - timedelta(minutes=1)
    key = urlsplit(url).path.split("/")[2]
    with pytest.raises(ClientAuthenticationError):
        local_azure.blob_client(server.sas_url(key, "serial.log", past)).get_blob_properties()


def test_range_beyond_the_end_is_416(local_azure: LocalAzureHandle) -> None:
    blob = local_azure.blob_client(_serial_url(local_azure, "app-ok"))
    size = blob.get_blob_properties().size
    with pytest.raises(HttpResponseError) as exc:
        blob.download_blob(offset=size + 10, length=5).readall()
    assert exc.value.status_code == 416


def test_boot_diagnostics_disabled_is_a_conflict() -> None:
    scenario = small_scenario()
    scenario["subscriptions"][0]["resource_groups"][0]["vms"].append({"name": "no-diag", "boot_diagnostics": False})
    with running(scenario, time_scale=0.001) as az, pytest.raises(HttpResponseError) as exc:
        _serial_url(az, "no-diag")
    assert exc.value.status_code == 409


def test_stale_heartbeat_query_lists_silent_vms(local_azure: LocalAzureHandle) -> None:
    logs = local_azure.logs_client()
    result = logs.query_workspace(WORKSPACE, STALE_QUERY.format(n=30), timespan=None)
    assert result.status == LogsQueryStatus.SUCCESS
    table = result.tables[0]
    assert list(table.columns) == ["_ResourceId", "LastHeartbeat"]
    rows = {row[0]: row[1] for row in table.rows}
    # frozen 90 min ago, typo 45 min ago, deallocated long ago, the encrypted and VHD VMs (120 min by default),
    # and the permissive one: without a policy its boot ends in emergency mode, so no agent and no heartbeat.
    assert set(rows) == {_vm_id(n) for n in ("app-frozen", "app-typo", "app-off", "app-encrypted", "app-vhd",
                                             "app-permissive")}
    assert all(isinstance(v, datetime) for v in rows.values())
    narrower = logs.query_workspace(WORKSPACE, STALE_QUERY.format(n=60), timespan=None)
    assert _vm_id("app-typo") not in {r[0] for r in narrower.tables[0].rows}
    assert _vm_id("app-frozen") in {r[0] for r in narrower.tables[0].rows}
    # A timespan limits the table: heartbeats older than it are not there at all.
    windowed = logs.query_workspace(WORKSPACE, STALE_QUERY.format(n=30), timespan=timedelta(hours=1))
    assert {r[0] for r in windowed.tables[0].rows} == {_vm_id("app-typo")}


def test_other_queries_and_workspaces_are_refused(local_azure: LocalAzureHandle) -> None:
    logs = local_azure.logs_client()
    with pytest.raises(HttpResponseError) as exc:
        logs.query_workspace(WORKSPACE, "Perf | take 10", timespan=None)
    assert exc.value.status_code == 400
    with pytest.raises(HttpResponseError) as missing:
        logs.query_workspace("11111111-2222-3333-4444-555555555555", STALE_QUERY.format(n=5), timespan=None)
    assert missing.value.status_code == 404


def test_heartbeat_stops_when_a_vm_freezes_and_resumes_when_it_boots() -> None:
    with running(small_scenario(), time_scale=0.001) as az:  # 1 minute is 60 ms here
        c = az.compute_client()
        logs = az.logs_client()
        c.virtual_machines.begin_deallocate(RG, "app-ok").result()
        frozen_disk = c.virtual_machines.get(RG, "app-frozen").storage_profile.os_disk.managed_disk.id
        ok_vm = c.virtual_machines.get(RG, "app-ok")
        # Give app-ok a copy of the broken disk: it now freezes at boot.
        from azure.mgmt.compute import models as cm

        broken = c.disks.begin_create_or_update(RG, "broken-copy", cm.Disk(
            location="eastus", zones=["1"],
            creation_data=cm.CreationData(create_option="Copy", source_resource_id=frozen_disk))).result()
        good_disk = ok_vm.storage_profile.os_disk.managed_disk.id
        ok_vm.storage_profile.os_disk.managed_disk.id = broken.id
        c.virtual_machines.begin_create_or_update(RG, "app-ok", ok_vm).result()
        c.virtual_machines.begin_start(RG, "app-ok").result()
        assert c.virtual_machines.instance_view(RG, "app-ok").vm_agent.statuses[0].display_status == "Not Ready"
        az.wait_until(lambda s: _vm_id("app-ok") in {rid.lower() for rid, _ in s.stale_heartbeats(5 * 60)}, 5)
        rows = logs.query_workspace(WORKSPACE, STALE_QUERY.format(n=5), timespan=None).tables[0].rows
        assert _vm_id("app-ok") in {r[0] for r in rows}
        # Swap the good disk back and boot: the heartbeat resumes.
        c.virtual_machines.begin_deallocate(RG, "app-ok").result()
        ok_vm = c.virtual_machines.get(RG, "app-ok")
        ok_vm.storage_profile.os_disk.managed_disk.id = good_disk
        c.virtual_machines.begin_create_or_update(RG, "app-ok", ok_vm).result()
        c.virtual_machines.begin_start(RG, "app-ok").result()
        rows = logs.query_workspace(WORKSPACE, STALE_QUERY.format(n=5), timespan=None).tables[0].rows
        assert _vm_id("app-ok") not in {r[0] for r in rows}
        log = az.blob_client(_serial_url(az, "app-ok")).download_blob().readall().decode()
        assert log.index("Freezing execution.") < log.rindex("app-ok login:")
