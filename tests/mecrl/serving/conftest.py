"""Trained runs, their bundles and a running server, shared by the serving tests.

One tiny run per algorithm on a shortened city-grid (three service classes,
Kata-only and dedicated services, zones, a cloud), trained for seconds.
"""

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mecrl.agents.learned import ALGORITHMS
from mecrl.config import from_dict
from mecrl.scenario import load_config
from mecrl.serving.export import export_run
from mecrl.serving.process import ServerProcess
from mecrl.train import TrainConfig, start_run, train_run

TOKEN = "test-token-3f9a"

HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "maskable_ppo": {"n_steps": 64, "batch_size": 64},
    "ppo": {"n_steps": 64, "batch_size": 64},
    "a2c": {"n_steps": 8},
    "dqn": {"learning_starts": 100, "buffer_size": 5_000},
}


TinyRun = Callable[[Path, Path, str], Path]


def tiny_run(root: Path, scenario: Path, algorithm: str) -> Path:
    data = {
        "algorithm": algorithm,
        "scenario": str(scenario),
        "env": {"kind": "single", "n_envs": 4},
        "total_timesteps": 1024,
        "hyperparameters": HYPERPARAMETERS[algorithm],
        "eval": {
            "freq_steps": 100_000,
            "services": 2,
            "seeds": [0],
            "baselines": ["never"],
        },
        "checkpoint_freq_steps": 100_000,
        "run_root": str(root),
    }
    run = start_run(from_dict(TrainConfig, data))
    train_run(run)
    return run.path


@pytest.fixture(scope="session")
def train_tiny() -> TinyRun:
    """Return a function training a tiny run: (run root, scenario file, algorithm)."""
    return tiny_run


@pytest.fixture(scope="session")
def token() -> str:
    """The bearer token of the shared server."""
    return TOKEN


@pytest.fixture(scope="session")
def city_scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """city-grid with 30-slot episodes, as a scenario file."""
    config = dataclasses.replace(
        load_config("city-grid"), name="city-short", episode_slots=30
    )
    path = tmp_path_factory.mktemp("scenario") / "city-short.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


@pytest.fixture(scope="session")
def runs(
    tmp_path_factory: pytest.TempPathFactory, city_scenario: Path
) -> dict[str, Path]:
    """A finished tiny run of every algorithm."""
    root = tmp_path_factory.mktemp("runs")
    return {name: tiny_run(root, city_scenario, name) for name in ALGORITHMS.names()}


@pytest.fixture(scope="session")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, runs: dict[str, Path]
) -> dict[str, Path]:
    """The exported bundle of every run."""
    root = tmp_path_factory.mktemp("bundles")
    for name, run in runs.items():
        export_run(run, root / name)
    return {name: root / name for name in runs}


@pytest.fixture(scope="session")
def server(bundles: dict[str, Path]) -> Iterator[ServerProcess]:
    """``mecrl serve`` of the DQN bundle (it proposes masked moves) with a token."""
    with ServerProcess(bundles["dqn"], TOKEN, ("--max-batch", "500")) as running:
        yield running
