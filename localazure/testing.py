"""Run the local Azure in-process: `with running(scenario=..., time_scale=0.001) as az: ...`.

`az` gives the endpoint, the CA file, a credential that hands out a dummy token, the state (for
invariant checks), the request log, and helpers that build the real SDK clients exactly as the
product does.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

from localazure import scenario as scenario_mod
from localazure.faults import FaultPlan, LatencyModel
from localazure.server import LocalAzure, RequestRecord
from localazure.state import State


class DummyCredential:
    """A TokenCredential whose token the local Azure accepts (it accepts any)."""

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        return AccessToken("localazure-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo("localazure-token", int(time.time()) + 3600)

    def close(self) -> None:
        return None

    def __enter__(self) -> DummyCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def build(
    scenario: str | Path | dict[str, Any] | None = None,
    *,
    time_scale: float = 1.0,
    faults: str | dict[str, Any] | FaultPlan | None = None,
    seed: int = 0,
    state_dir: Path | None = None,
    port: int = 0,
    images: bool | None = None,
    real_boot: bool | None = None,
    page_size: int = 1000,
) -> LocalAzure:
    """Create (not start) a server for a scenario (a path, a dict, or None for the default)."""
    data = scenario if isinstance(scenario, dict) else scenario_mod.load(scenario)
    directory = state_dir or Path(tempfile.mkdtemp(prefix="localazure-"))
    directory.mkdir(parents=True, exist_ok=True)
    from localazure import runcommand

    boot_runner = None
    real = real_boot if real_boot is not None else bool(data.get("real_boot", False))
    if real:
        from localazure import bootmodel

        boot_runner = bootmodel.real_boot_runner(directory)
        images = True
    state = State(LatencyModel(time_scale), directory, script_runner=runcommand.execute, boot_runner=boot_runner)
    scenario_mod.populate(state, data, images=images, real_boot=real)
    return LocalAzure(state, FaultPlan.from_spec(faults, seed), port=port, cert_dir=directory,
                      page_size=page_size, owned_dir=None if state_dir else directory)


@dataclass
class LocalAzureHandle:
    """A running local Azure and the helpers tests use."""

    server: LocalAzure
    credential: DummyCredential = field(default_factory=DummyCredential)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def ca_path(self) -> str:
        return str(self.server.ca_path)

    @property
    def state(self) -> State:
        self.server.state.advance()
        return self.server.state

    @property
    def requests(self) -> list[RequestRecord]:
        return self.server.records()

    @property
    def subscription_id(self) -> str:
        return next(iter(self.server.state.subscriptions))

    def compute_client(self, subscription_id: str | None = None, polling_interval: float = 0.01) -> Any:
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, subscription_id or self.subscription_id,
                                       base_url=self.endpoint, connection_verify=self.ca_path,
                                       polling_interval=polling_interval)

    def network_client(self, subscription_id: str | None = None, polling_interval: float = 0.01) -> Any:
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, subscription_id or self.subscription_id,
                                       base_url=self.endpoint, connection_verify=self.ca_path,
                                       polling_interval=polling_interval)

    def logs_client(self) -> Any:
        from azure.monitor.query import LogsQueryClient

        return LogsQueryClient(self.credential, endpoint=f"{self.endpoint}/v1", connection_verify=self.ca_path)

    def blob_client(self, sas_url: str) -> Any:
        from azure.storage.blob import BlobClient

        return BlobClient.from_blob_url(sas_url, connection_verify=self.ca_path)

    def wait_until(self, predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
        """Advance state until predicate(state) holds (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.state):
                return
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout} s")

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def running(
    scenario: str | Path | dict[str, Any] | None = None,
    *,
    time_scale: float = 0.001,
    faults: str | dict[str, Any] | FaultPlan | None = None,
    seed: int = 0,
    state_dir: Path | None = None,
    images: bool | None = None,
    real_boot: bool | None = None,
    page_size: int = 1000,
) -> Iterator[LocalAzureHandle]:
    """A started local Azure for the duration of the block."""
    server = build(scenario, time_scale=time_scale, faults=faults, seed=seed, state_dir=state_dir, images=images,
                   real_boot=real_boot, page_size=page_size).start()
    handle = LocalAzureHandle(server)
    try:
        yield handle
    finally:
        server.stop()
