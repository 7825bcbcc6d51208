"""The SB3 VecEnv view of the fleet."""

import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.logger import Logger

from mecrl.agents.vec import FleetVecEnv
from mecrl.envs.fleet import FleetVectorEnv
from mecrl.scenario import Scenario, load_config

N = 12


@pytest.fixture(scope="module")
def short_wang() -> Scenario:
    import dataclasses

    return Scenario(dataclasses.replace(load_config("wang-1d"), episode_slots=5))


def random_masked(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, rng.random(mask.shape), -1.0).argmax(axis=1)


def test_steps_match_the_vector_env_and_report_episode_ends(
    short_wang: Scenario,
) -> None:
    sb3 = FleetVecEnv(N, short_wang, coupled=True, seed=4)
    gym_fleet = FleetVectorEnv(N, short_wang, coupled=True)
    observation = sb3.reset()
    expected, _ = gym_fleet.reset(seed=4)
    np.testing.assert_array_equal(observation, expected)
    assert observation.shape == (N, *sb3.observation_space.shape)

    rng = np.random.default_rng(0)
    for slot in range(short_wang.config.episode_slots):
        actions = random_masked(rng, sb3.action_masks())
        np.testing.assert_array_equal(sb3.action_masks(), gym_fleet.action_masks())
        sb3.step_async(actions)
        observation, rewards, dones, infos = sb3.step_wait()
        expected, gym_rewards, _, truncated, gym_infos = gym_fleet.step(actions)
        assert rewards.dtype == np.float32
        np.testing.assert_allclose(rewards, gym_rewards.astype(np.float32))
        np.testing.assert_array_equal(observation, expected)
        assert len(infos) == N
        last = slot == short_wang.config.episode_slots - 1
        assert dones.all() == last
        assert truncated.all() == last
        if last:
            for n, info in enumerate(infos):
                np.testing.assert_array_equal(
                    info["terminal_observation"], gym_infos["final_obs"][n]
                )
                assert info["TimeLimit.truncated"]
            # the returned observation starts the next episode
            assert np.all(sb3.fleet.layout.progress(observation) == 0.0)


def test_masks_reach_maskable_ppo(short_wang: Scenario) -> None:
    env = FleetVecEnv(N, short_wang, coupled=False, seed=1)
    env.reset()
    assert is_masking_supported(env)
    masks = get_action_masks(env)
    assert masks.shape == (N, env.action_space.n)
    np.testing.assert_array_equal(masks, env.fleet.action_masks())
    assert env.env_method("action_masks", indices=[2, 5])[1].tolist() == (
        env.fleet.action_masks()[5].tolist()
    )


def test_maskable_ppo_trains_and_only_picks_allowed_actions(
    short_wang: Scenario,
) -> None:
    env = FleetVecEnv(N, short_wang, coupled=True, seed=2)
    model = MaskablePPO("MlpPolicy", env, n_steps=10, batch_size=60, seed=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-* folder
    model.learn(total_timesteps=2 * N * 10)
    assert model.num_timesteps >= 2 * N * 10
    observation = env.reset()
    for _ in range(short_wang.config.episode_slots):
        masks = get_action_masks(env)
        actions, _ = model.predict(observation, action_masks=masks)
        assert masks[np.arange(N), actions].all()
        env.step_async(actions)
        observation, _, _, _ = env.step_wait()
