"""A local stand-in for the Azure Functions host: load a Python v2 app and invoke its functions.

The real host reads the function metadata from the app object, converts trigger payloads into the
binding types (HttpRequest, TimerRequest, activity input, orchestration context) and calls the user
function by parameter name. This module does the same in-process for the function kinds the project
uses, so the real `azure-functions` and `azure-functions-durable` SDK code runs unchanged:
HTTP and timer triggers (with a durable client input), activity triggers and orchestration triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions._durable_functions import df_dumps, df_loads
from azure.functions.timer import TimerRequest

log = logging.getLogger(__name__)

ROUTE_PREFIX = "api"
DURABLE_WEBHOOK_PREFIX = "/runtime/webhooks/durabletask/"


class FunctionHostError(Exception):
    """A function cannot be found or invoked the way it was asked for."""


@dataclass(frozen=True)
class FunctionInfo:
    """What the host knows about one registered function (from its trigger and bindings)."""

    name: str
    kind: str  # http, timer, orchestrator, activity, entity, or the raw trigger type
    trigger_arg: str
    route: str | None = None
    methods: tuple[str, ...] = ()
    auth_level: str | None = None
    schedule: str | None = None
    run_on_startup: bool = False
    durable_client_arg: str | None = None
    bindings: tuple[str, ...] = field(default_factory=tuple)


_KINDS = {
    "httpTrigger": "http",
    "timerTrigger": "timer",
    "orchestrationTrigger": "orchestrator",
    "activityTrigger": "activity",
    "entityTrigger": "entity",
}

# DFApp.get_functions() may be called once per app object: remember its answer per app.
_FUNCTIONS_BY_APP: dict[int, tuple[object, list[Any]]] = {}
_FUNCTIONS_LOCK = threading.Lock()

# The durable SDK keeps one global aiohttp session bound to the loop that created it; calls that use it
# are serialised and the session is closed and dropped at the end of each event loop.
_LOOP_LOCK = threading.Lock()


def _app_functions(app: Any) -> list[Any]:
    with _FUNCTIONS_LOCK:
        cached = _FUNCTIONS_BY_APP.get(id(app))
        if cached is not None and cached[0] is app:
            return cached[1]
        if getattr(app, "functions_bindings", None):
            # Something else indexed this app already (get_functions() refuses a second call):
            # the builders return the same Function objects again.
            functions = [fb.build(app.auth_level) for fb in app._function_builders]
        else:
            functions = list(app.get_functions())
        _FUNCTIONS_BY_APP[id(app)] = (app, functions)
        return functions


def read_local_settings(path: str | Path) -> dict[str, str]:
    """The "Values" of a local.settings.json file (the app settings the host exports as env vars)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FunctionHostError(f"{p}: no such settings file") from None
    except json.JSONDecodeError as exc:
        raise FunctionHostError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    values = doc.get("Values") if isinstance(doc, dict) else None
    if not isinstance(values, dict):
        raise FunctionHostError(f'{p}: expected an object with a "Values" object')
    return {str(k): "" if v is None else str(v) for k, v in values.items()}


class _InvocationContext(func.Context):
    """The `context` argument the worker passes to functions that declare one."""

    def __init__(self, function_name: str, directory: str) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._directory = directory
        self._tls = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def _reset_durable_session() -> None:
    from azure.durable_functions.models.utils import http_utils

    http_utils._client_session = None
    http_utils._session_lock = asyncio.Lock()


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _run_and_close(coro: Any) -> Any:
    from azure.durable_functions.models.utils import http_utils

    try:
        return await coro
    finally:
        session = http_utils._client_session
        if session is not None and not session.closed:
            await session.close()
        http_utils._client_session = None


def _resolve_setting(value: str | None) -> str | None:
    """Binding expressions like "%SCHEDULE%" name an app setting; the host substitutes its value."""
    if value and len(value) > 2 and value.startswith("%") and value.endswith("%"):
        return os.environ.get(value[1:-1], value)
    return value


