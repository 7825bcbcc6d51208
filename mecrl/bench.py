"""Throughput and memory benchmarks of the environments.

Figures are medians over repeats, measured side by side in one run; the
machine may be shared, so compare ratios within a run rather than absolute
figures across runs.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from mecrl.envs.fleet import FleetVectorEnv
from mecrl.envs.single import MigrationEnv
from mecrl.scenario import Scenario, load_config


@dataclass(frozen=True)
class Figure:
    """One measured figure."""

    name: str
    value: float
    unit: str


def _random_feasible(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Pick a uniformly random allowed action per row."""
    score = np.where(mask, rng.random(mask.shape), -1.0)
    return np.asarray(score.argmax(axis=-1))


def single_steps_per_s(scenario: str, steps: int, repeats: int) -> float:
    """Median steps per second of the single-service environment."""
    env = MigrationEnv(scenario)
    rng = np.random.default_rng(0)
    rates = []
    for r in range(repeats):
        env.reset(seed=r)
        elapsed = 0.0
        for _ in range(steps):
            action = _random_feasible(rng, env.action_masks()[None])[0]
            start = time.perf_counter()
            _, _, _, truncated, _ = env.step(action)
            elapsed += time.perf_counter() - start
            if truncated:
                env.reset()
        rates.append(steps / elapsed)
    return statistics.median(rates)


def fleet_service_steps_per_s(
    scenario: str, n_services: int, steps: int, repeats: int, coupled: bool
) -> float:
    """Median service-steps per second of the fleet vector environment."""
    env = FleetVectorEnv(n_services, scenario, coupled=coupled)
    rng = np.random.default_rng(0)
    rates = []
    for r in range(repeats):
        env.reset(seed=r)
        elapsed = 0.0
        for _ in range(steps):
            actions = _random_feasible(rng, env.action_masks())
            start = time.perf_counter()
            env.step(actions)
            elapsed += time.perf_counter() - start
        rates.append(n_services * steps / elapsed)
    return statistics.median(rates)


def step_time_by_length(
    scenario: str, lengths: tuple[int, ...], window: int
) -> dict[int, float]:
    """Median single-env step time (us) late in episodes of each length.

    Each episode runs to its end; its last ``window`` steps (all of them in
    shorter episodes) are timed one by one, so a cost growing with the slot
    index would show.
    """
    config = load_config(scenario)
    result = {}
    for length in lengths:
        env = MigrationEnv(Scenario(dataclasses.replace(config, episode_slots=length)))
        env.reset(seed=0)
        times = []
        for t in range(length):
            start = time.perf_counter()
            env.step(0)
            if t >= length - window:
                times.append(time.perf_counter() - start)
        result[length] = statistics.median(times) * 1e6
    return result


def bytes_per_service(scenario: str, small: int, large: int, steps: int) -> float:
    """Marginal traced memory per service of the fleet, after a few steps."""
    peaks = []
    for n in (small, large):
        gc.collect()
        tracemalloc.start()
        env = FleetVectorEnv(n, scenario)
        env.reset(seed=0)
        for _ in range(steps):
            env.step(np.zeros(n, dtype=np.int64))
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks.append(current)
        del env
    return (peaks[1] - peaks[0]) / (large - small)


def run(quick: bool = False) -> list[Figure]:
    """Run every benchmark; ``quick`` shrinks sizes for a smoke run."""
    repeats = 3 if quick else 5
    single_steps = 2_000 if quick else 20_000
    fleet_steps = 10 if quick else 50
    lengths = (100, 1_000) if quick else (100, 1_000, 10_000, 100_000)
    figures = [
        Figure(
            "single env (city-grid), steps/s",
            single_steps_per_s("city-grid", single_steps, repeats),
            "steps/s",
        ),
        Figure(
            "fleet env, 10,000 services (hex-2d, coupled), service-steps/s",
            fleet_service_steps_per_s("hex-2d", 10_000, fleet_steps, repeats, True),
            "service-steps/s",
        ),
        Figure(
            "fleet env, 10,000 services (hex-2d, uncoupled), service-steps/s",
            fleet_service_steps_per_s("hex-2d", 10_000, fleet_steps, repeats, False),
            "service-steps/s",
        ),
        Figure(
            "fleet env, 500 services (city-grid, coupled), service-steps/s",
            fleet_service_steps_per_s("city-grid", 500, fleet_steps, repeats, True),
            "service-steps/s",
        ),
    ]
    for length, micros in step_time_by_length("city-grid", lengths, 1000).items():
        figures.append(
            Figure(f"single env step time at episode length {length:,}", micros, "us")
        )
    figures.append(
        Figure(
            "fleet memory per service (hex-2d, 1,000 -> 10,000)",
            bytes_per_service("hex-2d", 1_000, 10_000, 3),
            "bytes",
        )
    )
    return figures


def training_steps_per_s(
    algorithm: str,
    env_kind: str,
    scenario: str,
    timesteps: int,
    hyperparameters: dict[str, float] | None = None,
) -> float:
    """Timesteps per second of training, one torch thread, no evaluation.

    The single-service environment runs 8 copies, the fleet 64 uncoupled
    services; the model is built as ``mecrl train`` builds it.
    """
    import torch

    from mecrl.config import from_dict
    from mecrl.train import TrainConfig, build_model, make_env

    config = from_dict(
        TrainConfig,
        {
            "algorithm": algorithm,
            "scenario": scenario,
            "env": {"kind": env_kind, "n_envs": 8, "n_services": 64, "coupled": False},
            "total_timesteps": timesteps,
            "hyperparameters": dict(hyperparameters or {}),
        },
    )
    torch.set_num_threads(1)
    env = make_env(config, Scenario(load_config(scenario)))
    model = build_model(config, env, tensorboard_dir=None)
    start = time.perf_counter()
    model.learn(timesteps)
    elapsed = time.perf_counter() - start
    env.close()
    return model.num_timesteps / elapsed


TRAINING_SETUPS: dict[str, dict[str, float]] = {
    "maskable_ppo": {"n_steps": 256, "batch_size": 256},
    "ppo": {"n_steps": 256, "batch_size": 256},
    "a2c": {},
    "dqn": {"learning_starts": 1000},
}
"""Hyperparameters of the training benchmark: SB3's defaults but for PPO's
rollout length (SB3's 2048 steps per environment would make the fleet's
rollouts 131,072 timesteps long) and DQN's warm-up."""


def training_figures(quick: bool = False, scenario: str = "city-grid") -> list[Figure]:
    """Training throughput of every algorithm on both environment kinds."""
    timesteps = 20_000 if quick else 100_000
    figures = []
    for algorithm, hyperparameters in TRAINING_SETUPS.items():
        for env_kind in ("single", "fleet"):
            rate = training_steps_per_s(
                algorithm, env_kind, scenario, timesteps, hyperparameters
            )
            figures.append(
                Figure(
                    f"train {algorithm} on {scenario}, {env_kind} env, timesteps/s",
                    rate,
                    "timesteps/s",
                )
            )
    return figures
