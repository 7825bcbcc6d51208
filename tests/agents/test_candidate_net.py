"""The candidate-scoring network: shared weights across candidates, in training."""

import numpy as np
import pytest
import torch
from torch import nn

from mecrl.agents.candidate_net import CandidateExtractor, CandidateScoringPolicy
from mecrl.config import ConfigError, from_dict
from mecrl.scenario import load_scenario
from mecrl.train import TrainConfig, build_model, make_env

K, F = 5, 4


def observations(rng: np.random.Generator, n: int = 6) -> torch.Tensor:
    return torch.as_tensor(rng.uniform(0.0, 2.0, (n, K * F + 1)), dtype=torch.float32)


def swapped(observation: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``observation`` with its candidates put in ``order``."""
    table = observation[:, :-1].reshape(-1, K, F)[:, order]
    return torch.cat([table.reshape(-1, K * F), observation[:, -1:]], dim=1)


def test_scores_move_with_the_candidates_and_the_value_ignores_their_order() -> None:
    torch.manual_seed(0)
    extractor = CandidateExtractor(K, F, (16, 16), nn.Tanh)
    observation = observations(np.random.default_rng(1))
    order = [0, 3, 1, 4, 2]  # candidate 0, the current site, keeps its place

    with torch.no_grad():
        scores = extractor.forward_actor(observation)
        moved = extractor.forward_actor(swapped(observation, order))
        value = extractor.forward_critic(observation)
        value_moved = extractor.forward_critic(swapped(observation, order))

    assert scores.shape == (6, K)
    torch.testing.assert_close(moved, scores[:, order])
    torch.testing.assert_close(value_moved, value)
    # the current site is context, not one candidate among others
    with torch.no_grad():
        other_current = extractor.forward_actor(swapped(observation, [1, 0, 2, 3, 4]))
    assert not torch.allclose(other_current[:, 2:], scores[:, 2:])


def config(algorithm: str = "maskable_ppo") -> TrainConfig:
    rollout = {"n_steps": 16, "batch_size": 64} if algorithm == "maskable_ppo" else {}
    return from_dict(
        TrainConfig,
        {
            "algorithm": algorithm,
            "env": {"kind": "fleet", "n_services": 8, "coupled": False},
            "policy": {"kind": "candidate_scoring", "net_arch": [16]},
            "hyperparameters": rollout,
        },
    )


def test_the_model_starts_near_uniform_and_its_logits_are_the_scores() -> None:
    scenario = load_scenario("city-grid")
    env = make_env(config(), scenario)
    model = build_model(config(), env, None)
    policy = model.policy
    assert isinstance(policy, CandidateScoringPolicy)
    assert isinstance(policy.action_net, nn.Identity)
    observation = torch.as_tensor(env.reset(), dtype=torch.float32)

    with torch.no_grad():
        logits = policy.action_net(
            policy.mlp_extractor.forward_actor(policy.extract_features(observation))
        )
    assert logits.shape == (8, scenario.config.candidates)
    assert float(logits.abs().max()) < 0.1
    # every parameter the model uses is one the optimizer updates
    optimised = {
        id(p) for group in policy.optimizer.param_groups for p in group["params"]
    }
    assert {id(p) for p in policy.parameters()} == optimised
    env.close()


@pytest.mark.parametrize("algorithm", ["ppo", "a2c", "dqn"])
def test_candidate_scoring_needs_maskable_ppo(algorithm: str) -> None:
    with pytest.raises(
        ConfigError,
        match=r"policy\.kind: 'candidate_scoring' needs algorithm maskable_ppo",
    ):
        config(algorithm)
