"""Start and stop Azurite (Table and Blob storage) for the demo and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    """A running Azurite process and the connection string that reaches it."""

    blob_port: int
    table_port: int
    queue_port: int
    process: subprocess.Popen[bytes]
    location: Path
    owned: bool = False  # a throwaway location made by start(): removed by stop()

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.owned:
            shutil.rmtree(self.location, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


AZURITE_VERSION = "3.35.0"  # the newest that runs on Node 20


def find_binary() -> str:
    """Azurite's launcher: AZURITE_BIN (set by the Makefile), the Makefile's cache, else PATH."""
    cache = Path(os.environ.get("CACHE_DIR") or Path.home() / ".cache" / "selinux-remediator")
    cached = cache / f"azurite-{AZURITE_VERSION}" / "node_modules" / ".bin" / "azurite"
    candidate = os.environ.get("AZURITE_BIN") or (str(cached) if cached.exists() else shutil.which("azurite"))
    if not candidate or not Path(candidate).exists():
        raise RuntimeError("Azurite is not installed: run `make setup` (it installs Azurite from npm)")
    return candidate


def start(location: Path | None = None, timeout: float = 20.0, *, prefix: str = "azurite-") -> Azurite:
    """Start Azurite on free loopback ports; return once every service accepts connections.

    Without a location, its data lives in a fresh temporary directory that stop() removes.
    """
    binary = find_binary()
    loc = location or Path(tempfile.mkdtemp(prefix=prefix))
    loc.mkdir(parents=True, exist_ok=True)
    ports = {"blob": _free_port(), "queue": _free_port(), "table": _free_port()}
    cmd = [
        binary, "--location", str(loc), "--skipApiVersionCheck", "--loose", "--disableTelemetry",
        "--blobHost", "127.0.0.1", "--blobPort", str(ports["blob"]),
        "--queueHost", "127.0.0.1", "--queuePort", str(ports["queue"]),
        "--tableHost", "127.0.0.1", "--tablePort", str(ports["table"]),
    ]
    log = open(loc / "azurite.log", "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    pending = set(ports.values())
    while pending:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with {proc.returncode}; see {loc / 'azurite.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Azurite did not listen within {timeout:.0f} s")
        for port in list(pending):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    pending.discard(port)
        time.sleep(0.05)
    return Azurite(ports["blob"], ports["table"], ports["queue"], proc, loc, owned=location is None)
