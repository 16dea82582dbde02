"""Typed settings, read from the environment on demand (never at import) and validated.

Every setting is an app setting of the Function App (or a `Values` entry of local.settings.json).

| Setting | Default | Meaning |
| --- | --- | --- |
| REMEDIATION_SUBSCRIPTIONS | (required) | Subscription GUIDs in scope, comma-separated; no "any". |
| REMEDIATION_RESOURCE_GROUPS | (all) | Comma-separated resource group names in scope (case-insensitive). |
| REMEDIATION_OPT_OUT_TAG | selinux-remediation=off | name=value; a VM carrying it is never touched. |
| REMEDIATION_OPT_IN_TAG | (none) | name=value; when set, only VMs carrying it are repaired. |
| REMEDIATION_DRY_RUN | false | Record and report incidents, never repair. |
| REMEDIATION_APPROVAL_REQUIRED | false | A repair waits for an operator's approval. |
| REMEDIATION_APPROVAL_TIMEOUT_MINUTES | 240 | How long a repair waits for approval before giving up. |
| REMEDIATION_REPAIR_POLICY_MISSING | false | Also act on `selinux_policy_missing` (policy absent, freeze not proven). |
| REMEDIATION_BLAST_RADIUS_MAX_VMS | 5 | More incidents than this opened within the window trips the brake. |
| REMEDIATION_BLAST_RADIUS_MAX_PERCENT | 10 | ... or this % of the VMs in scope (when known; at least 1 VM). |
| REMEDIATION_BLAST_RADIUS_WINDOW_MINUTES | 60 | The blast radius window. |
| REMEDIATION_MAX_CONCURRENT_REPAIRS | 3 | Repairs running at once; more are queued and start as running ones end. |
| REMEDIATION_RETRY_AFTER_FAILURE_HOURS | 24 | Wait after a failed repair (0: none); dry run: one record per VM. |
| REMEDIATION_SWEEP_CONCURRENCY | 8 | Serial logs read at once. |
| REMEDIATION_HEARTBEAT_WORKSPACE_IDS | (none) | Log Analytics workspace GUIDs, comma-separated. |
| REMEDIATION_HEARTBEAT_STALE_MINUTES | 15 | A heartbeat older than this makes a VM a candidate. |
| REMEDIATION_MAX_PAYLOAD_BYTES | 1048576 | Largest alert payload accepted. |
| REMEDIATION_STORAGE_CONNECTION | AzureWebJobsStorage | Storage connection string of the incident table. |
| REMEDIATION_STORAGE_TABLE_URL | (none) | Table endpoint https://<account>.table.core.windows.net (identity). |
| REMEDIATION_INCIDENT_TABLE | SelinuxIncidents | Table holding incidents and their timelines. |
| REMEDIATION_ARM_ENDPOINT | https://management.azure.com | Azure Resource Manager endpoint. |
| REMEDIATION_LOGS_ENDPOINT | https://api.loganalytics.io/v1 | Log Analytics query endpoint. |
| REMEDIATION_CA_BUNDLE | (none) | CA file to trust for a local endpoint; must exist. |
| REMEDIATION_RESCUE_SUBNET_ID | (none) | Subnet for rescue VMs (default: the broken VM's subnet). |
| REMEDIATION_RESCUE_VM_SIZE | Standard_D2s_v5 | Rescue VM size. |
| REMEDIATION_RESCUE_IMAGE | Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest | pub:offer:sku:ver |
| REMEDIATION_POLL_INTERVAL_SECONDS | 15 | How often the repair polls long operations. |
| REMEDIATION_VERIFY_TIMEOUT_MINUTES | 15 | How long to wait for a repaired VM to boot. |
| REMEDIATION_SERIAL_TAIL_BYTES | 262144 | How much of the serial log's end is read. |

When neither REMEDIATION_STORAGE_CONNECTION, REMEDIATION_STORAGE_TABLE_URL nor AzureWebJobsStorage is set,
an identity-based AzureWebJobsStorage (`AzureWebJobsStorage__tableServiceUri` or
`AzureWebJobsStorage__accountName`) gives the table URL.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from remediation.model import InvalidInput, SettingsError, VmRef

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_RESOURCE_GROUP = re.compile(r"^[-\w.()]{1,90}$")
_TAG_NAME = re.compile(r"^[^<>%&\\?/=,]{1,512}$")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_VM_SIZE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{1,63}$")
_SUBNET_ID = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w.()]{1,90}/providers/Microsoft\.Network/"
    r"virtualNetworks/[-\w.]{1,80}/subnets/[-\w.]{1,80}$",
    re.IGNORECASE,
)
_IMAGE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

DEFAULT_SERIAL_TAIL_BYTES = 262144
_DEFAULT_IMAGE = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"

T = TypeVar("T")


@dataclass(frozen=True)
class TagRule:
    """A `name=value` tag. Names compare case-insensitively (as in ARM); values exactly after trimming,
    unless exact_value is False (the opt-out tag: erring on the side of not touching a VM)."""

    name: str
    value: str
    exact_value: bool = True

    def matches(self, tags: Mapping[str, str] | None) -> bool:
        for key, value in (tags or {}).items():
            if str(key).strip().lower() != self.name.lower():
                continue
            got = str(value).strip()
            if got == self.value or (not self.exact_value and got.lower() == self.value.lower()):
                return True
        return False

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


_DEFAULT_OPT_OUT = TagRule("selinux-remediation", "off", exact_value=False)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of the remediator. Build it with Settings.from_env()."""

    subscriptions: tuple[str, ...] = ()
    resource_groups: tuple[str, ...] = ()  # lower case; empty = all
    opt_out_tag: TagRule = _DEFAULT_OPT_OUT
    opt_in_tag: TagRule | None = None
    dry_run: bool = False
    approval_required: bool = False
    approval_timeout_minutes: int = 240
    repair_policy_missing: bool = False
    blast_radius_max_vms: int = 5
    blast_radius_max_percent: float = 10.0
    blast_radius_window_minutes: int = 60
    retry_after_failure_hours: int = 24
    max_concurrent_repairs: int = 3
    sweep_concurrency: int = 8
    heartbeat_workspace_ids: tuple[str, ...] = ()
    heartbeat_stale_minutes: int = 15
    max_payload_bytes: int = 1048576
    storage_connection: str | None = None
    storage_table_url: str | None = None
    incident_table: str = "SelinuxIncidents"
    arm_endpoint: str = "https://management.azure.com"
    logs_endpoint: str = "https://api.loganalytics.io/v1"
    ca_bundle: str | None = None
    rescue_subnet_id: str | None = None
    rescue_vm_size: str = "Standard_D2s_v5"
    rescue_image: str = _DEFAULT_IMAGE
    poll_interval_seconds: int = 15
    verify_timeout_minutes: int = 15
    serial_tail_bytes: int = DEFAULT_SERIAL_TAIL_BYTES

    def __repr__(self) -> str:
        # The connection string carries an account key: never print it.
        shown = "<set>" if self.storage_connection else None
        return (
            f"Settings(subscriptions={self.subscriptions!r}, resource_groups={self.resource_groups!r}, "
            f"dry_run={self.dry_run}, storage_connection={shown}, storage_table_url={self.storage_table_url!r}, "
            f"incident_table={self.incident_table!r})"
        )

    # ------------------------------------------------------------------ scope

    def in_scope(self, vm: VmRef) -> bool:
        """True when the VM's subscription and resource group are in scope."""
        return self.scope_reason(vm) is None

    def scope_reason(self, vm: VmRef) -> str | None:
        """Why the VM is out of scope, or None when it is in scope."""
        if vm.subscription_id.lower() not in self.subscriptions:
            return f"subscription {vm.subscription_id} is not in REMEDIATION_SUBSCRIPTIONS"
        if self.resource_groups and vm.resource_group.lower() not in self.resource_groups:
            return f"resource group {vm.resource_group} is not in REMEDIATION_RESOURCE_GROUPS"
        return None

    def tag_reason(self, tags: Mapping[str, str] | None) -> str | None:
        """Why the VM's tags forbid touching it, or None when they allow it."""
        if self.opt_out_tag.matches(tags):
            return f"opted out: carries tag {self.opt_out_tag}"
        if self.opt_in_tag is not None and not self.opt_in_tag.matches(tags):
            return f"not opted in: lacks tag {self.opt_in_tag}"
        return None

    def repair_options(self) -> dict[str, Any]:
        """The part of the settings the repair orchestration needs (it runs without the environment)."""
        return {
            "poll_interval_seconds": self.poll_interval_seconds,
            "verify_timeout_minutes": self.verify_timeout_minutes,
            "approval_required": self.approval_required,
            "approval_timeout_minutes": self.approval_timeout_minutes,
            "rescue_image": self.rescue_image,
            "rescue_vm_size": self.rescue_vm_size,
            "rescue_subnet_id": self.rescue_subnet_id,
            "serial_tail_bytes": self.serial_tail_bytes,
        }

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_scope: bool = True) -> Settings:
        """Read and validate every setting; SettingsError names the first bad one and what it expects.

        require_scope=False lets commands that never touch VMs (e.g. listing incidents) run without
        REMEDIATION_SUBSCRIPTIONS.
        """
        e = _Env(os.environ if env is None else env)
        subscriptions = e.csv("REMEDIATION_SUBSCRIPTIONS", _guid_item("a subscription GUID"))
        if require_scope and not subscriptions:
            raise SettingsError(
                "REMEDIATION_SUBSCRIPTIONS is required: the comma-separated subscription GUIDs the remediator "
                "may act on (there is no 'any subscription')"
            )
        resource_groups = e.csv("REMEDIATION_RESOURCE_GROUPS", _rg_item)
        storage_connection, storage_table_url = _storage(e)
        return cls(
            subscriptions=tuple(s.lower() for s in subscriptions),
            resource_groups=tuple(r.lower() for r in resource_groups),
            opt_out_tag=e.tag("REMEDIATION_OPT_OUT_TAG", _DEFAULT_OPT_OUT, exact=False),
            opt_in_tag=e.tag("REMEDIATION_OPT_IN_TAG", None, exact=True),
            dry_run=e.boolean("REMEDIATION_DRY_RUN", False),
            approval_required=e.boolean("REMEDIATION_APPROVAL_REQUIRED", False),
            approval_timeout_minutes=e.integer("REMEDIATION_APPROVAL_TIMEOUT_MINUTES", 240, 1, 7 * 24 * 60),
            repair_policy_missing=e.boolean("REMEDIATION_REPAIR_POLICY_MISSING", False),
            blast_radius_max_vms=e.integer("REMEDIATION_BLAST_RADIUS_MAX_VMS", 5, 1, 10000),
            blast_radius_max_percent=e.number("REMEDIATION_BLAST_RADIUS_MAX_PERCENT", 10.0, 0.0, 100.0),
            blast_radius_window_minutes=e.integer("REMEDIATION_BLAST_RADIUS_WINDOW_MINUTES", 60, 1, 30 * 24 * 60),
            retry_after_failure_hours=e.integer("REMEDIATION_RETRY_AFTER_FAILURE_HOURS", 24, 0, 30 * 24),
            max_concurrent_repairs=e.integer("REMEDIATION_MAX_CONCURRENT_REPAIRS", 3, 1, 1000),
            sweep_concurrency=e.integer("REMEDIATION_SWEEP_CONCURRENCY", 8, 1, 256),
            heartbeat_workspace_ids=tuple(
                w.lower() for w in e.csv("REMEDIATION_HEARTBEAT_WORKSPACE_IDS", _guid_item("a workspace GUID"))
            ),
            heartbeat_stale_minutes=e.integer("REMEDIATION_HEARTBEAT_STALE_MINUTES", 15, 1, 7 * 24 * 60),
            max_payload_bytes=e.integer("REMEDIATION_MAX_PAYLOAD_BYTES", 1048576, 1024, 64 * 1024 * 1024),
            storage_connection=storage_connection,
            storage_table_url=storage_table_url,
            incident_table=e.pattern(
                "REMEDIATION_INCIDENT_TABLE", "SelinuxIncidents", _TABLE_NAME,
                "a table name: 3-63 letters and digits, starting with a letter",
            ),
            arm_endpoint=e.url("REMEDIATION_ARM_ENDPOINT", "https://management.azure.com"),
            logs_endpoint=e.url("REMEDIATION_LOGS_ENDPOINT", "https://api.loganalytics.io/v1"),
            ca_bundle=e.existing_file("REMEDIATION_CA_BUNDLE"),
            rescue_subnet_id=e.optional_pattern(
                "REMEDIATION_RESCUE_SUBNET_ID", _SUBNET_ID,
                "a subnet resource id: /subscriptions/<guid>/resourceGroups/<rg>/providers/"
                "Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>",
            ),
            rescue_vm_size=e.pattern(
                "REMEDIATION_RESCUE_VM_SIZE", "Standard_D2s_v5", _VM_SIZE, "a VM size such as Standard_D2s_v5"
            ),
            rescue_image=e.image("REMEDIATION_RESCUE_IMAGE", _DEFAULT_IMAGE),
            poll_interval_seconds=e.integer("REMEDIATION_POLL_INTERVAL_SECONDS", 15, 1, 3600),
            verify_timeout_minutes=e.integer("REMEDIATION_VERIFY_TIMEOUT_MINUTES", 15, 1, 24 * 60),
            serial_tail_bytes=e.integer("REMEDIATION_SERIAL_TAIL_BYTES", _default_tail_bytes(), 4096, 16 * 1024 * 1024),
        )


