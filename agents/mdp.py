"""Optimal migration on the user-service distance under random-walk mobility.

Wang et al., "Dynamic service migration in mobile edge computing based on Markov
decision process", IEEE/ACM Transactions on Networking 27(3), 2019, reduce service
migration under random-walk mobility to an MDP whose state is the distance
``d = 0..D``, in cells, between the user and its service. This module holds that
model and two independent ways to solve it:

* value iteration and policy iteration over all distances, for any distance chain
  and any cost table;
* the closed-form value of a threshold policy ("stay while ``d < N``, migrate to
  the user when ``d >= N``") for the symmetric 1-D ring walk with
  constant-plus-exponential costs (:class:`mecrl.costs.HopCost`), from the
  difference equation that the policy's values satisfy. It shares no code with
  the iterative solvers, so each checks the other.

One slot, with the same timing as the simulator: the slot starts at distance
``d``; the policy moves the service ``|d - d'|`` cells along a shortest path
(towards or away from the user) so that the distance becomes ``d'``; the slot costs
``migration[|d - d'|] + transmission[d']``; then the user moves according to the
chain from ``d'``. Later slots are discounted by ``discount`` per slot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mecrl.costs import CostConfig, HopCost, wang2019_costs

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Decisions within this relative slack of the cheapest count as tied. Value
# iteration stops short of the exact values, so without the slack an exact tie
# would fall on either side at random and the two solvers could disagree.
_TIE_RTOL = 1e-9


def _probability_vector(value: npt.ArrayLike, name: str) -> FloatArray:
    """Return ``value`` as a read-only 1-D array of probabilities."""
    array = np.array(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: must be 1-D, got shape {array.shape}")
    if not np.all((array >= 0.0) & (array <= 1.0)):
        raise ValueError(f"{name}: probabilities must lie in [0, 1], got {array}")
    array.setflags(write=False)
    return array


def _cost_vector(value: npt.ArrayLike, name: str) -> FloatArray:
    """Return ``value`` as a read-only 1-D array of finite costs."""
    array = np.array(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: costs must be finite, got {array}")
    array.setflags(write=False)
    return array


def _check_move_prob(move_prob: float, *, allow_zero: bool = True) -> None:
    """Reject a per-slot move probability outside [0, 1] (or (0, 1])."""
    low_ok = move_prob >= 0.0 if allow_zero else move_prob > 0.0
    if not (low_ok and move_prob <= 1.0):
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"move_prob: must lie in {bounds}, got {move_prob}")


def _check_max_distance(max_distance: int) -> None:
    """Reject a largest distance below one cell."""
    if max_distance < 1:
        raise ValueError(f"max_distance: must be at least 1, got {max_distance}")


@dataclass(frozen=True)
class DistanceChain:
    """Per-slot moves of the user-service distance while the service stays put.

    The distance stays the same with probability ``1 - outward[d] - inward[d]``.
    Both arrays are stored as read-only float copies.
    """

    outward: FloatArray
    """``outward[d]`` is P[d -> d + 1], shape (D + 1,); ``outward[D]`` must be 0."""

    inward: FloatArray
    """``inward[d]`` is P[d -> d - 1], shape (D + 1,); ``inward[0]`` must be 0."""

    def __post_init__(self) -> None:
        outward = _probability_vector(self.outward, "outward")
        inward = _probability_vector(self.inward, "inward")
        if outward.size < 2:
            raise ValueError(
                f"outward: needs distances 0..D with D >= 1, got {outward.size} entry"
            )
        if inward.shape != outward.shape:
            raise ValueError(
                f"inward: shape {inward.shape} differs from outward's {outward.shape}"
            )
        if outward[-1] != 0.0:
            raise ValueError(f"outward: last entry must be 0, got {outward[-1]}")
        if inward[0] != 0.0:
            raise ValueError(f"inward: first entry must be 0, got {inward[0]}")
        over = np.flatnonzero(outward + inward > 1.0)
        if over.size:
            raise ValueError(
                f"outward, inward: their sum exceeds 1 at distances {over.tolist()}"
            )
        object.__setattr__(self, "outward", outward)
        object.__setattr__(self, "inward", inward)

    @property
    def max_distance(self) -> int:
        """Largest distance D the chain covers."""
        return int(self.outward.size - 1)

    def matrix(self) -> FloatArray:
        """Return the (D + 1, D + 1) row-stochastic transition matrix."""
        stay = 1.0 - self.outward - self.inward
        return (
            np.diag(stay) + np.diag(self.outward[:-1], 1) + np.diag(self.inward[1:], -1)
        )

    @classmethod
    def ring_1d(cls, move_prob: float, max_distance: int) -> DistanceChain:
        """Distance chain of a walk on a ring of ``2 * max_distance + 1`` cells.

        Each slot the user steps one cell left with probability ``move_prob / 2``
        and one cell right with probability ``move_prob / 2``. The chain is exact:
        at the largest distance, stepping away from the service reaches the other
        cell at the same distance.

        Args:
            move_prob: Probability that the user moves at all in a slot.
            max_distance: Largest distance D, at least 1.

        Raises:
            ValueError: If ``move_prob`` is outside [0, 1] or ``max_distance < 1``.
        """
        _check_move_prob(move_prob)
        _check_max_distance(max_distance)
        outward = np.full(max_distance + 1, move_prob / 2)
        inward = np.full(max_distance + 1, move_prob / 2)
        outward[0] = move_prob
        outward[-1] = 0.0
        inward[0] = 0.0
        return cls(outward, inward)

    @classmethod
    def hex_2d(cls, move_prob: float, max_distance: int) -> DistanceChain:
        """Wang et al.'s ring-distance chain for a walk on a hexagonal grid.

        Each slot the user moves to each of its six neighbours with probability
        ``move_prob / 6``. Ring d > 0 holds 6d cells, and averaged over them a move
        leads outward with probability 1/3 + 1/(6d) and inward with 1/3 - 1/(6d).
        The chain is an approximation because the true probabilities depend on
        the cell within the ring. The grid ends at ring D: a move off it keeps the
        distance.

        Args:
            move_prob: Probability that the user moves at all in a slot.
            max_distance: Largest distance D, at least 1.

        Raises:
            ValueError: If ``move_prob`` is outside [0, 1] or ``max_distance < 1``.
        """
        _check_move_prob(move_prob)
        _check_max_distance(max_distance)
        ring = np.arange(1, max_distance + 1, dtype=np.float64)
        outward = np.empty(max_distance + 1)
        inward = np.zeros(max_distance + 1)
        outward[0] = move_prob
        outward[1:] = move_prob * (1 / 3 + 1 / (6 * ring))
        outward[-1] = 0.0
        inward[1:] = move_prob * (1 / 3 - 1 / (6 * ring))
        return cls(outward, inward)


@dataclass(frozen=True)
class DistanceCosts:
    """Cost tables of the distance MDP, indexed by a distance in cells.

    Both arrays are stored as read-only float copies.
    """

    transmission: FloatArray
    """``transmission[d]`` is the cost of a slot spent at distance d, shape (D + 1,)."""

    migration: FloatArray
    """``migration[x]`` is the cost of moving the service x cells, shape (D + 1,);
    ``migration[0]`` must be 0."""

    def __post_init__(self) -> None:
        transmission = _cost_vector(self.transmission, "transmission")
        migration = _cost_vector(self.migration, "migration")
        if transmission.size < 2:
            raise ValueError(
                f"transmission: needs distances 0..D with D >= 1, "
                f"got {transmission.size} entry"
            )
        if migration.shape != transmission.shape:
            raise ValueError(
                f"migration: shape {migration.shape} differs from "
                f"transmission's {transmission.shape}"
            )
        if migration[0] != 0.0:
            raise ValueError(f"migration: staying must cost 0, got {migration[0]}")
        object.__setattr__(self, "transmission", transmission)
        object.__setattr__(self, "migration", migration)

    @property
    def max_distance(self) -> int:
        """Largest distance D the tables cover."""
        return int(self.transmission.size - 1)

    @classmethod
    def wang2019(
        cls, max_distance: int, migration_weight: float, power: float = 0.8
    ) -> DistanceCosts:
        """Tables of :func:`mecrl.costs.wang2019_costs` for distances 0..D.

        Args:
            max_distance: Largest distance D, at least 1.
            migration_weight: Weight of the distance-dependent part of a
                migration's cost, finite and at least 0.
            power: Base of both exponentials, in (0, 1).

        Raises:
            ValueError: If an argument is out of range; the message names it.
        """
        return distance_costs(wang2019_costs(migration_weight, power), max_distance)


def distance_costs(costs: CostConfig, max_distance: int) -> DistanceCosts:
    """Return the MDP's cost tables for distances 0..max_distance.

    The MDP uses only the two hop-based shapes of ``costs``: ``distance`` as the
    transmission cost of a slot and ``migration`` as the cost of a move. It
    ignores ``costs.weights``, so each table is the unweighted shape, and it has
    no place for the physical terms (latency, downtime, bytes, ...), which do not
    depend on the distance alone.

    Raises:
        ValueError: If ``max_distance < 1``.
    """
    _check_max_distance(max_distance)
    return DistanceCosts(
        transmission=costs.distance.table(max_distance),
        migration=costs.migration.table(max_distance),
    )


@dataclass(frozen=True)
class MdpSolution:
    """An optimal policy of the distance MDP and its values."""

    values: FloatArray
    """Optimal discounted cost from each starting distance, before the decision."""

    target: IntArray
    """Distance chosen at each distance. Ties go to staying, then to the smaller."""

    iterations: int
    """Sweeps (value iteration) or improvement steps (policy iteration) used."""

    def threshold(self) -> int | None:
        """Return N if the policy is "stay while d < N, else migrate to the user".

        Returns:
            N in 1..D when the policy stays below N and moves to distance 0 from
            N on, D + 1 when it never migrates, and None for any other policy.
        """
        distances = np.arange(self.target.size)
        moved = np.flatnonzero(self.target != distances)
        if moved.size == 0:
            return int(self.target.size)
        first = int(moved[0])
        if first == 0 or np.any(self.target[first:] != 0):
            return None
        return first


def _check_problem(chain: DistanceChain, costs: DistanceCosts, discount: float) -> None:
    """Reject a chain and costs of different sizes or a discount outside [0, 1)."""
    if costs.max_distance != chain.max_distance:
        raise ValueError(
            f"costs: cover distances 0..{costs.max_distance} but the chain covers "
            f"0..{chain.max_distance}"
        )
    if not 0.0 <= discount < 1.0:
        raise ValueError(f"discount: must lie in [0, 1), got {discount}")


def _migration_matrix(costs: DistanceCosts) -> FloatArray:
    """Return ``m[d, d'] = migration[|d - d'|]``."""
    distances = np.arange(costs.max_distance + 1)
    moved: IntArray = np.abs(distances[:, None] - distances[None, :])
    return costs.migration[moved]


def _decision_costs(
    transitions: FloatArray,
    migration: FloatArray,
    costs: DistanceCosts,
    discount: float,
    values: FloatArray,
) -> FloatArray:
    """Return ``q[d, d']``: expected cost of choosing d' at d, then following values."""
    after_move = costs.transmission + discount * (transitions @ values)
    return migration + after_move[None, :]


def _greedy(decision_costs: FloatArray) -> IntArray:
    """Cheapest choice per row; near-ties go to staying, then to the smaller choice."""
    best = decision_costs.min(axis=1)
    slack = _TIE_RTOL * (1.0 + np.abs(best))
    near_best = decision_costs <= (best + slack)[:, None]
    distances = np.arange(decision_costs.shape[0])
    stay = near_best[distances, distances]
    return np.where(stay, distances, near_best.argmax(axis=1)).astype(np.int64)


def evaluate_policy(
    chain: DistanceChain, costs: DistanceCosts, discount: float, target: npt.ArrayLike
) -> FloatArray:
    """Return the exact discounted cost of a policy from each starting distance.

    Args:
        chain: How the distance moves when the service stays.
        costs: Cost tables over the same distances.
        discount: Per-slot discount factor in [0, 1).
        target: Distance chosen at each distance, shape (D + 1,), ints in 0..D.

    Raises:
        ValueError: If an argument is malformed; the message names it.
    """
    _check_problem(chain, costs, discount)
    choice = np.asarray(target)
    size = chain.max_distance + 1
    if choice.shape != (size,) or not np.issubdtype(choice.dtype, np.integer):
        raise ValueError(f"target: must be {size} integers, got {choice!r}")
    if np.any((choice < 0) | (choice >= size)):
        raise ValueError(f"target: entries must lie in 0..{size - 1}, got {choice}")
    distances = np.arange(size)
    slot_cost = costs.migration[np.abs(distances - choice)] + costs.transmission[choice]
    moves = chain.matrix()[choice]
    return np.linalg.solve(np.eye(size) - discount * moves, slot_cost)


def solve_value_iteration(
    chain: DistanceChain,
    costs: DistanceCosts,
    discount: float,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> MdpSolution:
    """Solve the distance MDP by value iteration.

    Args:
        chain: How the distance moves when the service stays.
        costs: Cost tables over the same distances.
        discount: Per-slot discount factor in [0, 1).
        tol: Stop once no value changes by more than this in a sweep; the values
            are then within ``tol * discount / (1 - discount)`` of optimal.
        max_iter: Most sweeps to run.

    Raises:
        ValueError: If an argument is out of range; the message names it.
        RuntimeError: If the values have not settled after ``max_iter`` sweeps.
    """
    _check_problem(chain, costs, discount)
    if not tol > 0.0:
        raise ValueError(f"tol: must be positive, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter: must be at least 1, got {max_iter}")
    transitions = chain.matrix()
    migration = _migration_matrix(costs)

    values = np.zeros(chain.max_distance + 1)
    for sweep in range(1, max_iter + 1):
        decision = _decision_costs(transitions, migration, costs, discount, values)
        updated = decision.min(axis=1)
        change = float(np.max(np.abs(updated - values)))
        values = updated
        if change <= tol:
            logger.debug("value iteration settled after %d sweeps", sweep)
            decision = _decision_costs(transitions, migration, costs, discount, values)
            return MdpSolution(values, _greedy(decision), sweep)
    raise RuntimeError(
        f"value iteration moved values by {change:.3g} > tol={tol} in sweep "
        f"max_iter={max_iter}"
    )


def solve_policy_iteration(
    chain: DistanceChain, costs: DistanceCosts, discount: float, max_iter: int = 1000
) -> MdpSolution:
    """Solve the distance MDP by policy iteration with exact policy evaluation.

    Starts from never migrating and stops when greedy improvement leaves the
    policy unchanged.

    Args:
        chain: How the distance moves when the service stays.
        costs: Cost tables over the same distances.
        discount: Per-slot discount factor in [0, 1).
        max_iter: Most improvement steps to run.

    Raises:
        ValueError: If an argument is out of range; the message names it.
        RuntimeError: If the policy still changes after ``max_iter`` steps.
    """
    _check_problem(chain, costs, discount)
    if max_iter < 1:
        raise ValueError(f"max_iter: must be at least 1, got {max_iter}")
    transitions = chain.matrix()
    migration = _migration_matrix(costs)

    target = np.arange(chain.max_distance + 1, dtype=np.int64)
    for step in range(1, max_iter + 1):
        values = evaluate_policy(chain, costs, discount, target)
        decision = _decision_costs(transitions, migration, costs, discount, values)
        improved = _greedy(decision)
        if np.array_equal(improved, target):
            logger.debug("policy iteration settled after %d steps", step)
            return MdpSolution(values, target, step)
        target = improved
    raise RuntimeError(f"policy iteration still changing after max_iter={max_iter}")


@dataclass(frozen=True)
class _RingRecurrence:
    """General solution of a threshold policy's values on the symmetric 1-D ring.

    With ``g = discount``, ``p = move_prob / 2`` and ``b = 1 - g (1 - 2p)``, the
    values between the boundaries obey ``b V(d) - g p (V(d + 1) + V(d - 1)) =
    const + scale * power**d``, whose solutions are ``constant + geometric *
    power**d + c1 * small_root**d + c2 * big_root**(d - anchor)``. Measuring the
    growing term from ``anchor``, the far boundary, keeps both terms at most 1.
    """

    constant: float
    geometric: float
    power: float
    small_root: float
    big_root: float
    anchor: int

    def particular(self, distance: int) -> float:
        """The solution with ``c1 = c2 = 0``."""
        return self.constant + self.geometric * self.power**distance

    def homogeneous(self, distance: int) -> FloatArray:
        """The two free solutions, as the coefficients of ``c1`` and ``c2``."""
        return np.array(
            [self.small_root**distance, self.big_root ** (distance - self.anchor)]
        )


def _ring_recurrence(
    move_prob: float, discount: float, transmission: HopCost, anchor: int
) -> _RingRecurrence:
    """Solve the interior difference equation of a threshold policy on the ring."""
    step = discount * move_prob / 2
    centre = 1.0 - discount * (1.0 - move_prob)

    # A constant cost adds const / (1 - g); an exponential one adds a multiple of
    # power**d unless power is itself a root, where that multiple does not exist.
    geometric = 0.0
    if transmission.scale != 0.0:
        denominator = centre - step * (transmission.power + 1.0 / transmission.power)
        if abs(denominator) < 1e-12 * centre:
            raise ValueError(
                f"costs: transmission power {transmission.power} is a root of the "
                "walk's characteristic equation; the closed form does not cover it"
            )
        geometric = transmission.scale / denominator

    # Roots of g p m**2 - b m + g p = 0 multiply to 1, so one is below 1.
    big_root = (centre + math.sqrt(centre**2 - 4.0 * step**2)) / (2.0 * step)
    return _RingRecurrence(
        constant=transmission.const / (1.0 - discount),
        geometric=geometric,
        power=transmission.power,
        small_root=1.0 / big_root,
        big_root=big_root,
        anchor=anchor,
    )


def _solve_boundaries(
    recurrence: _RingRecurrence, conditions: list[tuple[dict[int, float], float]]
) -> FloatArray:
    """Return the free constants that meet two linear boundary conditions."""
    rows = np.zeros((2, 2))
    rhs = np.zeros(2)
    for i, (weights, value) in enumerate(conditions):
        for distance, weight in weights.items():
            rows[i] += weight * recurrence.homogeneous(distance)
        rhs[i] = value - sum(
            weight * recurrence.particular(distance)
            for distance, weight in weights.items()
        )
    return np.asarray(np.linalg.solve(rows, rhs), dtype=np.float64)


def _check_closed_form_args(
    move_prob: float, discount: float, threshold: int, max_distance: int
) -> None:
    """Reject arguments outside the range the closed form covers."""
    _check_move_prob(move_prob, allow_zero=False)
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount: must lie in (0, 1), got {discount}")
    _check_max_distance(max_distance)
    if not 1 <= threshold <= max_distance + 1:
        raise ValueError(
            f"threshold: must lie in 1..{max_distance + 1}, got {threshold}"
        )


def threshold_policy_values(
    move_prob: float,
    discount: float,
    threshold: int,
    max_distance: int,
    costs: CostConfig,
) -> FloatArray:
    """Closed-form values of a threshold policy on the symmetric 1-D ring.

    The policy stays while ``d < threshold`` and migrates the service to the
    user (distance 0) when ``d >= threshold``; ``threshold = max_distance + 1``
    never migrates. The user walks as in :meth:`DistanceChain.ring_1d`. With
    ``p = move_prob / 2`` and ``g = discount``, the values obey

    * ``V(d) = c_d(d) + g (p V(d+1) + p V(d-1) + (1 - 2p) V(d))`` for
      ``0 < d < min(threshold, D)``, solved in closed form as in Wang et al.'s
      1-D analysis;
    * ``V(0) = c_d(0) + g (2p V(1) + (1 - 2p) V(0))`` at the user's cell;
    * ``V(threshold) = c_m(threshold) + V(0)`` if the policy migrates, or, if it
      never does, ``V(D) = c_d(D) + g (p V(D-1) + (1 - p) V(D))`` at the far
      side of the ring.

    The two boundary conditions fix the two free constants (a 2 x 2 solve).

    Args:
        move_prob: Probability that the user moves in a slot, in (0, 1].
        discount: Per-slot discount factor in (0, 1).
        threshold: The distance N from which the policy migrates, 1..D + 1.
        max_distance: Largest distance D on the ring, at least 1.
        costs: Its ``distance`` shape is the transmission cost and its
            ``migration`` shape the migration cost; the weights are ignored,
            as in :func:`distance_costs`.

    Returns:
        Discounted cost from each starting distance 0..D, shape (D + 1,); beyond
        the threshold it is ``c_m(d) + V(0)``.

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    _check_closed_form_args(move_prob, discount, threshold, max_distance)
    anchor = min(threshold, max_distance)
    recurrence = _ring_recurrence(move_prob, discount, costs.distance, anchor)

    # Each boundary condition reads: sum of weight * V(distance) == value.
    step = discount * move_prob / 2
    at_user = {0: 1.0 - discount * (1.0 - move_prob), 1: -2.0 * step}
    conditions = [(at_user, costs.distance.at(0))]
    if threshold <= max_distance:
        conditions.append(({threshold: 1.0, 0: -1.0}, costs.migration.at(threshold)))
    else:
        far_side = {
            max_distance: 1.0 - discount * (1.0 - move_prob / 2),
            max_distance - 1: -step,
        }
        conditions.append((far_side, costs.distance.at(max_distance)))
    free = _solve_boundaries(recurrence, conditions)

    values = np.array(
        [
            recurrence.particular(d) + float(recurrence.homogeneous(d) @ free)
            for d in range(anchor + 1)
        ]
    )
    migrate_from = np.arange(anchor + 1, max_distance + 1)
    beyond = costs.migration.table(max_distance)[migrate_from] + values[0]
    return np.concatenate([values, beyond])


def best_threshold(
    move_prob: float, discount: float, max_distance: int, costs: CostConfig
) -> int:
    """Return the best threshold on the symmetric 1-D ring, from the closed form.

    Ranks every threshold 1..D + 1 of :func:`threshold_policy_values` by its
    values summed over all starting distances. When some threshold policy is
    optimal it is cheapest from every distance, so it ranks first. Near-ties go
    to the larger threshold, as :class:`MdpSolution` breaks ties towards staying.

    Args:
        move_prob: Probability that the user moves in a slot, in (0, 1].
        discount: Per-slot discount factor in (0, 1).
        max_distance: Largest distance D on the ring, at least 1.
        costs: Its ``distance`` shape is the transmission cost and its
            ``migration`` shape the migration cost; the weights are ignored,
            as in :func:`distance_costs`.

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    thresholds = range(1, max_distance + 2)
    totals = np.array(
        [
            threshold_policy_values(move_prob, discount, n, max_distance, costs).sum()
            for n in thresholds
        ]
    )
    best = totals.min()
    near_best = np.flatnonzero(totals <= best + _TIE_RTOL * (1.0 + abs(best)))
    return int(thresholds[near_best[-1]])
