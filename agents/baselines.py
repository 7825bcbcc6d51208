"""Classic migration heuristics, and the MDP-optimal policy of Wang et al.

| name | rule |
|---|---|
| ``never`` | never migrate |
| ``follow`` | always move to the user's access site (else the nearest |
| | feasible site to the user) |
| ``threshold`` | follow once the user is ``hops`` or more hops away |
| ``myopic`` | the candidate cheapest for the next slot alone |
| ``mdp`` | optimal for a random walk with hop-distance costs |

All read only the observation features, so they run on any topology and
either action space.
"""

from __future__ import annotations

import numpy as np

from mecrl.agents.mdp import DistanceChain, DistanceCosts, solve_value_iteration
from mecrl.agents.policy import POLICIES, Policy, PolicyContext, masked_argmin
from mecrl.envs.observation import HOPS_SCALE


def _hops(context: PolicyContext, observation: np.ndarray, name: str) -> np.ndarray:
    values = context.layout.feature(observation, name) * HOPS_SCALE
    return np.rint(values).astype(np.int64)


@POLICIES.register("never")
class NeverMigrate(Policy):
    """Keep every service where it runs."""

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pick the candidate zero hops from the current site: itself."""
        here = _hops(self.context, observation, "hops_from_current_10") == 0
        return masked_argmin(~here, mask & here)


@POLICIES.register("follow")
class AlwaysFollow(Policy):
    """Move to the user's access site, or as close to the user as allowed."""

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pick the feasible candidate with the lowest user latency."""
        latency = self.context.layout.feature(observation, "latency_over_slo")
        return masked_argmin(latency, mask)


@POLICIES.register("threshold")
class DistanceThreshold(Policy):
    """Follow the user once it is at least ``hops`` hops from the service.

    Args:
        context: The policy context.
        hops: Distance, in network hops, that triggers a move.
    """

    def __init__(self, context: PolicyContext, hops: float = 2) -> None:
        if hops < 1:
            raise ValueError(f"hops must be >= 1, got {hops}")
        self.context = context
        self.hops = hops
        self._follow = AlwaysFollow(context)
        self._never = NeverMigrate(context)

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Stay while the user is near; follow beyond the threshold."""
        from_user = _hops(self.context, observation, "hops_from_user_10")
        current = _hops(self.context, observation, "hops_from_current_10") == 0
        distance = np.where(current, from_user, -1).max(axis=-1)
        return np.where(
            distance >= self.hops,
            self._follow.act(observation, mask),
            self._never.act(observation, mask),
        )


@POLICIES.register("myopic")
class Myopic(Policy):
    """Pick the candidate with the lowest cost of the next slot alone."""

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Minimise placement plus move cost of this slot."""
        cost = self.context.layout.feature(observation, "log1p_cost")
        return masked_argmin(cost, mask)


@POLICIES.register("mdp")
class MdpOptimal(Policy):
    """The optimal policy of the random-walk model (Wang et al., ToN 2019).

    Solves the MDP on the user-service hop distance by value iteration: a
    ring line gives the exact 1-D chain, a hex grid Wang et al.'s
    ring-distance approximation of the 2-D walk. At distance ``d`` it moves
    the service to the candidate at distance ``target[d]`` from the user
    that is fewest hops away, or stays when ``target[d] == d``.

    On a recorded trace (a mobility source with a ``move_probability()``
    estimate, such as ``dataset-replay`` or ``gps-replay``) it does what Wang
    et al. do on their real San Francisco trace: it treats hop distance on
    the real graph as the ring distance of the 2-D hexagonal chain, with
    the move probability estimated from the trace. The policy is then a
    heuristic, not an optimum: real users neither walk at random nor on a
    hexagonal grid.

    Args:
        context: The policy context; its scenario must use the
            ``random-walk`` mobility on a ``line`` (ring) or ``hex``
            topology, or a trace replay, with hop-distance costs only.

    Raises:
        ValueError: If the scenario is outside that model.
    """

    def __init__(self, context: PolicyContext) -> None:
        self.context = context
        self.solution = solve_value_iteration(
            _distance_chain(context),
            _distance_costs(context),
            context.scenario.config.discount,
        )

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Move to the optimal distance from the user, by the shortest way."""
        from_user = _hops(self.context, observation, "hops_from_user_10")
        from_here = _hops(self.context, observation, "hops_from_current_10")
        current = from_here == 0
        distance = np.where(current, from_user, -1).max(axis=-1)
        top = self.solution.target.shape[0] - 1
        target = self.solution.target[np.minimum(distance, top)]
        at_target = mask & (np.minimum(from_user, top) == target[:, None])
        score = np.where(at_target, from_here, np.inf)
        choice = np.argmin(score, axis=-1)
        fallback = masked_argmin(np.abs(from_user - target[:, None]), mask)
        return np.where(np.isfinite(score.min(axis=-1)), choice, fallback)


def _distance_chain(context: PolicyContext) -> DistanceChain:
    config = context.scenario.config
    hops = context.scenario.network.hops
    max_distance = int(hops[: context.scenario.n_access].max())
    if config.mobility.kind != "random-walk":
        return _trace_chain(context, max_distance)
    move_prob = float(config.mobility.params.get("move_prob", 0.5))
    kind = config.topology.kind
    if kind == "line" and config.topology.params.get("ring", False):
        return DistanceChain.ring_1d(move_prob, max_distance)
    if kind == "hex":
        return DistanceChain.hex_2d(move_prob, max_distance)
    raise ValueError(
        f"the mdp policy needs a ring line or a hex topology; scenario "
        f"{config.name!r} uses {kind!r}"
    )


def _trace_chain(context: PolicyContext, max_distance: int) -> DistanceChain:
    """Wang et al.'s 2-D chain for a recorded trace on a real graph.

    Their real-trace evaluation fits one parameter to the trace, the
    probability that a user changes cell in a slot, and uses the hexagonal
    ring-distance chain with it, reading the distance between real cells as
    a ring distance. Here hop distance on the scenario's graph plays that
    role, and the probability is pooled over the whole replayed window
    (Wang et al. refit it every slot).
    """
    config = context.scenario.config
    source = context.scenario.make_mobility()
    estimate = getattr(source, "move_probability", None)
    if not callable(estimate):
        raise ValueError(
            f"the mdp policy needs random-walk mobility or a trace replay that "
            f"estimates its move probability; scenario {config.name!r} uses "
            f"{config.mobility.kind!r}"
        )
    return DistanceChain.hex_2d(float(estimate()), max_distance)


def _distance_costs(context: PolicyContext) -> DistanceCosts:
    scenario = context.scenario
    weights = scenario.config.costs.weights
    others = [
        name
        for name, value in vars(weights).items()
        if value and name not in ("distance", "migration")
    ]
    if others:
        raise ValueError(
            f"the mdp policy needs hop-distance costs only; scenario "
            f"{scenario.config.name!r} also weights {', '.join(sorted(others))}"
        )
    max_distance = int(scenario.network.hops[: scenario.n_access].max())
    return DistanceCosts(
        transmission=weights.distance * scenario.distance_cost[: max_distance + 1],
        migration=weights.migration * scenario.migration_hop_cost[: max_distance + 1],
    )
