"""Calibration: fit the simulator's runc profile to migrations on real hosts.

A busybox service whose state is a file of a chosen size in its volume is
moved back and forth between two hosts, cold and live, several times per
size. Each migration reports its downtime and the time of its steps
(freeze, send, start or restore). The fit, per term of the simulator's
migration model (:func:`mecrl.migration.migration_effect`):

| profile field | from |
|---|---|
| ``stop_s`` | median freeze (pause) time of cold moves |
| ``start_s`` | median start time of cold moves |
| ``checkpoint_s``, ``checkpoint_s_per_mb`` | line through live checkpoint times |
| ``restore_s``, ``restore_s_per_mb`` | line through live restore times |
| ``transfer_overhead_s``, ``transfer_s_per_mb`` | line through what is |
| | left of each cold downtime after those steps and the wire time |
| live-only extra (dump files, checkpoint image) | added to the |
| | checkpoint terms, so that live moves fit too |

A live move here is CRIU's stop-and-copy (no pre-copy on this kind of
kernel): in the simulator it is a ``precopy`` class whose dirty rate is at
least the copy rate, so every round is a full copy and the downtime is one
checkpoint, one copy of the state and one restore. The service's memory is
small next to its volume, so the per-MB checkpoint and restore rates come
out near zero for it; a service with a large memory would show them.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mecrl.hosts.client import AgentError
from mecrl.hosts.migrate import HEALTH_WAIT_S, Host, Migrator, MoveReport
from mecrl.migration import COLD, PRECOPY, migration_effect
from mecrl.runtimes import DEFAULT_PROFILES, RuntimeProfile

logger = logging.getLogger(__name__)

SERVICE = "calibrate"
ADDRESS = "10.77.255.254"
"""Service address of the calibration service, out of the episodes' way."""

STOP_AND_COPY_DIRTY = 1e9
"""A dirty rate above any copy rate: pre-copy becomes stop-and-copy."""


def service_args(state_mb: float) -> list[str]:
    """Return the command of a counter whose volume holds ``state_mb`` MB.

    The state file is written once; a restart at the target finds it moved.
    """
    size = int(state_mb * 1e6)
    script = (
        f"[ -f /data/blob ] || head -c {size} /dev/urandom > /data/blob; "
        "exec nc -ll -p 7000 -e /bin/sh -c "
        "'while read l; do n=$(($(cat /data/count 2>/dev/null || echo 0)+1)); "
        "echo $n > /data/count; echo $n; done'"
    )
    return ["sh", "-c", script]


@dataclass(frozen=True)
class Sample:
    """One measured migration."""

    mode: str
    """``cold`` or ``live``."""
    state_mb: float
    """Size of the service's state file."""
    downtime_s: float
    """Measured downtime."""
    freeze_s: float
    """Pause (cold) or checkpoint (live) time."""
    send_s: float
    """State transfer time as the source timed it."""
    start_s: float
    """Start (cold) or restore (live) time at the target."""
    state_bytes: int
    """Size of the state archive sent."""

    @classmethod
    def of(cls, report: MoveReport, state_mb: float) -> Sample:
        """Return the sample of a migration's report."""
        steps = report.steps_s
        return cls(
            report.mode,
            state_mb,
            report.downtime_s,
            steps["freeze"],
            steps["send"],
            steps["start"],
            report.state_bytes,
        )


def measure(
    migrator: Migrator,
    pair: tuple[str, str],
    *,
    image: str,
    sizes_mb: Sequence[float],
    modes: Sequence[str],
    repeats: int,
) -> list[Sample]:
    """Run ``repeats`` migrations per size and mode between the two hosts.

    The service goes back and forth, so each host is source as often as
    target.

    Raises:
        AgentError: If a migration fails (it is rolled back first).
    """
    samples = []
    for state_mb in sizes_mb:
        for mode in modes:
            where = _deploy(migrator, pair[0], image, state_mb)
            try:
                for _ in range(repeats):
                    there = pair[1] if where == pair[0] else pair[0]
                    spec = _spec(image, state_mb)
                    report = migrator.migrate(spec, where, there, mode)
                    if not report.ok:
                        raise AgentError(
                            migrator.hosts[there].agent.url,
                            0,
                            f"calibration move failed: {report.error}",
                        )
                    samples.append(Sample.of(report, state_mb))
                    logger.info("%s %.1f MB: %.3f s", mode, state_mb, report.downtime_s)
                    where = there
            finally:
                _remove(migrator.hosts[where])
    return samples


