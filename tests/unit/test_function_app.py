"""The Functions entry module: cheap to import, and every binding the host needs is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from remediation import steps

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("azure.mgmt", "azure.monitor", "azure.storage", "azure.data", "azure.identity", "cryptography")


def _fresh(code: str) -> str:
    # An empty environment proves that importing reads no setting.
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_import_loads_no_azure_management_monitor_or_storage_sdk() -> None:
    out = _fresh(
        "import sys, json, function_app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    assert json.loads(out) == []


def test_every_trigger_and_activity_is_registered() -> None:
    out = _fresh(
        "import json, function_app\n"
        "fns = function_app.app.get_functions()\n"
        "print(json.dumps({f.get_function_name(): [b.type for b in f.get_bindings()] for f in fns}))"
    )
    functions = json.loads(out)
    assert "httpTrigger" in functions["alert_webhook"]
    assert "durableClient" in functions["alert_webhook"]
    assert "timerTrigger" in functions["sweep"]
    assert functions[steps.ORCHESTRATOR] == ["orchestrationTrigger"]
    for name in steps.ALL_ACTIVITIES:
        assert functions[name] == ["activityTrigger"], name
    assert "incidents_api" in functions and "approve_repair" in functions
    assert sorted(functions[steps.START_QUEUED]) == ["activityTrigger", "durableClient"]
