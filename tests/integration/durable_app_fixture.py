"""A small Durable Functions app (test-only) exercising every durable API the product relies on.

Activities record each run as a line in the file named by DURABLE_FIXTURE_LOG, so tests can count side
effects across host processes. DURABLE_FIXTURE_BLOCK names a flag file: the `block_until_flag` activity
waits until it exists (used to kill a host in the middle of an activity).
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _record(name: str, payload: Any) -> None:
    path = os.environ.get("DURABLE_FIXTURE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"activity": name, "payload": payload}) + "\n")


@app.activity_trigger(input_name="payload")
def echo(payload: Any) -> Any:
    _record("echo", payload)
    return {"echo": payload}


@app.activity_trigger(input_name="payload")
def square(payload: int) -> int:
    _record("square", payload)
    return payload * payload


@app.activity_trigger(input_name="payload")
def explode(payload: str) -> None:
    _record("explode", payload)
    raise ValueError(f"explode was asked to fail: {payload}")


@app.activity_trigger(input_name="payload")
def flaky(payload: dict[str, Any]) -> str:
    """Fails until it has been called `failures` times for this key, then succeeds."""
    _record("flaky", payload)
    time.sleep(payload.get("delay_s", 0))
    counter = Path(payload["counter_file"])
    count = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(count + 1))
    if count < payload["failures"]:
        raise RuntimeError(f"flaky attempt {count + 1} failed")
    return f"succeeded on attempt {count + 1}"


@app.activity_trigger(input_name="payload")
def huge(payload: int) -> str:
    return "x" * payload


@app.orchestration_trigger(context_name="context")
def oversized(context: df.DurableOrchestrationContext) -> Any:
    data = yield context.call_activity("huge", context.get_input())
    return len(data)


@app.activity_trigger(input_name="payload")
async def async_echo(payload: Any) -> Any:
    _record("async_echo", payload)
    return payload


@app.activity_trigger(input_name="payload")
def block_until_flag(payload: str) -> str:
    _record("block_until_flag", payload)
    flag = Path(os.environ["DURABLE_FIXTURE_BLOCK"])
    deadline = time.monotonic() + 60
    while not flag.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("flag never appeared")
        time.sleep(0.05)
    return f"unblocked {payload}"


@app.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext) -> Any:
    """Sequential activities, a fan-out with task_all, a custom status and an async activity."""
    data = context.get_input() or {}
    context.set_custom_status({"step": "echo"})
    first = yield context.call_activity("echo", data.get("value"))
    context.set_custom_status({"step": "fan-out"})
    squares = yield context.task_all([context.call_activity("square", n) for n in data.get("numbers", [])])
    last = yield context.call_activity("async_echo", "done")
    context.set_custom_status({"step": "finished"})
    return {"first": first, "squares": squares, "last": last}


@app.orchestration_trigger(context_name="context")
def failing(context: df.DurableOrchestrationContext) -> Any:
    yield context.call_activity("echo", "before")
    yield context.call_activity("explode", "boom")
    return "not reached"


@app.orchestration_trigger(context_name="context")
def catching(context: df.DurableOrchestrationContext) -> Any:
    try:
        yield context.call_activity("explode", "caught")
    except Exception as exc:  # noqa: BLE001 - the SDK raises a plain Exception for a failed task
        return {"caught": str(exc)}
    return "no exception"


@app.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext) -> Any:
    data = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=data["interval_ms"],
                              max_number_of_attempts=data["attempts"])
    try:
        result = yield context.call_activity_with_retry("flaky", options, data)
    except Exception as exc:  # noqa: BLE001 - the SDK raises a plain Exception for a failed task
        return {"gave_up": str(exc)}
    after = yield context.call_activity("echo", "after-retry")
    return {"result": result, "after": after}


@app.orchestration_trigger(context_name="context")
def retry_fan_out(context: df.DurableOrchestrationContext) -> Any:
    """Retried and plain activities in one task_all: retry steps interleave with other results."""
    data = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=4)
    retried = [context.call_activity_with_retry("flaky", options, {"failures": i % 3,
                                                                  "counter_file": f"{data['dir']}/c{i}"})
               for i in range(data["n"])]
    plain = [context.call_activity("square", i) for i in range(data["n"])]
    results = yield context.task_all(retried + plain)
    last = yield context.call_activity("echo", "end")
    return {"results": results, "last": last}


@app.orchestration_trigger(context_name="context")
def race_retry(context: df.DurableOrchestrationContext) -> Any:
    """A retried task still in flight while the orchestrator moves on and schedules more work."""
    data = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=3)
    retried = context.call_activity_with_retry("flaky", options, data)
    quick = context.call_activity("async_echo", "quick")
    first = yield context.task_any([retried, quick])
    after = yield context.call_activity("square", 7)
    retried_result = yield retried
    return {"first": first.result, "after": after, "retried": retried_result}


@app.orchestration_trigger(context_name="context")
def monitor(context: df.DurableOrchestrationContext) -> Any:
    """The monitor pattern: poll on a durable timer until a deadline, counting polls."""
    data = context.get_input()
    start = context.current_utc_datetime
    deadline = start + timedelta(seconds=data["duration_s"])
    polls = 0
    while context.current_utc_datetime < deadline:
        yield context.call_activity("echo", polls)
        polls += 1
        context.set_custom_status({"polls": polls})
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=data["interval_s"]))
    elapsed = (context.current_utc_datetime - start).total_seconds()
    return {"polls": polls, "elapsed_s": elapsed}


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext) -> Any:
    """Wait for an "approve" event, with a timeout, as the repair does before swapping disks."""
    data = context.get_input()
    context.set_custom_status("waiting")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=data["timeout_s"]))
    event = context.wait_for_external_event("approve")
    winner = yield context.task_any([event, timeout])
    if winner == event:
        timeout.cancel()
        decision = event.result
        done = yield context.call_activity("echo", {"approved": decision})
        return {"decision": decision, "done": done}
    return {"decision": "timed out"}


@app.orchestration_trigger(context_name="context")
def crashable(context: df.DurableOrchestrationContext) -> Any:
    """Steps with side effects, one blocking on a flag file: for kill-and-resume tests."""
    a = yield context.call_activity("echo", "step-1")
    b = yield context.call_activity("block_until_flag", "step-2")
    c = yield context.task_all([context.call_activity("square", n) for n in (3, 4)])
    d = yield context.call_activity("echo", "step-4")
    return [a, b, c, d]


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext) -> Any:
    """continue_as_new until the count reaches the target."""
    n = context.get_input()
    yield context.call_activity("echo", n)
    if n < 3:
        context.continue_as_new(n + 1)
        return None
    return n


@app.orchestration_trigger(context_name="context")
def flaky_orchestrator(context: df.DurableOrchestrationContext) -> Any:
    """Fails (through the flaky activity, without retries) until flaky's counter allows success."""
    return (yield context.call_activity("flaky", context.get_input()))


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext) -> Any:
    """Sub-orchestrations: one with a generated id, one failing with a chosen id, one retried."""
    data = context.get_input()
    child = yield context.call_sub_orchestrator("chain", {"value": "child", "numbers": [2]})
    try:
        yield context.call_sub_orchestrator("failing", None, f"{context.instance_id}-failing")
        failed = "no failure"
    except Exception as exc:  # noqa: BLE001 - the SDK raises a plain Exception for a failed task
        failed = str(exc)
    options = df.RetryOptions(first_retry_interval_in_milliseconds=5000, max_number_of_attempts=3)
    retried = yield context.call_sub_orchestrator_with_retry("flaky_orchestrator", options, data)
    return {"child": child, "failed": failed, "retried": retried}


