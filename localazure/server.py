"""The HTTPS front door of the local Azure: ARM, boot-diagnostics blobs and Log Analytics.

One process, the standard library's threading HTTP server behind TLS with a throwaway CA (azure-core
refuses bearer tokens over plain http). Any bearer token is accepted. Every request is recorded
(method, operation, resource id, status, duration, read/write) for tests and for
GET /_localazure/requests; GET /_localazure/state dumps every resource.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import re
import secrets
import shutil
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from localazure.faults import FaultPlan, LatencyModel
from localazure.state import ArmError, Reply, State, iso

log = logging.getLogger(__name__)

STORAGE_VERSION = "2025-01-05"
REQUEST_LOG_LIMIT = 200_000  # a long demo keeps the most recent requests only


@dataclass
class RequestRecord:
    """One request as the server saw it."""

    at: float
    method: str
    path: str
    operation: str
    resource_id: str
    status: int
    duration: float
    write: bool
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    match: re.Match[str]

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArmError(400, "InvalidRequestContent", f"The request content is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        return data

    def g(self, name: str) -> str:
        return self.match.group(name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] | None = None
    reset: bool = False


Handler = Callable[[Request, bool], Response]

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_CMP = r"/providers/Microsoft\.Compute"
_NET = r"/providers/Microsoft\.Network"
_VM = _RG + _CMP + r"/virtualMachines/(?P<name>[^/]+)"
_HEARTBEAT_QUERY = re.compile(
    r"^\s*Heartbeat\s*\|\s*summarize\s+LastHeartbeat\s*=\s*max\(\s*TimeGenerated\s*\)\s+by\s+"
    r"_ResourceId\s*=\s*tolower\(\s*_ResourceId\s*\)\s*\|\s*where\s+LastHeartbeat\s*<\s*"
    r"ago\(\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhd])\s*\)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")
_TAG_FILTER = re.compile(
    r"^\s*tagName\s+eq\s+'(?P<name>[^']*)'(?:\s+and\s+tagValue\s+eq\s+'(?P<value>[^']*)')?\s*$", re.IGNORECASE)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    data = b"" if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json; charset=utf-8"}
    h.update(headers or {})
    return Response(status, data, h)


class LocalAzure:
    """The server: routes, faults, latency, recording, TLS."""

    def __init__(
        self,
        state: State,
        faults: FaultPlan | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_dir: Path | None = None,
        page_size: int = 1000,
        owned_dir: Path | None = None,
    ) -> None:
        self.state = state
        # A throwaway state directory (disk images, certificates): removed by stop(). Each holds a few
        # GB of sparse images, so leaving them behind fills a test machine's disk within a few runs.
        self.owned_dir = owned_dir
        self.faults = faults or FaultPlan.none()
        self.latency: LatencyModel = state.latency
        self.page_size = page_size
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=REQUEST_LOG_LIMIT)
        self._rec_lock = threading.Lock()
        self._sas_key = secrets.token_bytes(32)
        self.cert_dir = cert_dir or state.data_dir
        self.ca_path = self.cert_dir / "ca.pem"
        self._httpd = _Server((host, port), _RequestHandler, self)
        self._httpd.socket = self._tls_context().wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.host, self.port = host, int(self._httpd.server_address[1])
        self.endpoint = f"https://{host}:{self.port}"
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._add_routes()

    # ------------------------------------------------------------------ lifecycle

    def _tls_context(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(self.ca_path))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def start(self) -> LocalAzure:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="localazure-http", daemon=True)
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick, name="localazure-ticker", daemon=True)
        self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(max(0.02, min(1.0, self.latency.time_scale))):
            self.state.advance()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)
            self.owned_dir = None

    def records(self) -> list[RequestRecord]:
        with self._rec_lock:
            return list(self.requests)

    # ------------------------------------------------------------------ routing

    def _add_routes(self) -> None:
        r = self._route
        r("GET", r"/subscriptions", "subscriptions.list", self.h_subscriptions)
        r("GET", _SUB, "subscriptions.get", self.h_subscription)
        r("GET", _RG, "resourceGroups.get", self.h_group)
        r("GET", _SUB + r"/resources", "resources.list", self.h_resources)
        r("GET", _RG + r"/resources", "resources.listByResourceGroup", self.h_resources)
        r("GET", _SUB + r"/providers/(?P<prov>Microsoft\.(?:Compute|Network))/locations/(?P<loc>[^/]+)"
          r"/operations/(?P<op>[^/]+)", "operations.get", self.h_operation)
        r("GET", _SUB + _CMP + r"/virtualMachines", "virtualMachines.listAll", self.h_vm_list)
        r("GET", _RG + _CMP + r"/virtualMachines", "virtualMachines.list", self.h_vm_list)
        r("GET", _VM, "virtualMachines.get", self.h_vm_get)
        r("PUT", _VM, "virtualMachines.createOrUpdate", self.h_vm_put)
        r("PATCH", _VM, "virtualMachines.update", self.h_vm_put)
        r("DELETE", _VM, "virtualMachines.delete", self.h_vm_delete)
        r("GET", _VM + r"/instanceView", "virtualMachines.instanceView", self.h_vm_instance_view)
        r("POST", _VM + r"/(?P<action>start|deallocate|powerOff|restart)", "virtualMachines.power", self.h_vm_power)
        r("POST", _VM + r"/retrieveBootDiagnosticsData", "virtualMachines.retrieveBootDiagnosticsData",
          self.h_boot_diag)
        r("POST", _VM + r"/runCommand", "virtualMachines.runCommand", self.h_run_command)
        r("GET", _VM + r"/runCommands", "runCommands.list", self.h_rc_list)
        r("GET", _VM + r"/runCommands/(?P<cmd>[^/]+)", "runCommands.get", self.h_rc_get)
        r("PUT", _VM + r"/runCommands/(?P<cmd>[^/]+)", "runCommands.createOrUpdate", self.h_rc_put)
        r("DELETE", _VM + r"/runCommands/(?P<cmd>[^/]+)", "runCommands.delete", self.h_rc_delete)
        for kind in ("disks", "snapshots"):
            base = _CMP + rf"/{kind}"
            r("GET", _SUB + base, f"{kind}.list", self._kind(self.h_disk_list, kind))
            r("GET", _RG + base, f"{kind}.listByResourceGroup", self._kind(self.h_disk_list, kind))
            one = _RG + base + r"/(?P<name>[^/]+)"
            r("GET", one, f"{kind}.get", self._kind(self.h_disk_get, kind))
            r("PUT", one, f"{kind}.createOrUpdate", self._kind(self.h_disk_put, kind))
            r("PATCH", one, f"{kind}.update", self._kind(self.h_disk_patch, kind))
            r("DELETE", one, f"{kind}.delete", self._kind(self.h_disk_delete, kind))
        nic = _RG + _NET + r"/networkInterfaces/(?P<name>[^/]+)"
        r("GET", nic, "networkInterfaces.get", self.h_nic_get)
        r("PUT", nic, "networkInterfaces.createOrUpdate", self.h_nic_put)
        r("DELETE", nic, "networkInterfaces.delete", self.h_nic_delete)
        vnet = _RG + _NET + r"/virtualNetworks/(?P<vnet>[^/]+)"
        r("GET", vnet, "virtualNetworks.get", self.h_vnet_get)
        r("GET", vnet + r"/subnets/(?P<subnet>[^/]+)", "subnets.get", self.h_subnet_get)
        r("POST", r"/v1/workspaces/(?P<ws>[^/]+)/query", "logs.query", self.h_logs)
        r("GET", r"/bootdiag/(?P<key>[0-9a-f]+)/(?P<blob>serial\.log|screenshot\.bmp)", "blob.get", self.h_blob)
        r("HEAD", r"/bootdiag/(?P<key>[0-9a-f]+)/(?P<blob>serial\.log|screenshot\.bmp)", "blob.properties",
          self.h_blob)
        r("GET", r"/_localazure/requests", "localazure.requests", self.h_requests)
        r("GET", r"/_localazure/state", "localazure.state", self.h_state)

    def _route(self, method: str, pattern: str, name: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}/?$", re.IGNORECASE), name, handler))

    @staticmethod
    def _kind(fn: Callable[[Request, bool, str], Response], kind: str) -> Handler:
        return lambda req, fail: fn(req, fail, kind)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        started = time.monotonic()
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        route = next(((m, name, h, pat.match(path)) for m, pat, name, h in self.routes
                      if m == method and pat.match(path)), None)
        if route is None:
            allowed = any(pat.match(path) for _, pat, _, _ in self.routes)
            resp = _json(405 if allowed else 404, ArmError(
                405 if allowed else 404, "MethodNotAllowed" if allowed else "InvalidResourceType",
                f"{method} {path} is not supported by this local Azure.").body())
            self._record(method, path, "unknown", path, resp.status, started, method != "GET", None)
            return resp
        _, name, handler, match = route
        assert match is not None
        if name == "virtualMachines.power":
            name = f"virtualMachines.{match.group('action')}"
        internal = name.startswith("localazure.")
        write = method not in ("GET", "HEAD")
        resource_id = self._resource_id(path)
        lro = write and not name.startswith(("logs.", "virtualMachines.retrieve"))
        decision = self.faults.decide(name, "write" if write else "read", lro) if not internal else None
        if not internal:
            time.sleep(self.latency.seconds("write" if write else "read")
                       + self.latency.scaled(decision.extra_latency if decision else 0.0))
        fault = decision.fault if decision else None
        if fault in ("throttle", "server_error") and name.startswith("blob"):
            # Azure Storage throttles with 503 ServerBusy (never 429) and answers errors in XML.
            resp = (self._storage_error(503, "ServerBusy", "The server is busy.") if fault == "throttle" else
                    self._storage_error(500, "InternalError", "The server encountered an internal error. "
                                        "Please retry the request."))
        elif fault == "throttle":
            resp = _json(429, ArmError(429, "TooManyRequests",
                                       "The request is being throttled; retry after the interval in Retry-After.")
                         .body(), {"Retry-After": self.latency.throttle_retry_after()})
        elif fault == "server_error":
            resp = _json(500, ArmError(500, "InternalServerError",
                                       "Encountered internal server error. Please try again.").body())
        elif fault == "connection_reset":
            resp = Response(0, reset=True)
        else:
            req = Request(method, path, query, headers, body, match)
            try:
                self.state.advance()
                with self.state.lock:
                    resp = handler(req, bool(decision and decision.lro_failure))
            except ArmError as exc:
                resp = _json(exc.status, exc.body())
                if exc.status == 403 and name.startswith("blob"):
                    resp = self._storage_error(403, exc.code, exc.message)
                if exc.status == 416:
                    resp = self._storage_error(416, exc.code, exc.message)
                    resp.headers = {**(resp.headers or {}), "Content-Range": exc.message.split("|")[-1]}
            except Exception:
                log.exception("unhandled error serving %s %s", method, path)
                resp = _json(500, ArmError(500, "InternalServerError", "The local Azure hit a bug; see its log.")
                             .body())
        if not internal:
            self._record(method, path, name, resource_id, resp.status, started, write, fault)
        h = {"x-ms-request-id": str(uuid.uuid4()), "x-ms-correlation-request-id": str(uuid.uuid4()),
             "Date": formatdate(usegmt=True)}
        if "x-ms-version" in headers:
            h["x-ms-version"] = headers["x-ms-version"]
        resp.headers = {**h, **(resp.headers or {})}
        return resp

    def _record(self, method: str, path: str, name: str, resource_id: str, status: int, started: float,
                write: bool, fault: str | None) -> None:
        rec = RequestRecord(time.time(), method, path, name, resource_id, status, time.monotonic() - started,
                            write, fault)
        with self._rec_lock:
            self.requests.append(rec)

    @staticmethod
    def _resource_id(path: str) -> str:
        m = re.match(r"^(/subscriptions/[^/]+(?:/resourceGroups/[^/]+(?:/providers/[^/]+/[^/]+/[^/]+"
                     r"(?:/(?!instanceView|start|deallocate|powerOff|restart|runCommand$|retrieve)[^/]+/[^/]+)?)?)?)",
                     path, re.IGNORECASE)
        return m.group(1) if m else path

    # ------------------------------------------------------------------ helpers

    def _lro(self, reply: Reply, req: Request) -> Response:
        op = reply.op
        headers: dict[str, str] = {}
        if op is not None:
            api = req.query.get("api-version", "2024-07-01")
            url = (f"{self.endpoint}/subscriptions/{op.subscription}/providers/{op.provider}/locations/"
                   f"{op.location}/operations/{op.id}?api-version={quote(api)}")
            headers = {"Azure-AsyncOperation": url, "Retry-After": self.latency.retry_after_header()}
            headers["Location"] = url + "&monitor=true"
        if reply.body is None:
            return Response(reply.status, b"", {**headers, "Content-Length": "0"})
        return _json(reply.status, reply.body, headers)

    def _paged(self, req: Request, items: list[Any], render: Callable[[Any], Any] | None = None) -> Response:
        try:
            skip = int(req.query.get("$skiptoken", "0"))
        except ValueError as exc:
            raise ArmError(400, "InvalidSkipToken", "The $skiptoken is not valid.") from exc
        page = items[skip: skip + self.page_size]
        body: dict[str, Any] = {"value": [render(i) for i in page] if render else page}
        if skip + self.page_size < len(items):
            q = {k: v for k, v in req.query.items() if k != "$skiptoken"}
            q["$skiptoken"] = str(skip + self.page_size)
            body["nextLink"] = f"{self.endpoint}{req.path}?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())
        return _json(200, body)

    # ------------------------------------------------------------------ ARM: subscriptions, groups, resources

    def h_subscriptions(self, req: Request, fail: bool) -> Response:
        return _json(200, {"value": [s.to_arm() for s in self.state.subscriptions.values()]})

    def h_subscription(self, req: Request, fail: bool) -> Response:
        return _json(200, self.state.subscription(req.g("sub")).to_arm())

    def h_group(self, req: Request, fail: bool) -> Response:
        return _json(200, self.state.group(req.g("sub"), req.g("rg")).to_arm())

    def h_resources(self, req: Request, fail: bool) -> Response:
        rg = req.match.groupdict().get("rg")
        items = self.state.all_resources(req.g("sub"), rg)
        flt = req.query.get("$filter")
        if flt:
            m = _TAG_FILTER.match(flt)
            rt = re.match(r"^\s*resourceType\s+eq\s+'(?P<t>[^']+)'\s*$", flt, re.IGNORECASE)
            if m:
                items = [i for i in items if any(k.lower() == m["name"].lower()
                                                 and (m["value"] is None or v == m["value"])
                                                 for k, v in i["tags"].items())]
            elif rt:
                items = [i for i in items if i["type"].lower() == rt["t"].lower()]
            else:
                raise ArmError(400, "InvalidFilterInQueryString",
                               f"Unsupported $filter {flt!r}: use tagName eq 'x' [and tagValue eq 'y'] "
                               "or resourceType eq 'T'.")
        return self._paged(req, items)

    def h_operation(self, req: Request, fail: bool) -> Response:
        op = self.state.operation(req.g("op"))
        if req.query.get("monitor", "").lower() == "true":
            if op.status == "InProgress":
                return Response(202, b"", {"Location": f"{self.endpoint}{req.path}?"
                                           + "&".join(f"{k}={quote(v)}" for k, v in req.query.items()),
                                           "Retry-After": self.latency.retry_after_header(),
                                           "Content-Length": "0"})
            if op.status == "Failed":
                return _json(200, {"error": op.error})
            return _json(200, op.result) if op.result is not None else Response(200, b"", {"Content-Length": "0"})
        headers = {"Retry-After": self.latency.retry_after_header()} if op.status == "InProgress" else {}
        return _json(200, op.to_arm(), headers)

    # ------------------------------------------------------------------ ARM: VMs

    def h_vm_list(self, req: Request, fail: bool) -> Response:
        rg = req.match.groupdict().get("rg")
        vms = self.state.vms_in(req.g("sub"), rg)
        status_only = req.query.get("statusOnly", "").lower() == "true"
        expand = req.query.get("$expand", "").lower() == "instanceview"
        return self._paged(req, vms, lambda v: v.to_arm(self.state, instance_view=status_only or expand))

    def h_vm_get(self, req: Request, fail: bool) -> Response:
        vm = self.state.vm(req.g("sub"), req.g("rg"), req.g("name"))
        expand = req.query.get("$expand", "").lower() == "instanceview"
        return _json(200, vm.to_arm(self.state, instance_view=expand))

    def h_vm_put(self, req: Request, fail: bool) -> Response:
        reply = self.state.put_vm(req.g("sub"), req.g("rg"), req.g("name"), req.json(), fail,
                                  patch=req.method == "PATCH")
        return self._lro(reply, req)

    def h_vm_delete(self, req: Request, fail: bool) -> Response:
        return self._lro(self.state.delete_vm(req.g("sub"), req.g("rg"), req.g("name"), fail), req)

    def h_vm_instance_view(self, req: Request, fail: bool) -> Response:
        vm = self.state.vm(req.g("sub"), req.g("rg"), req.g("name"))
        return _json(200, vm.instance_view(self.state))

    def h_vm_power(self, req: Request, fail: bool) -> Response:
        return self._lro(self.state.vm_power(req.g("sub"), req.g("rg"), req.g("name"), req.g("action"), fail), req)

    def h_boot_diag(self, req: Request, fail: bool) -> Response:
        vm = self.state.vm(req.g("sub"), req.g("rg"), req.g("name"))
        if not vm.boot_diagnostics:
            raise ArmError(409, "OperationNotAllowed",
                           f"Boot diagnostics are not enabled for VM {vm.name}; enable them to read the serial log.")
        raw = req.query.get("sasUriExpirationTimeInMinutes", "120")
        try:
            minutes = int(raw)
        except ValueError as exc:
            raise ArmError(400, "InvalidParameter", f"sasUriExpirationTimeInMinutes must be an integer, got {raw!r}") \
                from exc
        if not 1 <= minutes <= 1440:
            raise ArmError(400, "InvalidParameter", "sasUriExpirationTimeInMinutes must be between 1 and 1440.")
        expiry = datetime.now(UTC) + timedelta(minutes=minutes)
        return _json(200, {"consoleScreenshotBlobUri": self.sas_url(vm.blob_key, "screenshot.bmp", expiry),
                           "serialConsoleLogBlobUri": self.sas_url(vm.blob_key, "serial.log", expiry)})

    def h_run_command(self, req: Request, fail: bool) -> Response:
        reply = self.state.run_command(req.g("sub"), req.g("rg"), req.g("name"), req.json(), fail)
        return self._lro(reply, req)

    def h_rc_list(self, req: Request, fail: bool) -> Response:
        vm = self.state.vm(req.g("sub"), req.g("rg"), req.g("name"))
        expand = req.query.get("$expand", "").lower() == "instanceview"
        return self._paged(req, [rc.to_arm(expand) for rc in self.state.run_commands.values()
                                 if rc.vm_id.lower() == vm.id.lower()])

    def h_rc_get(self, req: Request, fail: bool) -> Response:
        rc = self.state.get_run_command(req.g("sub"), req.g("rg"), req.g("name"), req.g("cmd"))
        return _json(200, rc.to_arm(req.query.get("$expand", "").lower() == "instanceview"))

    def h_rc_put(self, req: Request, fail: bool) -> Response:
        reply = self.state.put_run_command(req.g("sub"), req.g("rg"), req.g("name"), req.g("cmd"), req.json(), fail)
        return self._lro(reply, req)

    def h_rc_delete(self, req: Request, fail: bool) -> Response:
        reply = self.state.delete_run_command(req.g("sub"), req.g("rg"), req.g("name"), req.g("cmd"), fail)
        return self._lro(reply, req)

    # ------------------------------------------------------------------ ARM: disks, snapshots

    def h_disk_list(self, req: Request, fail: bool, kind: str) -> Response:
        rg = req.match.groupdict().get("rg")
        return self._paged(req, self.state.disks_in(req.g("sub"), rg, kind), lambda d: d.to_arm(self.state))

    def h_disk_get(self, req: Request, fail: bool, kind: str) -> Response:
        return _json(200, self.state.disk(req.g("sub"), req.g("rg"), req.g("name"), kind).to_arm(self.state))

    def h_disk_put(self, req: Request, fail: bool, kind: str) -> Response:
        return self._lro(self.state.put_disk(req.g("sub"), req.g("rg"), req.g("name"), req.json(), kind, fail), req)

    def h_disk_patch(self, req: Request, fail: bool, kind: str) -> Response:
        return self._lro(self.state.patch_disk(req.g("sub"), req.g("rg"), req.g("name"), req.json(), kind, fail),
                         req)

    def h_disk_delete(self, req: Request, fail: bool, kind: str) -> Response:
        return self._lro(self.state.delete_disk(req.g("sub"), req.g("rg"), req.g("name"), kind, fail), req)

    # ------------------------------------------------------------------ ARM: network

    def h_nic_get(self, req: Request, fail: bool) -> Response:
        return _json(200, self.state.nic(req.g("sub"), req.g("rg"), req.g("name")).to_arm())

    def h_nic_put(self, req: Request, fail: bool) -> Response:
        return self._lro(self.state.put_nic(req.g("sub"), req.g("rg"), req.g("name"), req.json(), fail), req)

    def h_nic_delete(self, req: Request, fail: bool) -> Response:
        return self._lro(self.state.delete_nic(req.g("sub"), req.g("rg"), req.g("name"), fail), req)

    def h_vnet_get(self, req: Request, fail: bool) -> Response:
        return _json(200, self.state.vnet(req.g("sub"), req.g("rg"), req.g("vnet")).to_arm(self.state))

    def h_subnet_get(self, req: Request, fail: bool) -> Response:
        vnet = self.state.vnet(req.g("sub"), req.g("rg"), req.g("vnet"))
        subnet = vnet.subnets.get(req.g("subnet").lower())
        if subnet is None:
            raise ArmError(404, "NotFound", f"Resource {vnet.id}/subnets/{req.g('subnet')} not found.")
        return _json(200, subnet.to_arm(self.state))

    # ------------------------------------------------------------------ Log Analytics

    def h_logs(self, req: Request, fail: bool) -> Response:
        ws = req.g("ws")
        if ws.lower() != self.state.workspace_id.lower():
            raise ArmError(404, "WorkspaceNotFoundError", f"The workspace {ws} could not be found.")
        body = req.json()
        query = body.get("query")
        if not isinstance(query, str):
            raise ArmError(400, "BadArgumentError", "The request had some invalid properties: 'query' is required.")
        m = _HEARTBEAT_QUERY.match(query)
        if not m:
            raise ArmError(400, "BadArgumentError",
                           "This local Log Analytics answers only the stale-heartbeat query: Heartbeat | summarize "
                           "LastHeartbeat = max(TimeGenerated) by _ResourceId = tolower(_ResourceId) | where "
                           "LastHeartbeat < ago(<N>m)")
        window = float(m["n"]) * _UNIT_SECONDS[m["unit"].lower()]
        rows = self.state.stale_heartbeats(window)
        earliest = self._timespan_start(body.get("timespan"))
        rows = [(rid, at) for rid, at in rows if earliest is None or at >= earliest]
        return _json(200, {"tables": [{
            "name": "PrimaryResult",
            "columns": [{"name": "_ResourceId", "type": "string"}, {"name": "LastHeartbeat", "type": "datetime"}],
            "rows": [[rid.lower(), iso(at)] for rid, at in rows],
        }]})

    def _timespan_start(self, timespan: Any) -> float | None:
        """Heartbeats older than the query's timespan are not in the table at all."""
        if timespan is None:
            return None
        if not isinstance(timespan, str):
            raise ArmError(400, "BadArgumentError", "timespan must be an ISO 8601 duration or interval.")
        first = timespan.split("/")[0]
        m = _DURATION.match(first)
        if m and any(m.groupdict().values()):
            secs = sum(float(m[k] or 0) * mult for k, mult in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)))
            return time.time() - self.latency.scaled(secs)
        try:
            return datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise ArmError(400, "BadArgumentError", f"timespan {timespan!r} is not ISO 8601.") from exc

    # ------------------------------------------------------------------ boot diagnostics blobs

    def sas_url(self, key: str, blob: str, expiry: datetime) -> str:
        se = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = self._sign(f"/bootdiag/{key}/{blob}", se)
        return (f"{self.endpoint}/bootdiag/{key}/{blob}?sv={STORAGE_VERSION}&sr=b&sp=r"
                f"&se={quote(se, safe='')}&sig={quote(sig, safe='')}")

    def _sign(self, path: str, se: str) -> str:
        mac = hmac.new(self._sas_key, f"{path}\n{se}".encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode()

    @staticmethod
    def _storage_error(status: int, code: str, message: str) -> Response:
        msg = message.split("|", maxsplit=1)[0]
        xml = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{msg}\n'
               f"RequestId:{uuid.uuid4()}\nTime:{datetime.now(UTC).isoformat()}</Message></Error>").encode()
        return Response(status, xml, {"Content-Type": "application/xml", "x-ms-error-code": code})

    def h_blob(self, req: Request, fail: bool) -> Response:
        path = req.path
        se = req.query.get("se", "")
        sig = req.query.get("sig", "")
        if not se or not sig or not hmac.compare_digest(self._sign(path, se), sig):
            raise ArmError(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the "
                           "value of Authorization header is formed correctly including the signature.")
        try:
            expiry = datetime.strptime(se, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise ArmError(403, "AuthenticationFailed", "Signed expiry time is not valid.") from exc
        if expiry < datetime.now(UTC):
            raise ArmError(403, "AuthenticationFailed", "Signed expiry time has expired.")
        vm = next((v for v in self.state.vms.values() if v.blob_key == req.g("key")), None)
        if vm is None:
            raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
        if req.g("blob") == "serial.log":
            data, updated, ctype = vm.serial_bytes(), vm.serial_updated, "text/plain"
        else:
            data, updated, ctype = _SCREENSHOT, vm.created, "image/bmp"
        size = len(data)
        headers = {
            "Content-Type": ctype, "x-ms-blob-type": "BlockBlob", "Accept-Ranges": "bytes",
            "ETag": f'"0x{hashlib.sha1(data).hexdigest()[:16].upper()}"',  # noqa: S324 - an ETag, not security
            "Last-Modified": formatdate(updated, usegmt=True),
            "x-ms-creation-time": formatdate(vm.created, usegmt=True),
            "x-ms-lease-status": "unlocked", "x-ms-lease-state": "available", "x-ms-server-encrypted": "true",
            "x-ms-version": req.headers.get("x-ms-version", STORAGE_VERSION),
        }
        rng = req.headers.get("x-ms-range") or req.headers.get("range")
        if req.method == "HEAD":
            return Response(200, b"", {**headers, "Content-Length": str(size)})
        if rng:
            m = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())
            if not m:
                raise ArmError(400, "InvalidHeaderValue", f"The range {rng!r} is not valid.")
            start = int(m[1])
            end = int(m[2]) if m[2] else size - 1
            if start >= size or end < start:
                raise ArmError(416, "InvalidRange", f"The range specified is invalid for the current size of the "
                               f"resource.|bytes */{size}")
            end = min(end, size - 1)
            return Response(206, data[start: end + 1],
                            {**headers, "Content-Range": f"bytes {start}-{end}/{size}"})
        return Response(200, data, headers)

    # ------------------------------------------------------------------ internal

    def h_requests(self, req: Request, fail: bool) -> Response:
        return _json(200, {"requests": [r.to_dict() for r in self.records()]})

    def h_state(self, req: Request, fail: bool) -> Response:
        return _json(200, self.state.dump())


# A 1x1 black bitmap: what a console screenshot of a headless VM looks like here.
_SCREENSHOT = (b"BM" + struct.pack("<IHHI", 58, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, 4, 2835,
                                                                          2835, 0, 0) + b"\x00\x00\x00\x00")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: LocalAzure) -> None:
        self.app = app
        super().__init__(addr, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended abruptly", client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = self.server.app.dispatch(self.command, self.path, headers, body)
        if resp.reset:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                self.close_connection = True
                self.connection.close()
            return
        hdrs = {k: v for k, v in (resp.headers or {}).items() if k.lower() not in ("content-length", "date")}
        hdrs["Content-Length"] = (resp.headers or {}).get("Content-Length", str(len(resp.body)))
        hdrs["Date"] = self.date_time_string()
        hdrs["Server"] = "localazure"
        reason = self.responses.get(resp.status, ("",))[0]
        head = f"{self.protocol_version} {resp.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        # One write for headers and body: two small TLS records in a row meet delayed ACKs (~40 ms each).
        payload = head.encode("latin-1") + b"\r\n" + (resp.body if self.command != "HEAD" else b"")
        self.wfile.write(payload)
        self.log_request(resp.status)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _serve

