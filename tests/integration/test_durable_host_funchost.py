"""The local Functions host binds triggers the way the real host does (routes, settings, context)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from localazure.durable import DurableHost, VirtualClock
from localazure.funchost import FunctionHost, environment

APP = str(Path(__file__).with_name("durable_app_fixture.py"))


def test_settings_become_environment_and_resolve_binding_expressions(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_FIXTURE_LOG", str(tmp_path / "log.jsonl"))
    monkeypatch.delenv("DURABLE_FIXTURE_GREETING", raising=False)
    settings = {"DURABLE_FIXTURE_SCHEDULE": "0 0 * * * *", "DURABLE_FIXTURE_GREETING": "hi"}
    with environment(settings):
        host = FunctionHost(APP, settings=settings)
        assert host.functions()["scheduled"].schedule == "0 0 * * * *"
        resp = host.call_http("hello", "GET", "http://localhost/api/hello?name=query")
        assert json.loads(resp.get_body()) == {"hello": "query", "function": "hello", "setting": "hi"}
        info, params = host.match_route("GET", "/api/hello/route") or (None, {})
        assert info is not None and info.name == "hello" and params == {"name": "route"}
        assert host.match_route("GET", "/api/hello") is not None
        assert host.match_route("GET", "/elsewhere/hello") is None
        host.call_timer("scheduled", past_due=True)
        assert json.loads((tmp_path / "log.jsonl").read_text()) == {"activity": "scheduled",
                                                                   "payload": {"past_due": True}}
        # A method the route does not accept is refused, not dispatched.
        assert host.call_http("hello", "POST", "http://localhost/api/hello").status_code == 405
    assert "DURABLE_FIXTURE_GREETING" not in os.environ


@pytest.mark.azurite
def test_racing_starts_of_one_instance_id_start_it_once(storage_connection_string: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicate alert deliveries race to start the same deterministic id: exactly one must win."""
    monkeypatch.setenv("DURABLE_FIXTURE_LOG", str(tmp_path / "log.jsonl"))
    funchost = FunctionHost(APP)
    with DurableHost(funchost, storage_connection_string, hub=f"R{uuid.uuid4().hex[:12]}",
                     clock=VirtualClock()) as host:
        url = host.rpc_base_url + "orchestrators/approval/race-1"
        # What the SDK's start_new sends: the JSON input, itself encoded as a JSON string.
        body = json.dumps(json.dumps({"timeout_s": 60})).encode()
        codes: list[int] = []
        barrier = threading.Barrier(6)

        def start() -> None:
            barrier.wait()
            req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    codes.append(resp.status)
            except urllib.error.HTTPError as err:
                codes.append(err.code)

        threads = [threading.Thread(target=start) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        host.run_until_idle(advance_clock=False)
        assert sorted(codes) == [202] + [409] * 5
        assert host.status("race-1")["runtimeStatus"] == "Running"
        assert [s["instanceId"] for s in host.list_instances()] == ["race-1"]


def test_an_app_already_indexed_elsewhere_still_loads() -> None:
    """DFApp.get_functions() refuses a second call; the host must not depend on being the first caller."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("durable_app_fixture_copy", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["durable_app_fixture_copy"] = module
    try:
        spec.loader.exec_module(module)
        names = {f.get_function_name() for f in module.app.get_functions()}
        with pytest.raises(ValueError, match="unique function name"):
            module.app.get_functions()
        host = FunctionHost("durable_app_fixture_copy")
        assert set(host.functions()) == names
        assert host.call_activity("square", 12) == 144
    finally:
        del sys.modules["durable_app_fixture_copy"]


KEYED_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="ping", methods=["GET"])
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")


@app.route(route="open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("open")
"""


def test_served_functions_demand_a_key_when_keys_are_configured(tmp_path: Path) -> None:
    app_file = tmp_path / f"keyed_app_{uuid.uuid4().hex[:8]}.py"
    app_file.write_text(KEYED_APP)
    host = FunctionHost(str(app_file))
    assert host.functions()["ping"].auth_level == "function"
    base = host.serve_http(function_keys={"s3cret"})

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}),
                                        timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    try:
        assert get("/api/ping") == (401, b"")
        assert get("/api/ping?code=wrong") == (401, b"")
        assert get("/api/ping?code=s3cret") == (200, b"pong")
        assert get("/api/ping", {"x-functions-key": "s3cret"}) == (200, b"pong")
        assert get("/api/open") == (200, b"open")
    finally:
        host.stop_http()
