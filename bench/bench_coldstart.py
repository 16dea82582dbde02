"""Cold start: importing function_app next to the framework's floor and to a naive eager app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import median_of, python_seconds, row

ROOT = str(Path(__file__).resolve().parents[1])
RUNS = 15

FLOOR = "import azure.functions, azure.durable_functions"
APP = "import function_app"
NAIVE = (
    "import function_app, azure.identity, azure.mgmt.compute, azure.mgmt.network, azure.monitor.query, "
    "azure.data.tables, azure.storage.blob"
)
# The first request on a cold process: import, index the functions, read the settings and answer one
# webhook call with a payload that names no VM (so no Azure is needed): the path every alert takes before
# its first Azure call.
FIRST_REQUEST = """
import os
os.environ["REMEDIATION_SUBSCRIPTIONS"] = "00000000-0000-0000-0000-000000000001"
os.environ["AzureWebJobsStorage"] = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=YQ==;TableEndpoint=http://127.0.0.1:1/a;"
import function_app, azure.functions as func
fns = {f.get_function_name(): f for f in function_app.app.get_functions()}
fn = fns["alert_webhook"].get_user_function()
import asyncio
import json
essentials = {"alertTargetIDs": [], "monitorCondition": "Fired", "monitoringService": "Platform"}
body = json.dumps({"schemaId": "azureMonitorCommonAlertSchema",
                   "data": {"essentials": essentials, "alertContext": {}}}).encode()
req = func.HttpRequest("POST", "http://localhost/api/alerts", body=body, headers={})
resp = asyncio.run(fn(req=req, client='{"taskHubName":"h","creationUrls":{},"managementUrls":{},"rpcBaseUrl":"http://127.0.0.1:1/"}'))
assert resp.status_code == 202, (resp.status_code, resp.get_body())
"""


def _interleaved() -> dict[str, float]:
    """Medians, with the variants interleaved so that machine noise hits them alike."""
    samples: dict[str, list[float]] = {"floor": [], "app": [], "naive": [], "first": []}
    python_seconds("pass")  # warm the page cache
    for _ in range(RUNS):
        samples["floor"].append(python_seconds(FLOOR, cwd=ROOT))
        samples["app"].append(python_seconds(APP, cwd=ROOT))
        samples["naive"].append(python_seconds(NAIVE, cwd=ROOT))
        samples["first"].append(python_seconds(FIRST_REQUEST, cwd=ROOT))
    return {k: median_of(iter(v).__next__, len(v)) for k, v in samples.items()}


def run() -> list[dict[str, Any]]:
    m = _interleaved()
    note = f"median of {RUNS} fresh interpreters, wall time incl. interpreter start"
    return [
        row("cold start: import function_app", round(m["app"] * 1000, 1), "ms",
            baseline_name="import azure.functions + azure.durable_functions (floor)",
            baseline_value=round(m["floor"] * 1000, 1), notes=note),
        row("cold start: naive app importing every Azure SDK", round(m["naive"] * 1000, 1), "ms",
            baseline_name="import function_app", baseline_value=round(m["app"] * 1000, 1), notes=note),
        row("cold start: first webhook request (import + index + answer)", round(m["first"] * 1000, 1), "ms",
            baseline_name="import function_app", baseline_value=round(m["app"] * 1000, 1),
            notes=note + "; a valid alert naming no VM, answered 202 without any Azure call"),
    ]


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