def _default_tail_bytes() -> int:
    try:
        from remediation import detect  # read on demand: optional at settings time
    except ImportError:
        return DEFAULT_SERIAL_TAIL_BYTES
    value = getattr(detect, "DEFAULT_TAIL_BYTES", DEFAULT_SERIAL_TAIL_BYTES)
    return value if isinstance(value, int) and value > 0 else DEFAULT_SERIAL_TAIL_BYTES


def _guid_item(what: str) -> Callable[[str, str], str]:
    def check(name: str, item: str) -> str:
        if not _GUID.match(item):
            raise SettingsError(f"{name}: {item[:80]!r} is not {what} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
        return item

    return check


def _rg_item(name: str, item: str) -> str:
    if not _RESOURCE_GROUP.match(item) or item.endswith("."):
        raise SettingsError(
            f"{name}: {item[:100]!r} is not a resource group name (1-90 letters, digits, '_', '-', '.', '(', ')')"
        )
    return item


def _storage(e: _Env) -> tuple[str | None, str | None]:
    connection = e.raw("REMEDIATION_STORAGE_CONNECTION")
    table_url = e.raw("REMEDIATION_STORAGE_TABLE_URL")
    if connection and table_url:
        raise SettingsError(
            "set only one of REMEDIATION_STORAGE_CONNECTION (connection string) and REMEDIATION_STORAGE_TABLE_URL "
            "(table endpoint for a managed identity)"
        )
    if table_url:
        return None, e.url("REMEDIATION_STORAGE_TABLE_URL", table_url)
    name = "REMEDIATION_STORAGE_CONNECTION"
    if not connection:
        connection = e.raw("AzureWebJobsStorage")
        name = "AzureWebJobsStorage"
    if connection:
        _check_connection_string(name, connection)
        return connection, None
    service_uri = e.raw("AzureWebJobsStorage__tableServiceUri")
    if service_uri:
        return None, e.url("AzureWebJobsStorage__tableServiceUri", service_uri)
    account = e.raw("AzureWebJobsStorage__accountName")
    if account:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account):
            raise SettingsError(
                "AzureWebJobsStorage__accountName: not a storage account name (3-24 lowercase letters, digits)"
            )
        return None, f"https://{account}.table.core.windows.net"
    return None, None


