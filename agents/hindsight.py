"""The cheapest placement in hindsight: a lower bound for any online policy.

Given the cost of every site at every slot in advance, the cheapest sequence of
sites ``s_0 .. s_{T-1}`` for a service that starts at ``s_{-1}`` minimises

    sum over t of discount**t * (slot_cost[t, s_t] + migration_cost[s_{t-1}, s_t]).

That is a shortest path through the time-expanded graph whose nodes are (slot,
site) pairs, found here by dynamic programming over slots, vectorised over
services and sites. An infinite cost marks a site that cannot host the service at
that slot, or a move that is not allowed.

Cost: time O(N T M^2) and memory O(N M^2) for one slot's candidate moves, plus
the back-pointers, (N, T, M) int32 (4 bytes each: 1,000 services over 1,000 slots
and 100 sites take 400 MB). Splitting services into batches bounds both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class HindsightPlan:
    """The cheapest site sequence of each service."""

    total_cost: FloatArray
    """Discounted cost of the cheapest sequence, shape (N,)."""

    sites: IntArray
    """Site of each service at each slot along that sequence, shape (N, T)."""


def _slot_array(slot_cost: npt.ArrayLike) -> FloatArray:
    """Return slot costs as (K, T, M), K = 1 when shared by all services."""
    array = np.asarray(slot_cost, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"slot_cost: must be (T, M) or (N, T, M), got {array.shape}")
    if array.shape[-2] == 0 or array.shape[-1] == 0:
        raise ValueError(f"slot_cost: needs a slot and a site, got {array.shape}")
    if np.isnan(array).any():
        raise ValueError("slot_cost: NaN is not a cost; mark infeasible sites with inf")
    if np.isneginf(array).any():
        raise ValueError("slot_cost: -inf is not a cost")
    return array if array.ndim == 3 else array[None]


def _migration_array(migration_cost: npt.ArrayLike, n_sites: int) -> FloatArray:
    """Return migration costs as (K, M, M), K = 1 when shared by all services."""
    array = np.asarray(migration_cost, dtype=np.float64)
    if array.ndim not in (2, 3) or array.shape[-2:] != (n_sites, n_sites):
        raise ValueError(
            f"migration_cost: must be (M, M) or (N, M, M) with M = {n_sites} "
            f"sites, got {array.shape}"
        )
    if np.isnan(array).any() or np.isneginf(array).any():
        raise ValueError("migration_cost: NaN and -inf are not costs")
    if np.any(np.diagonal(array, axis1=-2, axis2=-1) != 0.0):
        raise ValueError("migration_cost: staying put (the diagonal) must cost 0")
    return array if array.ndim == 3 else array[None]


def _site_array(
    value: npt.ArrayLike, name: str, n_sites: int, shared_ndim: int
) -> IntArray:
    """Return site indices with a leading service axis of size K (1 if shared)."""
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: must hold integer site indices, got {array.dtype}")
    if array.ndim not in (shared_ndim, shared_ndim + 1):
        raise ValueError(
            f"{name}: must have {shared_ndim} or {shared_ndim + 1} dimensions, "
            f"got shape {array.shape}"
        )
    if np.any((array < 0) | (array >= n_sites)):
        raise ValueError(f"{name}: site indices must lie in 0..{n_sites - 1}")
    array = array.astype(np.int64)
    return array if array.ndim == shared_ndim + 1 else array[None]


def _check_discount(discount: float) -> None:
    """Reject a discount outside (0, 1]."""
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount: must lie in (0, 1], got {discount}")


def _service_count(**batch_sizes: int) -> int:
    """Return the number of services; each argument holds it or 1 (shared)."""
    count = max(batch_sizes.values())
    for name, size in batch_sizes.items():
        if size not in (1, count):
            raise ValueError(
                f"{name}: holds {size} services but another argument holds {count}"
            )
    return count


def _discounted(cost: FloatArray, weight: float | FloatArray) -> FloatArray:
    """Return ``weight * cost``, keeping inf where the weight underflows to 0."""
    infinite = np.isinf(cost)
    return np.where(infinite, cost, weight * np.where(infinite, 0.0, cost))


def _raise_if_stuck(arrival_cost: FloatArray, slot: int) -> None:
    """Raise if some service can be at no site at ``slot``."""
    stuck = np.flatnonzero(np.isinf(arrival_cost).all(axis=1))
    if stuck.size:
        raise ValueError(
            f"slot_cost: service {stuck[0]} has no feasible site sequence; at slot "
            f"{slot} every site is infeasible or unreachable"
        )


def _backtrack(back: npt.NDArray[np.int32], last_site: IntArray) -> IntArray:
    """Follow back-pointers from the last slot to the first."""
    n_services, horizon, _ = back.shape
    services = np.arange(n_services)
    sites = np.empty((n_services, horizon), dtype=np.int64)
    sites[:, -1] = last_site
    for slot in range(horizon - 1, 0, -1):
        sites[:, slot - 1] = back[services, slot, sites[:, slot]]
    return sites


def hindsight_optimum(
    slot_cost: npt.ArrayLike,
    migration_cost: npt.ArrayLike,
    initial_site: npt.ArrayLike,
    discount: float = 1.0,
) -> HindsightPlan:
    """Return the cheapest site sequence of each service, knowing all costs.

    Args:
        slot_cost: Cost of hosting the service at each site in each slot, (T, M)
            shared by all services or (N, T, M); inf marks an infeasible site.
        migration_cost: Cost of moving from site a to site b, (M, M) shared or
            (N, M, M); the diagonal must be 0 and inf forbids a move.
        initial_site: Site each service starts at before slot 0, an int shared
            by all services or (N,) ints.
        discount: Weight of slot t is ``discount**t``, in (0, 1].

    Returns:
        Total cost (N,) and sites (N, T); N is 1 when no argument has a service
        axis. Among equally cheap sequences the lower site index wins.

    Raises:
        ValueError: If an argument is malformed (the message names it), or if
            some service has no sequence of finite cost (the message names the
            service and the first slot at which every site is out of reach).
    """
    slot = _slot_array(slot_cost)
    n_sites = slot.shape[2]
    migration = _migration_array(migration_cost, n_sites)
    initial = _site_array(initial_site, "initial_site", n_sites, shared_ndim=0)
    _check_discount(discount)
    n_services = _service_count(
        slot_cost=slot.shape[0],
        migration_cost=migration.shape[0],
        initial_site=initial.shape[0],
    )
    horizon = slot.shape[1]
    slot = np.broadcast_to(slot, (n_services, horizon, n_sites))
    initial = np.broadcast_to(initial, (n_services,))

    # Cheapest cost of reaching each site by the end of the slot just processed;
    # before slot 0 only the initial site is reachable, at no cost.
    arrival = np.full((n_services, n_sites), np.inf)
    arrival[np.arange(n_services), initial] = 0.0
    back = np.empty((n_services, horizon, n_sites), dtype=np.int32)
    for t in range(horizon):
        weight = discount**t
        via = arrival[:, :, None] + _discounted(migration, weight)
        back[:, t] = via.argmin(axis=1)
        arrival = np.take_along_axis(via, back[:, t][:, None, :], axis=1)[:, 0]
        arrival = arrival + _discounted(slot[:, t], weight)
        _raise_if_stuck(arrival, t)

    return HindsightPlan(
        total_cost=arrival.min(axis=1),
        sites=_backtrack(back, arrival.argmin(axis=1)),
    )


def path_cost(
    slot_cost: npt.ArrayLike,
    migration_cost: npt.ArrayLike,
    initial_site: npt.ArrayLike,
    sites: npt.ArrayLike,
    discount: float = 1.0,
) -> FloatArray:
    """Return the discounted cost of given site sequences.

    Uses the same arguments and cost convention as :func:`hindsight_optimum`.

    Args:
        slot_cost: (T, M) shared or (N, T, M) costs; inf marks infeasible.
        migration_cost: (M, M) shared or (N, M, M) costs with a zero diagonal.
        initial_site: Site before slot 0, an int or (N,) ints.
        sites: Site at each slot, (T,) shared or (N, T) ints.
        discount: Weight of slot t is ``discount**t``, in (0, 1].

    Returns:
        Cost of each sequence, shape (N,); inf if it uses an infeasible site or a
        forbidden move.

    Raises:
        ValueError: If an argument is malformed; the message names it.
    """
    slot = _slot_array(slot_cost)
    n_sites = slot.shape[2]
    migration = _migration_array(migration_cost, n_sites)
    initial = _site_array(initial_site, "initial_site", n_sites, shared_ndim=0)
    path = _site_array(sites, "sites", n_sites, shared_ndim=1)
    _check_discount(discount)
    horizon = slot.shape[1]
    if path.shape[1] != horizon:
        raise ValueError(f"sites: must cover {horizon} slots, got {path.shape[1]}")
    n_services = _service_count(
        slot_cost=slot.shape[0],
        migration_cost=migration.shape[0],
        initial_site=initial.shape[0],
        sites=path.shape[0],
    )

    # Broadcasting shared arguments makes views, not copies.
    path = np.broadcast_to(path, (n_services, horizon))
    initial = np.broadcast_to(initial, (n_services,))
    slot = np.broadcast_to(slot, (n_services, horizon, n_sites))
    migration = np.broadcast_to(migration, (n_services, n_sites, n_sites))
    previous = np.concatenate([initial[:, None], path[:, :-1]], axis=1)
    services = np.arange(n_services)[:, None]
    per_slot = (
        slot[services, np.arange(horizon)[None, :], path]
        + migration[services, previous, path]
    )
    weights = discount ** np.arange(horizon, dtype=np.float64)
    total: FloatArray = _discounted(per_slot, weights).sum(axis=1)
    return total


def lookahead_sites(
    slot_cost: npt.ArrayLike,
    migration_cost: npt.ArrayLike,
    initial_site: npt.ArrayLike,
    window: int,
) -> IntArray:
    """Place services by replanning each slot with ``window`` slots of foresight.

    At every slot the cheapest sequence over the next ``window`` slots is
    planned from where the service runs, counting nothing beyond them; its
    first step is taken and the plan is made again at the next slot. A
    window of one slot picks the cheapest next slot among all sites; a window
    as long as the episode follows the hindsight optimum. In between it
    tells what predicting the user ``window`` slots ahead, exactly, would be
    worth. No online policy knows that much, so this is a yardstick, not a
    policy.

    Args:
        slot_cost: As for :func:`hindsight_optimum`.
        migration_cost: As for :func:`hindsight_optimum`.
        initial_site: As for :func:`hindsight_optimum`.
        window: Slots planned at each step, >= 1.

    Returns:
        Sites (N, T) of each service at each slot.

    Raises:
        ValueError: If an argument is malformed or ``window`` < 1.
    """
    if window < 1:
        raise ValueError(f"window: must be >= 1 slot, got {window}")
    slot = _slot_array(slot_cost)
    n_sites = slot.shape[2]
    migration = _migration_array(migration_cost, n_sites)
    initial = _site_array(initial_site, "initial_site", n_sites, shared_ndim=0)
    n_services = _service_count(
        slot_cost=slot.shape[0],
        migration_cost=migration.shape[0],
        initial_site=initial.shape[0],
    )
    horizon = slot.shape[1]
    initial = np.broadcast_to(initial, (n_services,))

    # a site that no slot allows never enters a plan: leaving it out of the
    # dynamic programme saves its row and column of moves
    keep = np.union1d(np.flatnonzero(np.isfinite(slot).any(axis=(0, 1))), initial)
    slot = np.broadcast_to(slot[:, :, keep], (n_services, horizon, len(keep)))
    migration = migration[:, keep][:, :, keep]

    current = np.searchsorted(keep, initial)
    sites = np.empty((n_services, horizon), dtype=np.int64)
    for t in range(horizon):
        plan = hindsight_optimum(slot[:, t : t + window], migration, current)
        current = plan.sites[:, 0]
        sites[:, t] = keep[current]
    return sites
