"""Migration models: downtime and bytes moved when a service changes site.

All functions are vectorised over services: every argument is an array of
the same length (or a scalar), and nothing loops over services in Python.

- cold: stop at the source, copy state (and, unless layers are prefetched,
  the image layers the target lacks), start at the target. The only mode
  Kata can use, since it cannot checkpoint.
- pre-copy (runc with CRIU): copy memory while the service runs, then copy
  what was dirtied in rounds until it is small; downtime is the last round
  plus checkpoint and restore.
- post-copy (runc with CRIU): freeze, move the execution state, restore and
  pull memory pages on demand; short downtime, then degraded service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIGRATION_MODES: tuple[str, ...] = ("cold", "precopy", "postcopy")
"""Mode names; a mode's index here is its code in arrays."""

COLD, PRECOPY, POSTCOPY = 0, 1, 2

PRECOPY_MAX_ROUNDS = 8
"""Live copy rounds before pre-copy gives up and stops the service anyway."""

PRECOPY_STOP_MB = 1.0
"""Pre-copy stops copying live once a round would move less than this."""

POSTCOPY_DEGRADED_WEIGHT = 0.5
"""Share of post-copy's page-pull time counted as downtime.

While pages are pulled on demand the service answers, but slowly; counting
half of that time as lost is a modelling choice, not a measurement.
"""


@dataclass(frozen=True)
class MigrationEffect:
    """What a set of migrations costs, one entry per service."""

    downtime_s: np.ndarray
    """Time the service is unreachable (plus weighted degraded time)."""
    moved_mb: np.ndarray
    """Bytes sent over the network, in megabytes."""


def transfer_s(size_mb: np.ndarray, bandwidth_mbps: np.ndarray) -> np.ndarray:
    """Return the time to send ``size_mb`` megabytes at ``bandwidth_mbps``."""
    return np.asarray(size_mb) * 8.0 / np.asarray(bandwidth_mbps)


def migration_effect(
    *,
    mode: np.ndarray,
    state_mb: np.ndarray,
    missing_layers_mb: np.ndarray,
    bandwidth_mbps: np.ndarray,
    dirty_mb_per_s: np.ndarray,
    start_s: np.ndarray,
    stop_s: np.ndarray,
    checkpoint_s: np.ndarray,
    restore_s: np.ndarray,
    prefetch_layers: bool,
    checkpoint_s_per_mb: np.ndarray | float = 0.0,
    restore_s_per_mb: np.ndarray | float = 0.0,
    transfer_overhead_s: np.ndarray | float = 0.0,
    transfer_s_per_mb: np.ndarray | float = 0.0,
) -> MigrationEffect:
    """Return the downtime and bytes of moving each service once.

    Args:
        mode: Migration mode code per service (see ``MIGRATION_MODES``).
        state_mb: Memory and volume state to move.
        missing_layers_mb: Image layers absent at the target.
        bandwidth_mbps: Bottleneck bandwidth from source to target.
        dirty_mb_per_s: Rate at which the running service dirties memory.
        start_s: Runtime start time at the target.
        stop_s: Runtime stop time at the source.
        checkpoint_s: Fixed checkpoint (freeze and dump) time.
        restore_s: Fixed restore time.
        prefetch_layers: Whether cold moves pull missing layers before
            stopping the service (make-before-break) rather than during the
            outage.
        checkpoint_s_per_mb: Checkpoint time per MB dumped.
        restore_s_per_mb: Restore time per MB restored.
        transfer_overhead_s: Fixed time of a state transfer beyond the wire.
        transfer_s_per_mb: Time per MB of state beyond the wire.
    """
    mode = np.asarray(mode)
    layers_s = transfer_s(missing_layers_mb, bandwidth_mbps)

    def copy_s(size_mb: np.ndarray) -> np.ndarray:
        wire_s = transfer_s(size_mb, bandwidth_mbps)
        return transfer_overhead_s + wire_s + np.asarray(size_mb) * transfer_s_per_mb

    state_s = copy_s(state_mb)

    # cold: the outage spans stop, state copy and start
    cold_s = stop_s + state_s + start_s + (0.0 if prefetch_layers else layers_s)

    # pre-copy: rounds shrink geometrically by dirty rate over copy rate
    last_mb, live_mb = _precopy_rounds(state_mb, bandwidth_mbps, dirty_mb_per_s)
    freeze_s = checkpoint_s + last_mb * checkpoint_s_per_mb
    thaw_s = restore_s + last_mb * restore_s_per_mb
    precopy_s = freeze_s + copy_s(last_mb) + thaw_s

    # post-copy: short freeze, then the whole state is pulled while degraded
    postcopy_s = checkpoint_s + restore_s + POSTCOPY_DEGRADED_WEIGHT * state_s

    downtime_s = np.select(
        [mode == COLD, mode == PRECOPY], [cold_s, precopy_s], postcopy_s
    )
    state_moved_mb = np.where(mode == PRECOPY, live_mb + last_mb, state_mb)
    return MigrationEffect(
        downtime_s=np.asarray(downtime_s, dtype=np.float64),
        moved_mb=np.asarray(state_moved_mb + missing_layers_mb, dtype=np.float64),
    )


def _precopy_rounds(
    state_mb: np.ndarray, bandwidth_mbps: np.ndarray, dirty_mb_per_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (stop-and-copy size, bytes copied live) of iterative pre-copy.

    Round k copies ``state * r**k`` with ``r`` the dirty rate over the copy
    rate; when ``r >= 1`` rounds never shrink and every round is a full copy.
    """
    state_mb = np.asarray(state_mb, dtype=np.float64)
    rate_mb_per_s = np.asarray(bandwidth_mbps, dtype=np.float64) / 8.0
    ratio = np.minimum(np.asarray(dirty_mb_per_s) / rate_mb_per_s, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.log(PRECOPY_STOP_MB / state_mb) / np.log(ratio)
    # a service that dirties nothing needs one live round, then an empty stop
    converging = np.where(
        ratio > 0.0,
        np.clip(np.ceil(np.nan_to_num(needed, nan=0.0, posinf=0.0)), 0, None),
        1.0,
    )
    rounds = np.where(
        (ratio < 1.0) & (state_mb > PRECOPY_STOP_MB),
        converging,
        PRECOPY_MAX_ROUNDS,
    )
    rounds = np.minimum(rounds, PRECOPY_MAX_ROUNDS)
    last_mb = state_mb * ratio**rounds
    # live copies are rounds 0..rounds-1: a geometric series
    with np.errstate(divide="ignore", invalid="ignore"):
        series = np.where(ratio < 1.0, (1.0 - ratio**rounds) / (1.0 - ratio), rounds)
    return last_mb, state_mb * series