def _check_connection_string(name: str, value: str) -> None:
    # Never echo the value: it holds an account key.
    if value.strip().lower() == "usedevelopmentstorage=true":
        return
    keys = set()
    for part in value.split(";"):
        if not part.strip():
            continue
        key, sep, _ = part.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{name}: not a storage connection string (expected key=value pairs separated by ';')")
        keys.add(key.strip().lower())
    if not keys & {"accountname", "tableendpoint", "sharedaccesssignature"}:
        raise SettingsError(f"{name}: storage connection string names no AccountName or TableEndpoint")


class _Env:
    """Typed readers over a mapping of settings; each error names the setting and what it expects."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise SettingsError(f"{name}: expected a string value")
        value = value.strip()
        return value or None

    def csv(self, name: str, check: Callable[[str, str], str]) -> list[str]:
        value = self.raw(name)
        if value is None:
            return []
        items: list[str] = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            checked = check(name, item)
            if checked.lower() not in {i.lower() for i in items}:
                items.append(checked)
        return items

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{name}: {value[:40]!r} is not a boolean (use true/false, 1/0 or yes/no)")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"[+-]?\d{1,12}", value):
            raise SettingsError(f"{name}: {value[:40]!r} is not a whole number (expected {low}..{high})")
        number = int(value)
        if not low <= number <= high:
            raise SettingsError(f"{name}: {number} is out of range (expected {low}..{high})")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"[+-]?(\d{1,12}(\.\d{0,6})?|\.\d{1,6})", value):
            raise SettingsError(f"{name}: {value[:40]!r} is not a number (expected {low:g}..{high:g})")
        number = float(value)
        if not low < number <= high:
            raise SettingsError(f"{name}: {number:g} is out of range (expected more than {low:g}, at most {high:g})")
        return number

    def tag(self, name: str, default: T, *, exact: bool) -> TagRule | T:
        value = self.raw(name)
        if value is None:
            return default
        tag_name, sep, tag_value = value.partition("=")
        tag_name, tag_value = tag_name.strip(), tag_value.strip()
        if not sep or not tag_name or not tag_value:
            raise SettingsError(
                f"{name}: {value[:80]!r} is not a tag (expected name=value, e.g. selinux-remediation=off)"
            )
        if not _TAG_NAME.match(tag_name) or len(tag_value) > 256:
            raise SettingsError(
                f"{name}: {tag_name[:80]!r} is not a valid tag (name without < > % & \\ ? / , up to 512 "
                "characters; value up to 256)"
            )
        return TagRule(tag_name, tag_value, exact_value=exact)

    def pattern(self, name: str, default: str, regex: re.Pattern[str], what: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not regex.match(value):
            raise SettingsError(f"{name}: {value[:100]!r} is not {what}")
        return value

    def optional_pattern(self, name: str, regex: re.Pattern[str], what: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not regex.match(value):
            raise SettingsError(f"{name}: {value[:200]!r} is not {what}")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise SettingsError(
                f"{name}: {value[:200]!r} is not an https URL (bearer tokens are only sent over TLS; "
                "use REMEDIATION_CA_BUNDLE to trust a local endpoint's certificate)"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise SettingsError(f"{name}: the URL must not carry a query, fragment or credentials")
        return value.rstrip("/")

    def existing_file(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not Path(value).is_file():
            raise SettingsError(f"{name}: {value[:200]!r} does not exist or is not a file (expected a PEM CA bundle)")
        return value

    def image(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        parts = value.split(":")
        if len(parts) != 4 or not all(_IMAGE_PART.match(p) for p in parts):
            raise SettingsError(
                f"{name}: {value[:200]!r} is not an image reference (expected publisher:offer:sku:version, "
                "e.g. Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest)"
            )
        return value


def load_local_settings(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `Values` of a Functions local.settings.json, as strings; InvalidInput says what is wrong."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"{file}: no such file (expected a Functions local.settings.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{file}: cannot read: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{file}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Values"), dict):
        raise InvalidInput(f"{file}: expected an object with a \"Values\" object of app settings")
    values: dict[str, str] = {}
    for key, value in doc["Values"].items():
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            values[key] = str(value)
        elif value is None:
            continue
        else:
            raise InvalidInput(f"{file}: Values.{key} must be a string, number or boolean")
    return values
