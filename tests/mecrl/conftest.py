"""A toy scenario and a tiny training run, shared by the training tests."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mecrl.config import from_dict
from mecrl.scenario import load_config
from mecrl.train import TrainConfig, start_run, train_run

TinyConfig = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def toy_scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wang-1d with 20-slot episodes, as a scenario file."""
    config = dataclasses.replace(load_config("wang-1d"), name="toy", episode_slots=20)
    path = tmp_path_factory.mktemp("scenario") / "toy.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


@pytest.fixture(scope="session")
def tiny_config(toy_scenario: Path) -> TinyConfig:
    """Return a function giving a config that trains for seconds.

    It takes the run root and changes to the top-level keys: by default,
    MaskablePPO on the toy scenario, 4 rollouts of 4 x 64 timesteps.
    """

    def make(root: Path, **changes: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "scenario": str(toy_scenario),
            "env": {"kind": "single", "n_envs": 4},
            "total_timesteps": 1024,
            "hyperparameters": {"n_steps": 64, "batch_size": 64},
            "eval": {"freq_steps": 512, "services": 4, "seeds": [0, 1]},
            "checkpoint_freq_steps": 512,
            "run_root": str(root),
        }
        data.update(changes)
        return data

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: TinyConfig) -> Path:
    """A finished run of the default tiny config."""
    root = tmp_path_factory.mktemp("runs")
    run = start_run(from_dict(TrainConfig, tiny_config(root)))
    train_run(run)
    return run.path
