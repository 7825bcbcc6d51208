"""Planning over futures drawn from the mobility model.

A planner that knows how users move (the scenario's mobility model) and
where each user is and how fast it goes, but not where it will go, draws
futures of each user and plans the service's next slots at their mean
cost. ``mecrl evaluate --predictive`` runs such a planner as a yardstick
for online policies; the observation can carry its verdict on every
candidate (``ScenarioConfig.plan_window_slots``), for a policy to learn
from and improve on.

Planning at the mean cost, the planner never plans on learning more later
(it would rather wait and see where a user turns), which is where a
learned policy can do better than it.
"""

from __future__ import annotations

import zlib

import numpy as np

from mecrl.mobility import RandomWaypoint
from mecrl.problem import cost_tables
from mecrl.scenario import Scenario

_PLAN_DOMAIN = 0x5EED_F00D
"""Mixed into the seed of the observation planner's draws."""


def mean_placement_costs(
    placement: np.ndarray, cls: np.ndarray, futures: np.ndarray
) -> np.ndarray:
    """Return each service's placement cost per slot, averaged over its futures.

    Args:
        placement: ``(C, A, M)`` weighted placement cost per class, access
            site and site; +inf where the class may not run.
        cls: ``(N,)`` class of each service.
        futures: ``(N, F, W)`` access sites of F drawn futures of W slots.

    Returns:
        ``(N, W, M)`` mean cost; +inf at a site where some drawn access
        site makes the placement impossible.
    """
    n, n_futures, window = futures.shape
    n_access = placement.shape[1]
    # the share of futures at each access site, slot by slot: a product with
    # the cost table then averages without gathering (N, F, W, M) costs
    cell = (np.arange(n)[:, None, None] * window + np.arange(window)) * n_access
    counts = np.bincount(
        (cell + futures).ravel(), minlength=n * window * n_access
    ).reshape(n, window, n_access)
    share = counts / n_futures
    impossible = ~np.isfinite(placement)
    finite = np.where(impossible, 0.0, placement)
    mean = share @ finite[cls]
    blocked = (share @ impossible[cls].astype(np.float64)) > 0
    mean[blocked] = np.inf
    return mean


def first_step_costs(
    slot_cost: np.ndarray,
    future_cost: np.ndarray,
    move_cost: np.ndarray,
    current: np.ndarray,
) -> np.ndarray:
    """Return the cost of the cheapest plan that starts at each site.

    Backward induction over the slots ahead: each site's cost to go is its
    slot's cost plus the cheapest move and cost to go of the next slot.

    Args:
        slot_cost: ``(N, M)`` placement cost of this slot.
        future_cost: ``(N, W, M)`` placement cost of the W slots after it.
        move_cost: ``(N, M, M)`` cost of each move, per service.
        current: ``(N,)`` where each service runs now.

    Returns:
        ``(N, M)`` the move there, this slot there, and the best plan on.
    """
    n = slot_cost.shape[0]
    to_go = np.zeros_like(slot_cost)
    for slot in range(future_cost.shape[1] - 1, -1, -1):
        to_go = future_cost[:, slot] + (move_cost + to_go[:, None, :]).min(axis=2)
    if future_cost.shape[1]:
        to_go = (move_cost + to_go[:, None, :]).min(axis=2)
    return move_cost[np.arange(n), current] + slot_cost + to_go


def drawable_mobility(scenario: Scenario) -> RandomWaypoint:
    """Return a fresh mobility source of ``scenario`` that can draw futures.

    Raises:
        ValueError: If the scenario's users move by another model.
    """
    mobility = scenario.make_mobility()
    if not isinstance(mobility, RandomWaypoint):
        raise ValueError(
            f"the model-predictive planner draws futures of random-waypoint "
            f"users; scenario {scenario.config.name!r} uses "
            f"{scenario.config.mobility.kind!r}"
        )
    return mobility


class FuturePlanner:
    """Plans each service's next slots over futures of its user.

    Args:
        scenario: The built scenario; its mobility must draw futures.
        window_slots: Slots planned, this one included.
        n_futures: Futures drawn per user and slot.

    Raises:
        ValueError: If the scenario's users cannot be drawn forward, or an
            argument is below 1.
    """

    def __init__(self, scenario: Scenario, window_slots: int, n_futures: int) -> None:
        if window_slots < 1 or n_futures < 1:
            raise ValueError(
                f"window_slots and n_futures must be >= 1, got {window_slots} "
                f"and {n_futures}"
            )
        self.scenario = scenario
        self.mobility = drawable_mobility(scenario)
        self.window_slots = window_slots
        self.n_futures = n_futures
        self.tables = cost_tables(scenario)

    def first_step_costs(
        self,
        cls: np.ndarray,
        access: np.ndarray,
        current: np.ndarray,
        slot: int,
        position_m: np.ndarray,
        velocity_mps: np.ndarray,
    ) -> np.ndarray:
        """Return ``(N, M)`` the planned cost through each site this slot.

        The window stops at the episode's end. The draws are seeded by the
        slot and the users' positions, so the same state always gets the
        same plan; a service's draws do depend on the others planned with
        it, through that seed.
        """
        ahead = min(self.window_slots, self.scenario.config.episode_slots - slot) - 1
        seed = zlib.crc32(np.ascontiguousarray(position_m, np.float64).tobytes())
        rng = np.random.default_rng([_PLAN_DOMAIN, max(slot, 0), seed])
        futures = self.mobility.sample_access(
            position_m, velocity_mps, max(ahead, 0), self.n_futures, rng
        )
        placement = self.tables.placement
        return first_step_costs(
            placement[cls, access],
            mean_placement_costs(placement, cls, futures),
            self.tables.move[cls],
            current,
        )
