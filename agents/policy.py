"""The one interface every policy answers: observations and masks in, actions out.

Learned agents, heuristics and oracles alike implement :class:`Policy`, so
evaluation treats them the same. Policies act on batches: observations of
shape (N, D) and masks of shape (N, K) give N actions. A policy never
returns a masked action.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mecrl.envs.observation import ObservationLayout
from mecrl.registry import Registry
from mecrl.scenario import Scenario


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may know besides its observations."""

    layout: ObservationLayout
    """Where each feature sits in an observation."""
    scenario: Scenario
    """The scenario, for policies built from its model (MDP)."""


class Policy(ABC):
    """Maps a batch of observations and masks to actions."""

    name: str = "policy"

    @abstractmethod
    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return (N,) actions for (N, D) observations and (N, K) masks."""


POLICIES: Registry[Callable[..., Policy]] = Registry("policy")
"""Policy factories by name; each takes a :class:`PolicyContext` first."""


def make_policy(name: str, context: PolicyContext, **params: float) -> Policy:
    """Build the registered policy ``name`` for ``context``."""
    policy = POLICIES.get(name)(context, **params)
    policy.name = name
    return policy


def masked_argmin(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return per row the index of the lowest score among allowed entries.

    Ties go to the lowest index, which is staying put in candidate order.
    """
    return np.asarray(np.argmin(np.where(mask, score, np.inf), axis=-1))
