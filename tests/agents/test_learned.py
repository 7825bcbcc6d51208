"""Trained SB3 models behind the Policy interface."""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from mecrl.agents.learned import ALGORITHMS, LearnedPolicy, load_policy
from mecrl.envs.fleet import FleetCore
from mecrl.envs.single import MigrationEnv
from mecrl.evaluate import action_space_for, episode_key, policy_context
from mecrl.scenario import Scenario, load_config, load_scenario


def untrained(cls: Any, scenario: Scenario) -> Any:
    env = DummyVecEnv([lambda: MigrationEnv(scenario, action_space_for(scenario))])
    return cls("MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")


def observations(scenario: Scenario, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    core = FleetCore(
        scenario, n, coupled=False, action_space=action_space_for(scenario)
    )
    observation = core.reset(episode_key(0))
    return observation, core.mask


@pytest.fixture(scope="module")
def city() -> Scenario:
    return load_scenario("city-grid")


def test_every_algorithm_is_registered() -> None:
    assert ALGORITHMS.names() == ["a2c", "dqn", "maskable_ppo", "ppo"]
    assert [ALGORITHMS.get(n).masked for n in ALGORITHMS.names()] == [
        False,
        False,
        True,
        False,
    ]
    with pytest.raises(KeyError, match="unknown algorithm 'sac'; known: a2c, dqn"):
        ALGORITHMS.get("sac")


def test_maskable_model_never_proposes_a_masked_action(city: Scenario) -> None:
    policy = LearnedPolicy(untrained(MaskablePPO, city), policy_context(city))
    observation, mask = observations(city)
    # forbid all but staying and one random allowed candidate per service
    rng = np.random.default_rng(0)
    narrowed = np.zeros_like(mask)
    narrowed[:, 0] = True
    for row in range(mask.shape[0]):
        allowed = np.flatnonzero(mask[row, 1:]) + 1
        if allowed.size:
            narrowed[row, rng.choice(allowed)] = True

    actions = policy.act(observation, narrowed)

    assert narrowed[np.arange(len(actions)), actions].all()
    assert policy.masked_choices == 0


def test_unmasked_model_stays_instead_of_a_masked_action(
    city: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = untrained(PPO, city)
    policy = LearnedPolicy(model, policy_context(city))
    observation, mask = observations(city)
    k = mask.shape[1]
    mask = mask.copy()
    mask[::2, k - 1] = False  # every other service may not take the last one

    def predict(obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, None]:
        assert deterministic
        return np.full(obs.shape[0], k - 1), None

    monkeypatch.setattr(model, "predict", predict)
    actions = policy.act(observation, mask)

    forbidden = ~mask[:, k - 1]
    assert (actions[forbidden] == 0).all()  # candidate 0 is the current site
    assert (actions[~forbidden] == k - 1).all()
    assert policy.masked_choices == forbidden.sum()


def test_model_of_another_shape_is_rejected() -> None:
    config = load_config("wang-1d")
    model = untrained(PPO, Scenario(config))
    fewer = Scenario(dataclasses.replace(config, candidates=4))

    with pytest.raises(ValueError, match=r"needs shape \(37,\) and Discrete\(4\)"):
        LearnedPolicy(model, policy_context(fewer))


def test_load_policy_round_trips_a_saved_model(city: Scenario, tmp_path: Path) -> None:
    model = untrained(PPO, city)
    model.save(tmp_path / "model.zip")
    observation, mask = observations(city)

    loaded = load_policy(tmp_path / "model.zip", "ppo", policy_context(city))

    expected = LearnedPolicy(model, policy_context(city)).act(observation, mask)
    np.testing.assert_array_equal(loaded.act(observation, mask), expected)


def test_load_policy_names_a_missing_file(city: Scenario, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load_policy(tmp_path / "none.zip", "ppo", policy_context(city))
