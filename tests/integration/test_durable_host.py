"""The local Functions and Durable hosts drive the real SDKs: orchestrations run as Durable runs them."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import pytest

from localazure.durable import (
    DurableHost,
    DurableHostError,
    InstanceExistsError,
    InstanceGoneError,
    InstanceNotFoundError,
    RealClock,
    VirtualClock,
    parse_ts,
)
from localazure.funchost import FunctionHost, FunctionHostError, read_local_settings

pytestmark = pytest.mark.azurite

APP = str(Path(__file__).with_name("durable_app_fixture.py"))


@pytest.fixture
def activity_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "activities.jsonl"
    monkeypatch.setenv("DURABLE_FIXTURE_LOG", str(log))
    return log


def runs(log: Path, activity: str | None = None) -> list[Any]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [r["payload"] for r in rows if activity is None or r["activity"] == activity]


@pytest.fixture
def funchost() -> FunctionHost:
    return FunctionHost(APP)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def host(funchost: FunctionHost, storage_connection_string: str, clock: VirtualClock,
         activity_log: Path) -> Iterator[DurableHost]:
    hub = f"T{uuid.uuid4().hex[:12]}"
    with DurableHost(funchost, storage_connection_string, hub=hub, clock=clock) as h:
        yield h


def client(host: DurableHost) -> df.DurableOrchestrationClient:
    return df.DurableOrchestrationClient(host.client_binding())


def run(coro: Any) -> Any:
    from localazure.funchost import _reset_durable_session, _run_and_close

    _reset_durable_session()
    return asyncio.run(_run_and_close(coro))


def start_via_http(funchost: FunctionHost, name: str, instance_id: str, body: Any) -> Any:
    return funchost.call_http(
        "http_start", "POST", f"http://127.0.0.1:7071/api/orchestrators/{name}/{instance_id}",
        body=json.dumps(body).encode(), route_params={"name": name, "instance_id": instance_id},
    )


def test_http_starter_runs_the_orchestration_to_completion(funchost: FunctionHost, host: DurableHost,
                                                           activity_log: Path) -> None:
    resp = start_via_http(funchost, "chain", "chain-1", {"value": 7, "numbers": [1, 2, 3, 4]})
    assert resp.status_code == 202
    links = json.loads(resp.get_body())
    assert links["id"] == "chain-1"
    assert resp.headers["Location"] == links["statusQueryGetUri"]
    # create_check_status_response points the links at the caller's origin, as the real host does.
    assert links["statusQueryGetUri"].startswith("http://127.0.0.1:7071/runtime/webhooks/durabletask/instances/chain-1")

    host.run_until_idle()

    status = json.loads(funchost.call_http("http_status", "GET", "http://127.0.0.1:7071/api/status/chain-1",
                                           route_params={"instance_id": "chain-1"}).get_body())
    assert status == {
        "runtimeStatus": "Completed",
        "output": {"first": {"echo": 7}, "squares": [1, 4, 9, 16], "last": "done"},
        "customStatus": {"step": "finished"},
    }
    assert sorted(runs(activity_log, "square")) == [1, 2, 3, 4]
    assert runs(activity_log, "echo") == [7]


def test_client_status_reports_input_custom_status_and_times(host: DurableHost, clock: VirtualClock) -> None:
    host.start_new("approval", "ap-status", {"timeout_s": 600})
    host.run_until_idle(advance_clock=False)
    status = run(client(host).get_status("ap-status"))
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Running
    assert status.name == "approval"
    assert status.custom_status == "waiting"
    assert status.input_ == {"timeout_s": 600}
    assert status.created_time is not None and status.last_updated_time is not None

    missing = run(client(host).get_status("no-such-instance"))
    assert not missing


def test_raise_event_completes_a_waiting_orchestration(host: DurableHost, activity_log: Path) -> None:
    host.start_new("approval", "ap-1", {"timeout_s": 3600})
    host.run_until_idle(advance_clock=False)
    assert host.status("ap-1")["runtimeStatus"] == "Running"

    run(client(host).raise_event("ap-1", "approve", {"by": "operator"}))
    host.run_until_idle()

    st = host.status("ap-1")
    assert st["runtimeStatus"] == "Completed"
    assert st["output"] == {"decision": {"by": "operator"}, "done": {"echo": {"approved": {"by": "operator"}}}}
    # The cancelled timeout timer does not hold the instance: the clock did not jump an hour ahead.
    assert parse_ts(st["lastUpdatedTime"]) - parse_ts(st["createdTime"]) < timedelta(minutes=1)

    with pytest.raises(Exception, match="is gone"):
        run(client(host).raise_event("ap-1", "approve", True))
    with pytest.raises(Exception, match="No instance with ID nobody found"):
        run(client(host).raise_event("nobody", "approve", True))
    with pytest.raises(InstanceGoneError):
        host.raise_event("ap-1", "approve", True)


def test_event_raised_before_the_orchestrator_waits_is_kept(host: DurableHost) -> None:
    host.start_new("approval", "ap-early", {"timeout_s": 3600})
    host.raise_event("ap-early", "approve", "early")
    host.run_until_idle()
    assert host.status("ap-early")["output"]["decision"] == "early"


def test_wait_for_event_times_out_on_the_durable_timer(host: DurableHost) -> None:
    host.start_new("approval", "ap-timeout", {"timeout_s": 900})
    host.run_until_idle()
    st = host.status("ap-timeout")
    assert st["runtimeStatus"] == "Completed"
    assert st["output"] == {"decision": "timed out"}
    assert parse_ts(st["lastUpdatedTime"]) - parse_ts(st["createdTime"]) == timedelta(seconds=900)


def test_a_new_host_on_the_same_storage_rearms_timers_and_takes_events(
        funchost: FunctionHost, storage_connection_string: str, activity_log: Path) -> None:
    hub = f"T{uuid.uuid4().hex[:12]}"
    clock = VirtualClock()
    first = DurableHost(funchost, storage_connection_string, hub=hub, clock=clock)
    first.start()
    first.start_new("approval", "resume-timer", {"timeout_s": 600})
    first.start_new("approval", "resume-event", {"timeout_s": 600})
    first.run_until_idle(advance_clock=False)
    first.stop()

    second = DurableHost(funchost, storage_connection_string, hub=hub, clock=clock)
    second.start()
    try:
        second.raise_event("resume-event", "approve", "yes")
        second.run_until_idle()
        assert second.status("resume-event")["output"]["decision"] == "yes"
        assert second.status("resume-timer")["output"] == {"decision": "timed out"}
        # The same object can be started again after a stop.
        second.stop()
        second.start()
        second.start_new("chain", "after-restart", {"value": 2})
        second.run_until_idle()
        assert second.status("after-restart")["runtimeStatus"] == "Completed"
    finally:
        second.stop()


def test_terminate_stops_a_running_instance(host: DurableHost) -> None:
    host.start_new("approval", "ap-term", {"timeout_s": 3600})
    host.run_until_idle(advance_clock=False)
    run(client(host).terminate("ap-term", "operator said no"))
    host.run_until_idle()
    st = host.status("ap-term")
    assert st["runtimeStatus"] == "Terminated"
    assert st["output"] == "operator said no"
    with pytest.raises(InstanceGoneError):
        host.terminate("ap-term", "again")
    with pytest.raises(Exception, match="No instance with ID 'ghost' found"):
        run(client(host).terminate("ghost", "x"))
    with pytest.raises(InstanceNotFoundError):
        host.terminate("ghost", "x")


def test_second_start_of_a_running_instance_id_is_refused(funchost: FunctionHost, host: DurableHost) -> None:
    host.start_new("approval", "dup-1", {"timeout_s": 3600})
    with pytest.raises(InstanceExistsError, match="already exists"):
        host.start_new("approval", "dup-1", {"timeout_s": 1})
    # The SDK's start_new surfaces Durable's 409 as an exception carrying the message.
    with pytest.raises(Exception, match="already exists"):
        run(client(host).start_new("approval", "dup-1", {"timeout_s": 1}))
    resp = start_via_http(funchost, "approval", "dup-1", {"timeout_s": 1})
    assert resp.status_code == 409
    host.run_until_idle()
    assert host.status("dup-1")["input"] == {"timeout_s": 3600}
    # Once finished, the same id may be started again (Durable replaces a completed instance).
    host.start_new("chain", "dup-1", {"value": 1})
    host.run_until_idle()
    st = host.status("dup-1")
    assert (st["name"], st["runtimeStatus"], st["output"]["first"]) == ("chain", "Completed", {"echo": 1})


def test_unknown_orchestrator_is_a_clear_error(host: DurableHost) -> None:
    with pytest.raises(Exception, match="doesn't exist, is disabled, or is not an orchestrator"):
        run(client(host).start_new("no_such_orchestrator", "x-1"))
    with pytest.raises(ValueError, match="instance id"):
        host.start_new("chain", "bad/id")


def test_activity_exception_fails_the_orchestration_with_its_message(host: DurableHost, activity_log: Path) -> None:
    host.start_new("failing", "fail-1")
    host.run_until_idle()
    st = host.status("fail-1")
    assert st["runtimeStatus"] == "Failed"
    assert "explode was asked to fail: boom" in st["output"]
    assert "Activity function 'explode' failed" in st["output"]
    assert runs(activity_log, "echo") == ["before"]

    host.start_new("catching", "catch-1")
    host.run_until_idle()
    caught = host.status("catch-1")
    assert caught["runtimeStatus"] == "Completed"
    assert "explode was asked to fail: caught" in caught["output"]["caught"]
    assert "ValueError" in caught["output"]["caught"]


def test_oversized_activity_result_fails_the_orchestration_clearly(host: DurableHost) -> None:
    host.start_new("oversized", "big-ok", 100_000)
    host.start_new("oversized", "big-1", 2_000_000)
    host.run_until_idle()
    assert host.status("big-ok")["output"] == 100_000
    st = host.status("big-1")
    assert st["runtimeStatus"] == "Failed"
    assert "too large" in st["output"]


def test_retry_succeeds_after_failures_and_waits_between_attempts(host: DurableHost, activity_log: Path,
                                                                tmp_path: Path) -> None:
    payload = {"interval_ms": 30_000, "attempts": 4, "failures": 2, "counter_file": str(tmp_path / "n")}
    host.start_new("retrying", "retry-ok", payload)
    host.run_until_idle()
    st = host.status("retry-ok")
    assert st["runtimeStatus"] == "Completed"
    assert st["output"] == {"result": "succeeded on attempt 3", "after": {"echo": "after-retry"}}
    assert len(runs(activity_log, "flaky")) == 3
    # Two failures, two retry timers of 30 s each, on the virtual clock.
    assert parse_ts(st["lastUpdatedTime"]) - parse_ts(st["createdTime"]) == timedelta(seconds=60)


def test_retries_interleaved_with_parallel_results_keep_task_ids_in_step(host: DurableHost, tmp_path: Path,
                                                                         activity_log: Path) -> None:
    n = 6
    host.start_new("retry_fan_out", "rfo-1", {"n": n, "dir": str(tmp_path)})
    host.run_until_idle()
    st = host.status("rfo-1", show_history=True)
    assert st["runtimeStatus"] == "Completed", st["output"]
    expected = [f"succeeded on attempt {i % 3 + 1}" for i in range(n)] + [i * i for i in range(n)]
    assert st["output"] == {"results": expected, "last": {"echo": "end"}}
    assert len(runs(activity_log, "flaky")) == sum(i % 3 + 1 for i in range(n))
    history = st["history"]
    scheduled = [e["EventId"] for e in history if e["EventType"] in ("TaskScheduled", "TimerCreated")]
    assert scheduled == list(range(len(scheduled)))  # ids dense and in order, none reused


def test_retry_failure_arriving_with_another_result_is_replayed_in_order(
        funchost: FunctionHost, storage_connection_string: str, tmp_path: Path, activity_log: Path) -> None:
    """A retried task's failure that arrives together with a result which lets the orchestrator schedule
    new work: the new work must take the next task id before the retry timer does, as in the SDK."""
    import time as _time

    def hold_quick_result(point: str, instance_id: str, details: dict[str, Any]) -> None:
        if point == "activity_completed" and details["name"] == "async_echo":
            _time.sleep(0.6)  # the failure of flaky lands in the inbox before the host sees this result

    hub = f"T{uuid.uuid4().hex[:12]}"
    with DurableHost(funchost, storage_connection_string, hub=hub, clock=VirtualClock(),
                     observer=hold_quick_result) as h:
        h.start_new("race_retry", "race-1", {"failures": 1, "delay_s": 0.2, "counter_file": str(tmp_path / "n")})
        h.run_until_idle()
        st = h.status("race-1")
    assert st["runtimeStatus"] == "Completed", st["output"]
    assert st["output"] == {"first": "quick", "after": 49, "retried": "succeeded on attempt 2"}


def test_retry_gives_up_after_the_last_attempt(host: DurableHost, activity_log: Path, tmp_path: Path) -> None:
    payload = {"interval_ms": 1000, "attempts": 2, "failures": 5, "counter_file": str(tmp_path / "n")}
    host.start_new("retrying", "retry-fail", payload)
    host.run_until_idle()
    st = host.status("retry-fail")
    assert st["runtimeStatus"] == "Completed"
    assert "flaky attempt 2 failed" in st["output"]["gave_up"]
    assert len(runs(activity_log, "flaky")) == 2
    assert runs(activity_log, "echo") == []


def test_monitor_loop_uses_durable_timers_and_current_utc_datetime(host: DurableHost, activity_log: Path) -> None:
    host.start_new("monitor", "mon-1", {"duration_s": 120, "interval_s": 30})
    host.run_until_idle()
    st = host.status("mon-1")
    assert st["output"] == {"polls": 4, "elapsed_s": 120.0}
    assert st["customStatus"] == {"polls": 4}
    assert runs(activity_log, "echo") == [0, 1, 2, 3]


def test_continue_as_new_restarts_with_the_new_input(host: DurableHost, activity_log: Path) -> None:
    host.start_new("counter", "count-1", 0)
    host.run_until_idle()
    st = host.status("count-1")
    assert (st["runtimeStatus"], st["output"]) == ("Completed", 3)
    assert runs(activity_log, "echo") == [0, 1, 2, 3]


def test_sub_orchestrations_complete_fail_and_retry(host: DurableHost, activity_log: Path, tmp_path: Path) -> None:
    host.start_new("parent", "parent-1", {"failures": 1, "counter_file": str(tmp_path / "n")})
    host.run_until_idle()
    st = host.status("parent-1")
    assert st["runtimeStatus"] == "Completed", st["output"]
    out = st["output"]
    assert out["child"] == {"first": {"echo": "child"}, "squares": [4], "last": "done"}
    assert "explode was asked to fail: boom" in out["failed"]
    assert out["retried"] == "succeeded on attempt 2"
    assert host.status("parent-1:0000")["runtimeStatus"] == "Completed"
    assert host.status("parent-1-failing")["runtimeStatus"] == "Failed"
    attempts = sorted(s["instanceId"] for s in host.list_instances()
                      if s["name"] == "flaky_orchestrator")
    assert [host.status(i)["runtimeStatus"] for i in attempts] == ["Failed", "Completed"]
    assert len(runs(activity_log, "flaky")) == 2


def test_history_has_each_task_scheduled_and_completed_exactly_once(host: DurableHost) -> None:
    host.start_new("chain", "hist-1", {"value": "x", "numbers": [5, 6, 7]})
    host.run_until_idle()
    history = host.status("hist-1", show_history=True)["history"]
    kinds = [e["EventType"] for e in history]
    assert kinds[:2] == ["OrchestratorStarted", "ExecutionStarted"]
    assert kinds[-1] == "ExecutionCompleted"
    scheduled = [e["EventId"] for e in history if e["EventType"] == "TaskScheduled"]
    completed = [e["TaskScheduledId"] for e in history if e["EventType"] == "TaskCompleted"]
    assert scheduled == list(range(5))
    assert sorted(completed) == scheduled
    assert kinds.count("OrchestratorStarted") == kinds.count("OrchestratorCompleted")


def test_list_and_purge_through_the_client(host: DurableHost) -> None:
    host.start_new("chain", "list-done", {"value": 1})
    host.start_new("approval", "list-waiting", {"timeout_s": 3600})
    host.run_until_idle(advance_clock=False)
    c = client(host)
    running = run(c.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Running]))
    assert [s.instance_id for s in running] == ["list-waiting"]
    everything = run(c.get_status_all())
    assert {s.instance_id for s in everything} == {"list-done", "list-waiting"}

    assert run(c.purge_instance_history("list-done")).instances_deleted == 1
    assert host.status("list-done") is None
    assert run(c.purge_instance_history("list-done")).instances_deleted == 0
    with pytest.raises(Exception, match="status code 400"):
        run(c.purge_instance_history("list-waiting"))
    with pytest.raises(DurableHostError, match="only finished instances"):
        host.purge("list-waiting")
    assert host.status("list-waiting")["runtimeStatus"] == "Running"


def test_real_clock_with_timer_scale_runs_timers_fast(funchost: FunctionHost, storage_connection_string: str,
                                                      activity_log: Path) -> None:
    import time as _time

    hub = f"T{uuid.uuid4().hex[:12]}"
    started = _time.monotonic()
    with DurableHost(funchost, storage_connection_string, hub=hub, clock=RealClock(timer_scale=0.01)) as h:
        h.start_new("monitor", "mon-real", {"duration_s": 300, "interval_s": 100})
        st = h.wait_for("mon-real", timeout=60)
    took = _time.monotonic() - started
    assert st["runtimeStatus"] == "Completed"
    assert st["output"]["elapsed_s"] >= 300
    # Host overhead also runs 100x fast on this clock, so a loaded machine may fit one poll fewer.
    assert st["output"]["polls"] in (2, 3)
    # 300 s of timers took about 3 s of real time: scaled, not skipped.
    assert 2.5 < took < 30


def test_timer_trigger_with_a_durable_client(funchost: FunctionHost, host: DurableHost) -> None:
    funchost.call_timer("sweep", past_due=True)
    host.run_until_idle()
    assert host.status("sweep-late")["output"]["first"] == {"echo": "swept"}


def test_served_http_routes_functions_and_proxies_the_status_webhook(funchost: FunctionHost,
                                                                     host: DurableHost) -> None:
    base = funchost.serve_http()
    try:
        req = urllib.request.Request(f"{base}/api/orchestrators/chain/served-1", method="POST",
                                     data=json.dumps({"value": "web"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            links = json.loads(resp.read())
        host.run_until_idle()
        assert links["statusQueryGetUri"].startswith(base + "/runtime/webhooks/durabletask/")
        with urllib.request.urlopen(links["statusQueryGetUri"], timeout=30) as resp:
            status = json.loads(resp.read())
        assert status["runtimeStatus"] == "Completed"
        assert status["output"]["first"] == {"echo": "web"}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/nothing-here", timeout=30)
        assert err.value.code == 404
    finally:
        funchost.stop_http()


def test_function_metadata_and_bad_calls(funchost: FunctionHost, tmp_path: Path) -> None:
    fns = funchost.functions()
    assert fns["http_start"].kind == "http"
    assert fns["http_start"].route == "orchestrators/{name}/{instance_id}"
    assert fns["http_start"].methods == ("POST",)
    assert fns["http_start"].durable_client_arg == "client"
    assert fns["sweep"].kind == "timer" and fns["sweep"].schedule == "0 */5 * * * *"
    assert fns["chain"].kind == "orchestrator" and fns["echo"].kind == "activity"
    assert funchost.call_activity("square", 9) == 81
    assert funchost.call_activity_json("echo", '{"a": [1, 2]}') == '{"echo": {"a": [1, 2]}}'
    assert funchost.match_route("POST", "/api/orchestrators/chain/i-1") == (
        fns["http_start"], {"name": "chain", "instance_id": "i-1"})
    with pytest.raises(FunctionHostError, match="no function named 'nope'"):
        funchost.call_activity("nope", 1)
    with pytest.raises(FunctionHostError, match="is a activity function, not http"):
        funchost.call_http("echo", "GET", "http://x/api/echo")
    with pytest.raises(FunctionHostError, match="no durable host is attached"):
        funchost.call_timer("sweep")
    with pytest.raises(FunctionHostError, match="cannot import"):
        FunctionHost("no_such_module_here")

    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "1", "B": None}}))
    assert read_local_settings(settings) == {"A": "1", "B": ""}
    settings.write_text("{not json")
    with pytest.raises(FunctionHostError, match="not valid JSON"):
        read_local_settings(settings)