def _spec(image: str, state_mb: float) -> dict[str, Any]:
    return {
        "service": SERVICE,
        "image": image,
        "args": service_args(state_mb),
        "port": 7000,
        "address": ADDRESS,
    }


def _deploy(migrator: Migrator, name: str, image: str, state_mb: float) -> str:
    host = migrator.hosts[name]
    host.agent.post("/v1/services", _spec(image, state_mb))
    state = host.agent.get(f"/v1/services/{SERVICE}?wait_s={HEALTH_WAIT_S}")
    if not state["healthy"]:
        raise AgentError(host.agent.url, 0, "calibration service never got healthy")
    # the state file is written before the port opens
    time.sleep(0.1)
    migrator.switch(ADDRESS, host)
    return name


def _remove(host: Host) -> None:
    host.agent.delete(f"/v1/services/{SERVICE}")


def _line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope), both clipped at 0 (no negative time)."""
    if len(set(x)) < 2:
        return max(0.0, statistics.median(y)), 0.0
    slope, intercept = np.polyfit(np.asarray(x), np.asarray(y), 1)
    if slope < 0.0:
        return max(0.0, statistics.median(y)), 0.0
    if intercept < 0.0:
        # through the origin instead
        slope = float(np.dot(x, y) / np.dot(x, x))
        return 0.0, max(0.0, slope)
    return float(intercept), float(slope)


def wire_s(state_mb: float, bandwidth_mbps: float) -> float:
    """Time the state's bytes take on the link."""
    return state_mb * 8.0 / bandwidth_mbps


def fit(
    samples: Sequence[Sample],
    bandwidth_mbps: float,
    base: RuntimeProfile = DEFAULT_PROFILES["runc"],
) -> RuntimeProfile:
    """Return ``base`` with the timing fields fitted to ``samples``.

    Fields with no sample of their mode keep their value in ``base``.
    """
    cold = [s for s in samples if s.mode == "cold"]
    live = [s for s in samples if s.mode == "live"]
    fields: dict[str, Any] = {}
    if cold:
        fields["stop_s"] = statistics.median(s.freeze_s for s in cold)
        fields["start_s"] = statistics.median(s.start_s for s in cold)
    if live:
        sizes = [s.state_mb for s in live]
        fields["checkpoint_s"], fields["checkpoint_s_per_mb"] = _line(
            sizes, [s.freeze_s for s in live]
        )
        fields["restore_s"], fields["restore_s_per_mb"] = _line(
            sizes, [s.start_s for s in live]
        )
    profile = dataclasses.replace(base, **fields)

    # what the steps and the wire leave of a cold move is the transfer's cost
    basis = cold or live
    overhead_s, per_mb_s = _line(
        [s.state_mb for s in basis],
        [_residual_s(profile, s, bandwidth_mbps) for s in basis],
    )
    profile = dataclasses.replace(
        profile, transfer_overhead_s=overhead_s, transfer_s_per_mb=per_mb_s
    )
    if not (cold and live):
        return profile

    # live moves spend more (the dump's files, the checkpoint image): counted
    # in the live-only checkpoint terms, so that both modes fit
    extra = [
        _residual_s(profile, s, bandwidth_mbps)
        - profile.transfer_overhead_s
        - profile.transfer_s_per_mb * s.state_mb
        for s in live
    ]
    sizes = [s.state_mb for s in live]
    slope, intercept = (
        np.polyfit(sizes, extra, 1) if len(set(sizes)) > 1 else (0.0, np.median(extra))
    )
    return dataclasses.replace(
        profile,
        checkpoint_s=max(0.0, profile.checkpoint_s + float(intercept)),
        checkpoint_s_per_mb=max(0.0, profile.checkpoint_s_per_mb + float(slope)),
    )


