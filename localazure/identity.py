"""A managed-identity endpoint for the local world, speaking App Service's protocol.

In Azure, a Function app's managed identity is reached through IDENTITY_ENDPOINT / IDENTITY_HEADER,
which DefaultAzureCredential reads by itself. Serving the same protocol here lets the product keep
DefaultAzureCredential unchanged: the local Azure accepts any bearer token.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class IdentityEndpoint:
    """`with IdentityEndpoint() as ep: os.environ.update(ep.environment())`."""

    def __init__(self) -> None:
        self.header = secrets.token_hex(16)
        self.issued = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                if self.headers.get("X-IDENTITY-HEADER") != outer.header:
                    self._reply(401, {"error": "missing or wrong X-IDENTITY-HEADER"})
                    return
                resource = (query.get("resource") or [""])[0]
                if not resource:
                    self._reply(400, {"error": "resource is required"})
                    return
                outer.issued += 1
                self._reply(200, {
                    "access_token": "local-" + secrets.token_hex(24),
                    "expires_on": str(int(time.time()) + 3600),
                    "resource": resource,
                    "token_type": "Bearer",
                })

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="identity")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"

    def environment(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def start(self) -> IdentityEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> IdentityEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
