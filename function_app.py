"""Azure Functions bindings. Each body turns binding data into one call into `remediation`.

Nothing heavy happens at import (the host imports this module on every cold start): no settings are
read, no client is built and no Azure management SDK is imported until a function runs.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from remediation import steps

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("alert_webhook")
@app.route(route="alerts", methods=["POST", "OPTIONS"])
@app.durable_client_input(client_name="client")
async def alert_webhook(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Azure Monitor alerts and Event Grid deliveries: confirm each VM's failure, open incidents, start repairs."""
    from remediation import entrypoints

    return await entrypoints.alert_webhook(req, client)


@app.function_name("sweep")
@app.timer_trigger(schedule="%REMEDIATION_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False)
@app.durable_client_input(client_name="client")
async def sweep(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """The scheduled sweep over the subscriptions in scope."""
    from remediation import entrypoints

    await entrypoints.sweep(client, past_due=timer.past_due)


@app.function_name("incidents_api")
@app.route(route="incidents/{incident_id?}", methods=["GET"])
def incidents_api(req: func.HttpRequest) -> func.HttpResponse:
    """Read incidents and their timelines: what the product saw and what it did."""
    from remediation import entrypoints

    return entrypoints.incidents_api(req)


@app.function_name("approve_repair")
@app.route(route="incidents/{incident_id}/approval", methods=["POST"])
@app.durable_client_input(client_name="client")
async def approve_repair(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """An operator approves or denies a repair waiting in approval mode."""
    from remediation import entrypoints

    return await entrypoints.approve_repair(req, client)


@app.function_name(steps.ORCHESTRATOR)
@app.orchestration_trigger(context_name="context")
def repair_vm_orchestrator(context: df.DurableOrchestrationContext) -> Any:
    """The rescue-VM repair (remediation.orchestration)."""
    from remediation import orchestration

    return (yield from orchestration.repair(context))


def _register_activity(name: str) -> None:
    """One activity function per repair step, each a thin call into remediation.activities."""

    def activity(payload: dict[str, Any]) -> dict[str, Any]:
        from remediation import entrypoints

        return entrypoints.run_activity(name, payload)

    activity.__name__ = name
    activity.__qualname__ = name
    app.function_name(name)(app.activity_trigger(input_name="payload")(activity))


for _name in steps.ALL_ACTIVITIES:
    _register_activity(_name)


@app.function_name(steps.START_QUEUED)
@app.activity_trigger(input_name="payload")
@app.durable_client_input(client_name="client")
async def start_queued_repairs(payload: dict[str, Any], client: df.DurableOrchestrationClient) -> dict[str, Any]:
    """Called as a repair ends: starts the repairs the concurrency cap held back."""
    from remediation import entrypoints

    return await entrypoints.start_queued_repairs(payload, client)