@app.route(route="orchestrators/{name}/{instance_id}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start an orchestration with a caller-chosen (deterministic) instance id."""
    name = req.route_params["name"]
    instance_id = req.route_params["instance_id"]
    try:
        body = req.get_json() if req.get_body() else None
    except ValueError:
        return func.HttpResponse("body must be JSON", status_code=400)
    existing = await client.get_status(instance_id)
    if existing and existing.runtime_status not in (
        df.OrchestrationRuntimeStatus.Completed, df.OrchestrationRuntimeStatus.Failed,
        df.OrchestrationRuntimeStatus.Terminated,
    ):
        return func.HttpResponse(f"instance {instance_id} is already {existing.runtime_status.value}",
                                 status_code=409)
    await client.start_new(name, instance_id, body)
    return client.create_check_status_response(req, instance_id)


@app.route(route="status/{instance_id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def http_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["instance_id"])
    if not status:
        return func.HttpResponse("unknown instance", status_code=404)
    return func.HttpResponse(json.dumps({
        "runtimeStatus": status.runtime_status.value if status.runtime_status else None,
        "output": status.output,
        "customStatus": status.custom_status,
    }), mimetype="application/json")


@app.route(route="hello/{name?}", methods=["GET"])
def hello(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """A sync trigger with an optional route parameter and the invocation context."""
    who = req.route_params.get("name") or req.params.get("name") or "world"
    return func.HttpResponse(json.dumps({"hello": who, "function": context.function_name,
                                         "setting": os.environ.get("DURABLE_FIXTURE_GREETING")}),
                             mimetype="application/json")


@app.timer_trigger(schedule="%DURABLE_FIXTURE_SCHEDULE%", arg_name="timer", run_on_startup=False)
def scheduled(timer: func.TimerRequest) -> None:
    _record("scheduled", {"past_due": timer.past_due})


@app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer", run_on_startup=False)
@app.durable_client_input(client_name="client")
async def sweep(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """A timer that starts one orchestration per run (id derived from the past_due flag)."""
    await client.start_new("chain", f"sweep-{'late' if timer.past_due else 'ontime'}", {"value": "swept"})


def _run_host(argv: list[str]) -> int:
    """Run a DurableHost on the given storage until an instance finishes; optionally SIGKILL itself.

    --kill-at POINT:NAME kills the process when the host reaches POINT for NAME: `scheduled:<activity>`
    (the episode that schedules it has committed, before the activity is dispatched), `appended:<activity>`
    (its TaskScheduled rows are written but not yet committed), `completed:<activity>` (its result is in
    the inbox, not yet replayed).
    """
    import argparse
    import signal
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from localazure.durable import DurableHost, RealClock
    from localazure.funchost import FunctionHost

    parser = argparse.ArgumentParser()
    parser.add_argument("--conn", required=True)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--start", help="orchestrator to start as --instance")
    parser.add_argument("--kill-at", default="")
    args = parser.parse_args(argv)
    point, _, target = args.kill_at.partition(":")

    def observer(where: str, instance_id: str, details: dict[str, Any]) -> None:
        if not point:
            return
        if where == "activity_completed" and point == "completed" and details["name"] == target:
            os.kill(os.getpid(), signal.SIGKILL)
        if (where, point) in (("committed", "scheduled"), ("appended", "appended")):
            names = [e.get("Name") for e in details["events"] if e["EventType"] == 4]
            if target in names:
                os.kill(os.getpid(), signal.SIGKILL)

    funchost = FunctionHost(str(Path(__file__).resolve()))
    host = DurableHost(funchost, args.conn, hub=args.hub, clock=RealClock(), observer=observer)
    host.start()
    if args.start:
        host.start_new(args.start, args.instance)
    status = host.wait_for(args.instance, timeout=120)
    host.stop()
    print(json.dumps(status))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_run_host(sys.argv[1:]))
