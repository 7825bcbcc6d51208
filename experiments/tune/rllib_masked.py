"""Train RLlib's PPO with action masks on a mecrl environment.

The environment is ``MigrationEnv`` over every site of ``city-grid``
(``action_space="sites"``), where the mask removes about half of the sites
in most slots (no Kata for a sandboxed service, a full host, an untrusted
zone). RLlib reads a mask from a dict observation, so a small wrapper gives
``{"observations": ..., "action_mask": ...}``; RLlib's own masking module
(``ActionMaskingTorchRLModule``, shipped in its examples) sets the logits
of masked actions to the lowest float before sampling.

It needs the ``rllib`` extra, which pins gymnasium to 1.2.2 (see
``experiments/tune/README.md``)::

    pip install torch==2.13.0 -e '.[train,ray,rllib]'
    python experiments/tune/rllib_masked.py --iterations 5
    python experiments/tune/rllib_masked.py --address HOST:PORT   # a cluster

It prints each iteration's mean episode return and, at the end, how many
masked sites the greedy policy picked over one episode: always 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.examples.rl_modules.classes.action_masking_rlm import (
    ActionMaskingTorchRLModule,
)

from mecrl.envs.single import MigrationEnv
from mecrl.tuning.experiment import ray_session


class MaskedMigrationEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """``MigrationEnv`` over every site, its mask inside the observation.

    Args:
        config: RLlib's env config: ``scenario`` (default ``city-grid``).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        scenario = (config or {}).get("scenario", "city-grid")
        self.env = MigrationEnv(scenario, action_space="sites")
        n = int(self.env.action_space.n)
        self.action_space = self.env.action_space
        self.observation_space = spaces.Dict(
            {
                "action_mask": spaces.Box(0.0, 1.0, (n,), dtype=np.float32),
                "observations": self.env.observation_space,
            }
        )

    def _observe(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        mask = self.env.action_masks().astype(np.float32)
        return {"action_mask": mask, "observations": observation}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode of the wrapped environment."""
        observation, info = self.env.reset(seed=seed, options=options)
        return self._observe(observation), info

    def step(
        self, action: np.int64
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Step the wrapped environment; ``info["refused"]`` flags a masked pick."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        info = {"refused": bool(info["refused"]), "cost": float(info["cost"])}
        return self._observe(observation), float(reward), terminated, truncated, info


def masked_greedy_choices(module: Any, seed: int) -> tuple[int, int]:
    """Run one episode greedily; return (masked sites picked, slots)."""
    env = MaskedMigrationEnv()
    observation, _ = env.reset(seed=seed)
    masked = slots = 0
    truncated = False
    while not truncated:
        batch = {"obs": {k: torch.as_tensor(v[None]) for k, v in observation.items()}}
        logits = module.forward_inference(batch)["action_dist_inputs"]
        action = int(logits.argmax(-1)[0])
        masked += int(observation["action_mask"][action] == 0)
        observation, _, _, truncated, _ = env.step(np.int64(action))
        slots += 1
    return masked, slots


def main(argv: Sequence[str] | None = None) -> int:
    """Train, report returns and masked choices; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--address", help="HOST:PORT of a Ray cluster")
    args = parser.parse_args(argv)

    config = (
        PPOConfig()
        .environment(env=MaskedMigrationEnv, env_config={"scenario": "city-grid"})
        .env_runners(num_env_runners=0, rollout_fragment_length=240)
        .training(train_batch_size_per_learner=960, minibatch_size=240, num_epochs=2)
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=ActionMaskingTorchRLModule,
                model_config={"head_fcnet_hiddens": [64, 64]},
            )
        )
    )
    with ray_session(args.address):
        algorithm = config.build_algo()
        for iteration in range(args.iterations):
            runners = algorithm.train()["env_runners"]
            print(
                f"iteration {iteration}: "
                f"{runners['num_env_steps_sampled_lifetime']:,.0f} env steps, "
                f"mean episode return {runners.get('episode_return_mean', 'n/a')}"
            )
        masked, slots = masked_greedy_choices(algorithm.get_module(), seed=0)
        algorithm.stop()
    print(f"greedy episode: {masked} masked sites picked in {slots} slots")
    return 0 if masked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
