"""Fault plan and latency model of the local Azure.

The fault plan decides, per request, whether ARM misbehaves the way it does in production: throttling
(429 with Retry-After), an internal error (500), a dropped connection, or a long-running operation that
ends in Failed. It is seeded, so a run with the same seed and the same request order sees the same faults.

The latency model gives each long-running operation a duration. The figures are typical durations seen
when driving Azure by hand and in public troubleshooting write-ups (order of magnitude, not a service
level): they are not measured here. All of them are multiplied by `time_scale` (0.001 in tests).
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Typical durations in seconds at time_scale 1, with where the figure comes from.
TYPICAL_SECONDS: dict[str, float] = {
    # Copy of a 30 GB managed OS disk in the same region: about a minute (the platform copies lazily,
    # the disk is usable once the copy operation reports Succeeded).
    "disk_copy": 60.0,
    "snapshot_create": 30.0,
    "disk_create_empty": 10.0,
    "disk_update": 5.0,
    "disk_delete": 10.0,
    # VM creation from a marketplace image: 1-2 minutes until provisioning succeeds.
    "vm_create": 90.0,
    "vm_update": 20.0,
    # Swapping the OS disk of a deallocated VM is a model update: about half a minute.
    "vm_os_disk_swap": 30.0,
    "vm_deallocate": 45.0,
    "vm_power_off": 20.0,
    # Start returns once the hypervisor runs the VM; the guest boots afterwards.
    "vm_start": 30.0,
    "vm_delete": 60.0,
    # Run Command: the extension handler takes ~20-40 s before the script runs.
    "run_command": 30.0,
    "nic_create": 5.0,
    "nic_delete": 10.0,
    "snapshot_delete": 10.0,
    # Time the ARM front door takes to answer a read and a write.
    "read": 0.05,
    "write": 0.3,
}

# The poll interval ARM suggests in Retry-After on long-running operations.
RETRY_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class FaultRates:
    """Probabilities (0..1) of each fault for one kind of request, and extra latency in seconds."""

    throttle: float = 0.0
    server_error: float = 0.0
    connection_reset: float = 0.0
    lro_failure: float = 0.0
    extra_latency: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> FaultRates:
        known = {"throttle", "server_error", "connection_reset", "lro_failure", "extra_latency"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown fault kinds {sorted(unknown)} (known: {sorted(known)})")
        values: dict[str, float] = {}
        for key, value in data.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{where}.{key}: expected a number, got {value!r}")
            if key != "extra_latency" and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{where}.{key}: a probability must be between 0 and 1, got {value}")
            if key == "extra_latency" and float(value) < 0:
                raise ValueError(f"{where}.{key}: latency cannot be negative")
            values[key] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class Decision:
    """What the fault plan decided for one request."""

    fault: str | None = None  # "throttle" | "server_error" | "connection_reset" | None
    lro_failure: bool = False
    extra_latency: float = 0.0


NO_FAULT = Decision()


@dataclass
class FaultPlan:
    """Seeded per-operation fault probabilities.

    `rates` maps an operation name ("virtualMachines.get"), a category ("read", "write", "lro") or "*"
    to FaultRates; the most specific entry wins. Internal endpoints (/_localazure) never fail.
    """

    rates: dict[str, FaultRates] = field(default_factory=dict)
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def none(cls) -> FaultPlan:
        return cls({}, 0)

    @classmethod
    def uniform(cls, probability: float, seed: int = 0) -> FaultPlan:
        """One knob: throttling at p, 500s at p/2, resets and failed operations at p/4 each."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fault probability must be between 0 and 1, got {probability}")
        p = probability
        return cls(
            {"*": FaultRates(throttle=p, server_error=p / 2, connection_reset=p / 4, lro_failure=p / 4)}, seed
        )

    @classmethod
    def from_spec(cls, spec: str | dict[str, Any] | FaultPlan | None, seed: int = 0) -> FaultPlan:
        """A plan from a probability ("0.05"), a JSON file path, a dict, or None (no faults)."""
        if spec is None:
            return cls.none()
        if isinstance(spec, FaultPlan):
            return spec
        if isinstance(spec, dict):
            return cls({k: FaultRates.from_dict(v, f"faults[{k!r}]") for k, v in spec.items()}, seed)
        try:
            return cls.uniform(float(spec), seed)
        except ValueError as exc:
            if "between 0 and 1" in str(exc):
                raise
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--faults: {spec!r} is neither a probability (0..1) nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--faults: {spec} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"--faults: {spec} must map operation names to {{fault: probability}} objects")
        return cls.from_spec(data, seed)

    def rates_for(self, operation: str, category: str, lro: bool) -> FaultRates:
        for key in (operation, "lro" if lro else "", category, "*"):
            if key and key in self.rates:
                return self.rates[key]
        return FaultRates()

    def decide(self, operation: str, category: str, lro: bool) -> Decision:
        """Roll the dice for one request (thread-safe, deterministic for a given request order)."""
        rates = self.rates_for(operation, category, lro)
        if rates == FaultRates():
            return NO_FAULT
        with self._lock:
            roll = self._rng.random()
            lro_roll = self._rng.random()
        fault: str | None = None
        edge = rates.throttle
        if roll < edge:
            fault = "throttle"
        elif roll < (edge := edge + rates.server_error):
            fault = "server_error"
        elif roll < edge + rates.connection_reset:
            fault = "connection_reset"
        return Decision(fault, lro and lro_roll < rates.lro_failure, rates.extra_latency)


@dataclass(frozen=True)
class LatencyModel:
    """Typical operation durations, compressed by time_scale."""

    time_scale: float = 1.0
    overrides: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time scale must be positive, got {self.time_scale}")

    def seconds(self, kind: str) -> float:
        """The scaled duration of an operation kind (KeyError for an unknown kind)."""
        base = self.overrides.get(kind, TYPICAL_SECONDS[kind])
        return base * self.time_scale

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def retry_after_header(self) -> str:
        """Retry-After for LRO responses. The SDK parses it as an integer on initial responses, so it is
        rounded; 0 makes the poller use the client's polling_interval."""
        return str(round(RETRY_AFTER_SECONDS * self.time_scale))

    def throttle_retry_after(self) -> str:
        """Retry-After for 429s: ARM says a few seconds; compressed like everything else."""
        value = 5.0 * self.time_scale
        return str(round(value)) if value >= 1 else f"{value:.3f}"
