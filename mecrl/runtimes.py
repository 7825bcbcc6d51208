"""Runtime profiles of the container runtimes a site can offer.

One table holds every timing and memory constant of runc and Kata
Containers, each with its source. A calibration file measured on real hosts
(YAML or TOML, ``{runtimes: {kata: {start_s: 1.4}}}``, as ``mecrl calibrate``
writes) replaces any of them. The per-MB and transfer terms are zero by
default: no published figure separates them from the fixed times.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mecrl.config import ConfigError, check, from_dict, load_file

RUNTIME_NAMES: tuple[str, ...] = ("runc", "kata")
"""Runtime names; a runtime's index in this tuple is its code in arrays."""

RUNC, KATA = 0, 1


@dataclass(frozen=True)
class RuntimeProfile:
    """Timing, memory and isolation figures of one container runtime."""

    start_s: float
    """Time to create and start a container from a present image."""
    stop_s: float
    """Time to stop a running container."""
    memory_overhead_mb: float
    """Memory the runtime adds to every service (the VM for Kata)."""
    checkpoint: bool
    """Whether a running service can be checkpointed (CRIU) for live moves."""
    checkpoint_s: float
    """Fixed freeze-and-dump time of a checkpoint, excluding memory copy."""
    restore_s: float
    """Fixed restore time of a checkpoint at the target."""
    exposure: float
    """Relative exposure to co-resident tenants (runc's shared kernel is 1)."""
    checkpoint_s_per_mb: float = 0.0
    """Checkpoint time per MB of state, on top of ``checkpoint_s``."""
    restore_s_per_mb: float = 0.0
    """Restore time per MB of state, on top of ``restore_s``."""
    transfer_overhead_s: float = 0.0
    """Fixed time of a state transfer beyond the wire: connection, archive,
    unpacking, the controller's requests and the address switch."""
    transfer_s_per_mb: float = 0.0
    """Time per MB of state beyond the wire time (packing and unpacking)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float):
                check(value >= 0.0, field.name, f"must be >= 0, got {value}")


# runc: ``ctr run -d`` took about 0.17 s on this project's hosts and published
# figures span 0.2 to 1.0 s; 0.5 s is a mid value. CRIU checkpoint of a small
# TCP server measured 0.12 to 0.26 s, restore 0.15 to 0.17 s (project hosts).
_RUNC = RuntimeProfile(
    start_s=0.5,
    stop_s=0.1,
    memory_overhead_mb=5.0,
    checkpoint=True,
    checkpoint_s=0.2,
    restore_s=0.16,
    exposure=1.0,
)

# kata: 1.2 to 2.5 s to start with QEMU (faster with Firecracker or Cloud
# Hypervisor); pod overhead 160 MiB in Kata's RuntimeClass (144 MiB measured
# per sandbox). Kata's limitations document: no checkpoint or restore, so a
# move is always a cold restart. A VM boundary between tenants cuts
# co-residency exposure; 0.2 is a modelling choice, not a measurement.
_KATA = RuntimeProfile(
    start_s=1.8,
    stop_s=0.3,
    memory_overhead_mb=160.0,
    checkpoint=False,
    checkpoint_s=0.0,
    restore_s=0.0,
    exposure=0.2,
)

DEFAULT_PROFILES: dict[str, RuntimeProfile] = {"runc": _RUNC, "kata": _KATA}


@dataclass(frozen=True)
class RuntimeTable:
    """Runtime profiles as arrays indexed by runtime code, for the hot path."""

    profiles: dict[str, RuntimeProfile]

    def column(self, name: str) -> np.ndarray:
        """Return field ``name`` of every runtime, indexed by runtime code."""
        return np.array([float(getattr(self.profiles[r], name)) for r in RUNTIME_NAMES])


def load_profiles(path: str | Path | None = None) -> RuntimeTable:
    """Return the default runtime profiles, overridden by a calibration file.

    Args:
        path: Optional YAML or TOML file with a ``runtimes`` mapping from a
            runtime name to the fields it replaces.

    Raises:
        ConfigError: If the file names an unknown runtime or field, or a bad
            value.
    """
    profiles = dict(DEFAULT_PROFILES)
    if path is None:
        return RuntimeTable(profiles)
    data = load_file(path)
    overrides = data.get("runtimes")
    if set(data) - {"runtimes", "source"}:
        extra = sorted(set(data) - {"runtimes", "source"})[0]
        raise ConfigError(extra, "unknown key; valid keys are: runtimes, source")
    if not isinstance(overrides, dict):
        raise ConfigError("runtimes", "expected a mapping of runtime name to fields")
    for name, fields in overrides.items():
        if name not in profiles:
            raise ConfigError(
                f"runtimes.{name}",
                f"unknown runtime; known: {', '.join(RUNTIME_NAMES)}",
            )
        merged: dict[str, Any] = dataclasses.asdict(profiles[name])
        if not isinstance(fields, dict):
            raise ConfigError(f"runtimes.{name}", "expected a mapping of fields")
        merged.update(fields)
        profiles[name] = from_dict(RuntimeProfile, merged, f"runtimes.{name}")
    return RuntimeTable(profiles)
