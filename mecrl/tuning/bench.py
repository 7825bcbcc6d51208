"""Throughput of sweeps: trials per hour and timesteps/s per trial.

Runs the same small sweep (MaskablePPO on ``wang-1d``, one trial per seed)
with 1 and then 2 CPUs per trial, on a local Ray or on the cluster at an
address. Trials per hour counts the sweep's wall time, Ray's scheduling and
each trial's start-up included; timesteps/s per trial counts a trial's
training time (its evaluations included) as ``mecrl train`` reports it.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from typing import Any

import ray

from mecrl.bench import Figure
from mecrl.tuning.config import EarlyStopping, Resources, SweepConfig, resolve_sweep
from mecrl.tuning.experiment import ray_session, run_sweep

logger = logging.getLogger(__name__)


def bench_train_config(timesteps: int) -> dict[str, Any]:
    """Return the training config every benchmark trial runs."""
    return {
        "algorithm": "maskable_ppo",
        "scenario": "wang-1d",
        "env": {"kind": "single", "n_envs": 8},
        "total_timesteps": timesteps,
        "hyperparameters": {"n_steps": 256, "batch_size": 256},
        # evaluations at the start and at the end only
        "eval": {
            "freq_steps": timesteps,
            "services": 10,
            "seeds": [0],
            "baselines": ["never"],
        },
        "checkpoint_freq_steps": timesteps,
    }


def tune_figures(
    quick: bool = False, address: str | None = None, cpus: tuple[int, ...] = (1, 2)
) -> list[Figure]:
    """Measure sweeps with each of ``cpus`` CPUs per trial.

    A setting that no node of the cluster can hold is skipped, with a
    warning.

    Args:
        quick: Two trials of 4,096 timesteps instead of four of 20,480.
        address: ``HOST:PORT`` of a Ray cluster; None for a local Ray.
        cpus: CPUs per trial to measure.
    """
    timesteps, trials = (4_096, 2) if quick else (20_480, 4)
    figures = []
    with (
        ray_session(address),
        tempfile.TemporaryDirectory(prefix="mecrl-bench-") as root,
    ):
        largest = max(
            float(node["Resources"].get("CPU", 0.0))
            for node in ray.nodes()
            if node["Alive"]
        )
        for n_cpus in cpus:
            if n_cpus > largest:
                logger.warning(
                    "skipping %d CPUs per trial: the largest node has %g",
                    n_cpus,
                    largest,
                )
                continue
            config = SweepConfig(
                name=f"bench-{n_cpus}cpu",
                train=bench_train_config(timesteps),
                search_space={"seed": {"grid": list(range(trials))}},
                resources=Resources(cpus=n_cpus),
                early_stopping=EarlyStopping(enabled=False),
                storage=root,
            )
            start = time.perf_counter()
            result = run_sweep(resolve_sweep(config), export_root="", verbose=0)
            wall_s = time.perf_counter() - start
            rates = [t.timesteps / t.wall_s for t in result.trials if t.wall_s > 0]
            figures += [
                Figure(
                    f"tune, {n_cpus} CPU(s) per trial, {trials} trials of "
                    f"{timesteps:,} timesteps, trials/hour",
                    len(result.trials) / wall_s * 3600,
                    "trials/hour",
                ),
                Figure(
                    f"tune, {n_cpus} CPU(s) per trial, timesteps/s per trial (median)",
                    statistics.median(rates) if rates else float("nan"),
                    "timesteps/s",
                ),
            ]
    return figures
