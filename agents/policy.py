"""The one interface every policy answers: observations and masks in, actions out.

Learned agents, heuristics and oracles alike implement :class:`Policy`, so
evaluation treats them the same. Policies act on batches: observations of
shape (N, D) and masks of shape (N, K) give N actions. A policy never
returns a masked action.
"""

from __future__ import annotations

import inspect
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


def parse_policy_spec(spec: str) -> tuple[str, dict[str, float]]:
    """Split a policy spec into its registered name and numeric parameters.

    A spec is a name, optionally followed by ``:`` and comma-free
    ``key=value`` pairs separated by ``;``: ``threshold:hops=8``.

    Raises:
        ValueError: If the name is unknown, a parameter is not ``key=number``
            or the policy takes no parameter of that name.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in POLICIES:
        known = ", ".join(sorted(POLICIES.names()))
        raise ValueError(f"unknown policy {name!r}; known: {known}")
    factory = POLICIES.get(name)
    accepted = list(inspect.signature(factory).parameters)[1:]
    params: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or key not in accepted:
            valid = ", ".join(accepted) or "none"
            raise ValueError(
                f"policy {spec!r}: {item!r} is not a parameter of {name}; "
                f"valid: {valid}"
            )
        try:
            params[key] = float(value)
        except ValueError:
            raise ValueError(
                f"policy {spec!r}: {key} must be a number, got {value.strip()!r}"
            ) from None
    return name, params


def make_policy(spec: str, context: PolicyContext, **params: float) -> Policy:
    """Build the policy of ``spec`` (a name, or ``name:key=value``) for ``context``.

    Raises:
        ValueError: If the spec does not name a registered policy and its
            parameters (see :func:`parse_policy_spec`).
    """
    name, given = parse_policy_spec(spec)
    policy = POLICIES.get(name)(context, **given, **params)
    policy.name = spec
    return policy


def masked_argmin(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return per row the index of the lowest score among allowed entries.

    Ties go to the lowest index, which is staying put in candidate order.
    """
    return np.asarray(np.argmin(np.where(mask, score, np.inf), axis=-1))
