"""Log Analytics heartbeats: which VMs stopped reporting, in one query per workspace."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from azure.core.credentials import TokenCredential

from remediation.azure.compute import translate_errors

# One row per VM whose newest heartbeat is older than the threshold. The lookback bounds the scan; a VM
# silent for longer than the lookback is not a fresh failure and falls to the agent-status candidates.
QUERY = (
    "Heartbeat | summarize LastHeartbeat = max(TimeGenerated) by _ResourceId = tolower(_ResourceId) "
    "| where LastHeartbeat < ago({minutes}m)"
)
LOOKBACK = timedelta(days=2)


class LogAnalyticsHeartbeats:
    """HeartbeatSource over azure-monitor-query's LogsQueryClient."""

    def __init__(self, credential: TokenCredential, workspace_ids: list[str], *, endpoint: str | None = None,
                 ca_bundle: str | None = None) -> None:
        self._credential = credential
        self._workspaces = workspace_ids
        self._endpoint = endpoint
        self._verify: Any = ca_bundle or True
        self._client: Any = None

    def _logs(self) -> Any:
        if self._client is None:
            from azure.monitor.query import LogsQueryClient

            kwargs: dict[str, Any] = {"connection_verify": self._verify}
            if self._endpoint:
                kwargs["endpoint"] = self._endpoint
            self._client = LogsQueryClient(self._credential, **kwargs)
        return self._client

    def stale_vms(self, stale_after: timedelta) -> list[str]:
        from azure.monitor.query import LogsQueryStatus

        minutes = max(1, int(stale_after.total_seconds() // 60))
        found: list[str] = []
        for workspace in self._workspaces:
            with translate_errors(f"heartbeat query in workspace {workspace}"):
                response = self._logs().query_workspace(workspace, QUERY.format(minutes=minutes), timespan=LOOKBACK)
            tables = response.tables if response.status == LogsQueryStatus.SUCCESS else response.partial_data
            for table in tables or []:
                columns = [c if isinstance(c, str) else getattr(c, "name", str(c)) for c in table.columns]
                idx = columns.index("_ResourceId") if "_ResourceId" in columns else 0
                found.extend(str(row[idx]) for row in table.rows if row[idx])
        return found
