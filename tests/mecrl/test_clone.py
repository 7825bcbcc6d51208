"""Cloning the planner before reinforcement learning."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO

from mecrl.clone import Demonstrations, clone, planner_demonstrations
from mecrl.config import ConfigError
from mecrl.envs.fleet import FleetCore
from mecrl.scenario import Scenario, load_config, load_scenario
from mecrl.train import CloneConfig, TrainConfig, build_model, make_env, start_run

PLANNER = dataclasses.replace(
    load_config("city-grid"), plan_window_slots=6, plan_futures=8, episode_slots=40
)


def agreement(model: MaskablePPO, demonstrations: Demonstrations) -> float:
    actions, _ = model.predict(
        demonstrations.observations,
        deterministic=True,
        action_masks=demonstrations.masks,
    )
    return float((actions == demonstrations.actions).mean())


def test_demonstrations_follow_the_planners_choice() -> None:
    scenario = Scenario(PLANNER)
    demonstrations = planner_demonstrations(scenario, 6, [3, 4], gamma=0.9)

    size = 2 * 6 * PLANNER.episode_slots
    assert demonstrations.observations.shape[0] == size
    layout = FleetCore(scenario, 1, False, "candidates").layout
    best = layout.feature(demonstrations.observations, "plan_best")
    rows = np.arange(size)
    assert (best[rows, demonstrations.actions] == 1.0).all()
    assert demonstrations.masks[rows, demonstrations.actions].all()
    # the last slot's return is its reward alone, so never above zero
    assert (demonstrations.returns <= 0).all()


def test_cloning_makes_the_policy_follow_the_planner() -> None:
    scenario = Scenario(PLANNER)
    torch.set_num_threads(1)
    config = TrainConfig(hyperparameters={"n_steps": 32, "batch_size": 64})
    model = build_model(config, make_env(config, scenario), None)
    assert isinstance(model, MaskablePPO)
    demonstrations = planner_demonstrations(scenario, 16, [1, 2, 3], gamma=0.9)
    before = agreement(model, demonstrations)

    epochs = clone(model, demonstrations, 8, 256, 3e-3, seed=0)

    assert epochs[-1].nll < epochs[0].nll
    assert epochs[-1].value_mse < epochs[0].value_mse
    assert agreement(model, demonstrations) > max(0.9, before)


def test_demonstrations_need_a_planner_in_the_observation() -> None:
    with pytest.raises(ValueError, match="'city-grid' sets no plan_window_slots"):
        planner_demonstrations(load_scenario("city-grid"), 2, [0], gamma=0.9)


def test_cloning_needs_maskable_ppo() -> None:
    with pytest.raises(
        ConfigError,
        match=r"clone_planner\.episodes: cloning needs algorithm maskable_ppo, "
        r"got 'ppo'",
    ):
        TrainConfig(algorithm="ppo", clone_planner=CloneConfig(episodes=2))


def test_cloning_needs_a_scenario_with_a_planner(tmp_path: Path) -> None:
    config = TrainConfig(clone_planner=CloneConfig(episodes=2), run_root=str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"clone_planner\.episodes: cloning needs a scenario"
    ):
        start_run(config)