def _load_module(module: str) -> ModuleType:
    """Import the app by module name, or from a .py file path (registered under its file stem)."""
    if module.endswith(".py"):
        path = Path(module).resolve()
        existing = sys.modules.get(path.stem)
        if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path:
            return existing
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None or not path.exists():
            raise FunctionHostError(f"cannot load the function app file {module!r}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise FunctionHostError(f"cannot import the function app module {module!r}: {exc}") from None


def _route_regex(route: str) -> re.Pattern[str]:
    """Turn a Functions route template ("items/{id}", "{*rest}", "{name:alpha?}") into a regex."""
    parts: list[str] = []
    for segment in route.strip("/").split("/"):
        m = re.fullmatch(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\??)\}", segment)
        if not m:
            parts.append("/" + re.escape(segment))
        elif m.group(1):
            parts.append(rf"(?:/(?P<{m.group(2)}>.*))?")
        elif m.group(3):
            parts.append(rf"(?:/(?P<{m.group(2)}>[^/]+))?")
        else:
            parts.append(rf"/(?P<{m.group(2)}>[^/]+)")
    return re.compile("".join(parts) + "/?")


class FunctionHost:
    """Loads a Functions app (a module with a `FunctionApp`/`DFApp` object) and invokes its functions."""

    def __init__(
        self,
        module: str = "function_app",
        *,
        app_attr: str = "app",
        durable_client_binding: Callable[[], str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        # The host exports app settings as environment variables before it loads the app.
        for key, value in (settings or {}).items():
            os.environ[key] = value
        mod = _load_module(module)
        app = getattr(mod, app_attr, None)
        if app is None or not hasattr(app, "get_functions"):
            raise FunctionHostError(f"module {module!r} has no Functions app object named {app_attr!r}")
        self.app = app
        self.module_name = module
        self.directory = str(Path(getattr(mod, "__file__", ".") or ".").resolve().parent)
        self.durable_client_binding = durable_client_binding
        # The durable host's rpc base URL, for proxying the status/event webhooks in serve_http.
        self.durable_api: Callable[[], str] | None = None
        self._functions: dict[str, Any] = {}
        self._infos: dict[str, FunctionInfo] = {}
        for fn in _app_functions(app):
            name = fn.get_function_name()
            self._functions[name] = fn
            self._infos[name] = self._describe(name, fn)
        self._routes = [
            (_route_regex(info.route or info.name), info)
            for info in self._infos.values()
            if info.kind == "http"
        ]
        self._server: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- metadata
    @staticmethod
    def _describe(name: str, fn: Any) -> FunctionInfo:
        trigger = fn.get_trigger()
        ttype = str(getattr(trigger, "type", ""))
        kind = _KINDS.get(ttype, ttype)
        client_arg = next(
            (b.name for b in fn.get_bindings() if getattr(b, "type", "") == "durableClient"), None
        )
        methods: tuple[str, ...] = ()
        route = auth = schedule = None
        run_on_startup = False
        if kind == "http":
            route = getattr(trigger, "route", None) or name
            raw_methods = getattr(trigger, "methods", None) or []
            methods = tuple(str(getattr(m, "value", m)).upper() for m in raw_methods)
            level = getattr(trigger, "auth_level", None)
            auth = str(getattr(level, "value", level)) if level is not None else None
        elif kind == "timer":
            schedule = _resolve_setting(getattr(trigger, "schedule", None))
            run_on_startup = bool(getattr(trigger, "run_on_startup", False))
        return FunctionInfo(
            name=name,
            kind=kind,
            trigger_arg=str(trigger.name),
            route=route,
            methods=methods,
            auth_level=auth,
            schedule=schedule,
            run_on_startup=run_on_startup,
            durable_client_arg=client_arg,
            bindings=tuple(f"{b.type}:{b.name}" for b in fn.get_bindings()),
        )

    def functions(self) -> dict[str, FunctionInfo]:
        """Every registered function by name."""
        return dict(self._infos)

    def _get(self, name: str, kind: str) -> tuple[Any, FunctionInfo]:
        info = self._infos.get(name)
        if info is None:
            known = ", ".join(sorted(self._infos)) or "none"
            raise FunctionHostError(f"no function named {name!r} (registered: {known})")
        if info.kind != kind:
            raise FunctionHostError(f"function {name!r} is a {info.kind} function, not {kind}")
        return self._functions[name], info

    # ----------------------------------------------------------------- invocation
    def _kwargs(self, fn: Any, info: FunctionInfo, trigger_value: Any) -> dict[str, Any]:
        user = fn.get_user_function()
        kwargs: dict[str, Any] = {info.trigger_arg: trigger_value}
        if info.durable_client_arg:
            if self.durable_client_binding is None:
                raise FunctionHostError(
                    f"function {info.name!r} needs a durable client, but no durable host is attached"
                )
            kwargs[info.durable_client_arg] = self.durable_client_binding()
        params = inspect.signature(getattr(user, "client_function", user)).parameters
        if "context" in params and "context" not in kwargs:
            kwargs["context"] = _InvocationContext(info.name, self.directory)
        return kwargs

    def _invoke(self, fn: Any, info: FunctionInfo, kwargs: dict[str, Any]) -> Any:
        user = fn.get_user_function()
        if inspect.iscoroutinefunction(user):
            return self._run_async(info, lambda: user(**kwargs))
        result = user(**kwargs)
        if inspect.isawaitable(result):
            return self._run_async(info, lambda: result)
        return result

    @staticmethod
    def _run_async(info: FunctionInfo, make: Callable[[], Any]) -> Any:
        if info.durable_client_arg is None:
            return asyncio.run(_await(make()))
        # The durable client's global aiohttp session belongs to one loop: one such call at a time.
        with _LOOP_LOCK:
            _reset_durable_session()
            return asyncio.run(_run_and_close(make()))

    def call_http(
        self,
        name: str,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        route_params: Mapping[str, str] | None = None,
    ) -> func.HttpResponse:
        """Invoke an HTTP-triggered function with a request built from the arguments."""
        fn, info = self._get(name, "http")
        if info.methods and method.upper() not in info.methods:
            return func.HttpResponse(f"method {method} not allowed", status_code=405)
        query = dict(params or {})
        if not query:
            query = dict(parse_qsl(urlsplit(url).query))
        request = func.HttpRequest(
            method=method.upper(),
            url=url,
            headers=dict(headers or {}),
            params=query,
            route_params=dict(route_params or {}),
            body=body,
        )
        result = self._invoke(fn, info, self._kwargs(fn, info, request))
        if isinstance(result, func.HttpResponse):
            return result
        if result is None:
            return func.HttpResponse(status_code=204)
        if isinstance(result, (str, bytes)):
            return func.HttpResponse(result)
        return func.HttpResponse(json.dumps(result), mimetype="application/json")

    def call_timer(self, name: str, *, past_due: bool = False) -> None:
        """Invoke a timer-triggered function once, as the schedule would."""
        fn, info = self._get(name, "timer")
        timer = TimerRequest(past_due=past_due, schedule={"AdjustForDST": True})
        self._invoke(fn, info, self._kwargs(fn, info, timer))

    def call_activity(self, name: str, payload: Any) -> Any:
        """Invoke an activity with its (decoded) input; return its (JSON-serialisable) result."""
        fn, info = self._get(name, "activity")
        return self._invoke(fn, info, self._kwargs(fn, info, payload))

    def call_activity_json(self, name: str, input_json: str | None) -> str:
        """Invoke an activity the way the durable host does: JSON text in, JSON text out."""
        if input_json is None:
            payload: Any = None
        else:
            try:
                payload = df_loads(input_json)
            except json.JSONDecodeError:
                payload = input_json
        result = self.call_activity(name, payload)
        try:
            return str(df_dumps(result))
        except TypeError as exc:
            raise FunctionHostError(f"activity {name!r} returned a value that is not JSON: {exc}") from None

    def orchestrator_handle(self, name: str) -> Callable[[str], str]:
        """The orchestrator's entry point: JSON orchestration context in, JSON orchestrator state out."""
        fn, _info = self._get(name, "orchestrator")
        handle: Callable[[str], str] = fn.get_user_function()
        return handle

    def has_function(self, name: str, kind: str) -> bool:
        info = self._infos.get(name)
        return info is not None and info.kind == kind

    # ----------------------------------------------------------------- routing
    def match_route(self, method: str, path: str) -> tuple[FunctionInfo, dict[str, str]] | None:
        """The HTTP function that serves `path` (below /api) and its route parameters."""
        prefix = f"/{ROUTE_PREFIX}"
        if not (path == prefix or path.startswith(prefix + "/")):
            return None
        rest = path[len(prefix):] or "/"
        allowed = False
        for regex, info in self._routes:
            m = regex.fullmatch(rest)
            if not m:
                continue
            allowed = True
            if info.methods and method.upper() not in info.methods:
                continue
            return info, {k: v for k, v in m.groupdict().items() if v is not None}
        if allowed:
            raise FunctionHostError(f"method {method} is not allowed on {path}")
        return None

    def serve_http(self, port: int = 0, *, function_keys: Collection[str] | None = None) -> str:
        """Serve /api/<route> on 127.0.0.1 (and the durable webhooks, when a durable host is attached).

        With function_keys, functions whose auth level is "function" or "admin" demand one of them in the
        `code` query parameter or the x-functions-key header, as in Azure; without, none is checked
        (as the local Functions host does).
        """
        host = self
        keys = frozenset(function_keys or ())

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("funchost http: " + format, *args)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                if host.durable_api is not None and parts.path.startswith(DURABLE_WEBHOOK_PREFIX):
                    self._proxy(host.durable_api(), parts, body)
                    return
                try:
                    matched = host.match_route(self.command, parts.path)
                except FunctionHostError as exc:
                    self._send(405, str(exc).encode(), {"Content-Type": "text/plain"})
                    return
                if matched is None:
                    self._send(404, b"no function serves this route", {"Content-Type": "text/plain"})
                    return
                info, route_params = matched
                if keys and info.auth_level in ("function", "admin"):
                    given = dict(parse_qsl(parts.query)).get("code") or self.headers.get("x-functions-key")
                    if given not in keys:
                        self._send(401, b"", {})
                        return
                url = f"http://{self.headers.get('Host', 'localhost')}{self.path}"
                try:
                    resp = host.call_http(
                        info.name, self.command, url, body=body, headers=dict(self.headers.items()),
                        params=dict(parse_qsl(parts.query)), route_params=route_params,
                    )
                except Exception:
                    log.exception("function %s failed", info.name)
                    self._send(500, b"function failed; see the host log", {"Content-Type": "text/plain"})
                    return
                headers = dict(resp.headers.items())
                if resp.mimetype and "content-type" not in {k.lower() for k in headers}:
                    headers["Content-Type"] = resp.mimetype
                self._send(resp.status_code, resp.get_body() or b"", headers)

            def _proxy(self, rpc_base: str, parts: Any, body: bytes) -> None:
                import urllib.error
                import urllib.request

                target = rpc_base + parts.path[len(DURABLE_WEBHOOK_PREFIX):]
                if parts.query:
                    target += "?" + parts.query
                req = urllib.request.Request(target, data=body or None, method=self.command)  # noqa: S310 - loopback
                req.add_header("Content-Type", self.headers.get("Content-Type", "application/json"))
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback only
                        self._send(r.status, r.read(), {"Content-Type": "application/json"})
                except urllib.error.HTTPError as e:
                    self._send(e.code, e.read(), {"Content-Type": "application/json"})

            def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="funchost-http", daemon=True).start()
        self._server = server
        return f"http://127.0.0.1:{server.server_address[1]}"

    def stop_http(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def environment(settings: Mapping[str, str]) -> Iterator[None]:
    """Set app settings as environment variables for the duration of a block (tests, demos)."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