def _residual_s(
    profile: RuntimeProfile, sample: Sample, bandwidth_mbps: float
) -> float:
    """Downtime left after the modelled steps and the wire time."""
    return (
        sample.downtime_s
        - _steps_model_s(profile, sample.mode, sample.state_mb)
        - wire_s(sample.state_mb, bandwidth_mbps)
    )


def _steps_model_s(profile: RuntimeProfile, mode: str, state_mb: float) -> float:
    if mode == "cold":
        return profile.stop_s + profile.start_s
    return (
        profile.checkpoint_s
        + profile.checkpoint_s_per_mb * state_mb
        + profile.restore_s
        + profile.restore_s_per_mb * state_mb
    )


def predict_s(
    profile: RuntimeProfile, mode: str, state_mb: float, bandwidth_mbps: float
) -> float:
    """Return the simulator's downtime for one move (layers already present)."""
    effect = migration_effect(
        mode=np.array([COLD if mode == "cold" else PRECOPY]),
        state_mb=np.array([state_mb]),
        missing_layers_mb=np.array([0.0]),
        bandwidth_mbps=np.array([bandwidth_mbps]),
        dirty_mb_per_s=np.array([STOP_AND_COPY_DIRTY]),
        start_s=np.array([profile.start_s]),
        stop_s=np.array([profile.stop_s]),
        checkpoint_s=np.array([profile.checkpoint_s]),
        restore_s=np.array([profile.restore_s]),
        prefetch_layers=True,
        checkpoint_s_per_mb=profile.checkpoint_s_per_mb,
        restore_s_per_mb=profile.restore_s_per_mb,
        transfer_overhead_s=profile.transfer_overhead_s,
        transfer_s_per_mb=profile.transfer_s_per_mb,
    )
    return float(effect.downtime_s[0])


@dataclass(frozen=True)
class Row:
    """Measured and predicted downtime of one size and mode."""

    mode: str
    state_mb: float
    runs: int
    measured_s: float
    """Median measured downtime."""
    before_s: float
    """The simulator's prediction with the default profile."""
    after_s: float
    """The simulator's prediction with the calibrated profile."""
    fitted: bool = True
    """Whether these moves were fitted, or held out to check the fit."""

    @property
    def error_after(self) -> float:
        """Relative error of the calibrated prediction."""
        return abs(self.after_s - self.measured_s) / self.measured_s


def table(
    samples: Sequence[Sample],
    before: RuntimeProfile,
    after: RuntimeProfile,
    bandwidth_mbps: float,
    held_out: Sequence[float] = (),
) -> list[Row]:
    """Return one row per mode and size, in the order measured.

    Sizes in ``held_out`` are marked as not fitted.
    """
    keys = list(dict.fromkeys((s.mode, s.state_mb) for s in samples))
    rows = []
    for mode, state_mb in keys:
        runs = [
            s.downtime_s for s in samples if (s.mode, s.state_mb) == (mode, state_mb)
        ]
        rows.append(
            Row(
                mode,
                state_mb,
                len(runs),
                statistics.median(runs),
                predict_s(before, mode, state_mb, bandwidth_mbps),
                predict_s(after, mode, state_mb, bandwidth_mbps),
                fitted=state_mb not in held_out,
            )
        )
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """Return the rows as a Markdown table."""
    lines = [
        "| mode | state MB | runs | measured s | sim before s | sim after s "
        "| error after | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.state_mb:g} | {r.runs} | {r.measured_s:.3f} | "
            f"{r.before_s:.3f} | {r.after_s:.3f} | {100 * r.error_after:.1f} % | "
            f"{'fitted' if r.fitted else 'held out'} |"
        )
    return "\n".join(lines)


FITTED: tuple[str, ...] = (
    "start_s",
    "stop_s",
    "checkpoint_s",
    "checkpoint_s_per_mb",
    "restore_s",
    "restore_s_per_mb",
    "transfer_overhead_s",
    "transfer_s_per_mb",
)
"""The runtime profile fields a calibration fits and writes."""


def write(path: str | Path, profile: RuntimeProfile, source: str) -> None:
    """Write a calibration file that :func:`mecrl.runtimes.load_profiles` reads."""
    timing = {name: round(float(getattr(profile, name)), 6) for name in FITTED}
    data = {"source": source, "runtimes": {"runc": timing}}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
