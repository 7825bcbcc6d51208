"""Mobility sources: where each user attaches to the network, slot by slot.

A source moves a whole population at once with array operations, keeping
only a few numbers per user. Its randomness comes from :mod:`mecrl.rng`, so a
user's trajectory depends only on the key, its user id and the slot: user 7
walks the same way whether it is simulated alone or among 10,000 others.

Every source answers the same three calls::

    sites = source.reset(key, users)   # access site of each user at slot 0
    sites = source.advance()           # access sites at the next slot
    table = source.trace(key, users, n_slots)  # (n_slots, N), for oracles

Sources are registered in :data:`MOBILITY` by name and built from a
:class:`~mecrl.network.Topology` plus keyword parameters.
"""

from __future__ import annotations

import logging
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from mecrl.config import ConfigError, check
from mecrl.network import Topology
from mecrl.registry import Registry
from mecrl.rng import normals, uniforms

logger = logging.getLogger(__name__)

MOBILITY = Registry[Callable[..., "MobilitySource"]]("mobility source")
"""Mobility sources by name: ``random-walk``, ``random-waypoint``,
``gauss-markov`` and ``replay``."""

Sites = npt.NDArray[np.int64]
Points = npt.NDArray[np.float64]

# A distance below which a user counts as standing on its waypoint; it only
# guards the division that scales each step.
_TINY_M = 1e-9


class MobilitySource(ABC):
    """Access sites of a population of users over time.

    Subclasses implement :meth:`_start` and :meth:`_step`; this class checks
    the arguments, counts slots and hands out copies of the sites so callers
    may modify them freely.

    Args:
        topology: The sites users attach to.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._key: int | None = None
        self._users: Sites = np.empty(0, dtype=np.int64)
        self._slot = -1

    @property
    def slot(self) -> int:
        """Slot of the sites last returned; -1 before the first reset."""
        return self._slot

    def reset(self, key: int, users: npt.ArrayLike) -> Sites:
        """Start a new run and return each user's access site at slot 0.

        Args:
            key: Random key in [0, 2**64), usually from
                :func:`mecrl.rng.derive_key`.
            users: One-dimensional array of non-negative integer user ids.

        Returns:
            ``int64`` array of shape ``(len(users),)``.

        Raises:
            ValueError: If ``key`` or ``users`` is invalid.
        """
        self._key = _checked_key(key)
        self._users = _checked_users(users)
        self._slot = 0
        logger.debug("%s reset for %d users", type(self).__name__, len(self._users))
        return self._start(self._key, self._users).copy()

    def advance(self) -> Sites:
        """Move every user by one slot and return the new access sites.

        Raises:
            RuntimeError: If :meth:`reset` has not been called.
        """
        if self._key is None:
            raise RuntimeError("call reset before advance")
        sites = self._step(self._key, self._users, self._slot + 1)
        self._slot += 1
        return sites.copy()

    def trace(self, key: int, users: npt.ArrayLike, n_slots: int) -> Sites:
        """Return the access sites of a whole run, slot by slot.

        Args:
            key: As for :meth:`reset`.
            users: As for :meth:`reset`.
            n_slots: Number of slots, at least 1.

        Returns:
            ``int64`` array of shape ``(n_slots, len(users))`` whose row ``t``
            is what the ``t``-th call after :meth:`reset` would return.

        Raises:
            ValueError: If an argument is invalid.
        """
        _check_integer("n_slots", n_slots, minimum=1)
        first = self.reset(key, users)
        table = np.empty((n_slots, len(first)), dtype=np.int64)
        table[0] = first
        for slot in range(1, n_slots):
            table[slot] = self.advance()
        return table

    @abstractmethod
    def _start(self, key: int, users: Sites) -> Sites:
        """Set up the state of ``users`` and return their sites at slot 0."""

    @abstractmethod
    def _step(self, key: int, users: Sites, slot: int) -> Sites:
        """Move the users to ``slot`` and return their sites."""


class RandomWalk(MobilitySource):
    """A lazy random walk over the topology's movement neighbours.

    Each slot a user moves with probability ``move_prob``, to one of the
    ``K`` columns of the topology's movement table chosen uniformly; a ``-1``
    entry (the edge of the layout) means the user stays. On a line or ring
    that is ``move_prob / 2`` to each side, and on the hexagonal grid
    ``move_prob / 6`` to each of the six neighbours: the mobility models
    under which Wang et al. (IEEE/ACM ToN, 2019) solve the migration problem
    exactly. Moves are symmetric, so the uniform distribution over sites is
    stationary; on an irregular graph a site with fewer neighbours than
    ``K`` simply keeps its users longer.

    One uniform draw per user and slot decides both whether and where to
    move.

    Args:
        topology: Sites and their movement table.
        move_prob: Probability of leaving the current cell in a slot.
        start_site: Site of every user at slot 0; uniformly random if
            ``None``.

    Raises:
        ValueError: If ``move_prob`` is outside [0, 1] or ``start_site`` is
            not a site.
    """

    def __init__(
        self, topology: Topology, *, move_prob: float, start_site: int | None = None
    ) -> None:
        super().__init__(topology)
        check(
            _is_number(move_prob) and 0.0 <= move_prob <= 1.0,
            "move_prob",
            f"must be a probability in [0, 1], got {move_prob!r}",
        )
        if start_site is not None:
            _check_integer("start_site", start_site, minimum=0)
            check(
                start_site < topology.n_sites,
                "start_site",
                f"must be a site in [0, {topology.n_sites}), got {start_site}",
            )
        self.move_prob = float(move_prob)
        self.start_site = start_site
        self._sites: Sites = np.empty(0, dtype=np.int64)
        self._build_moves(topology.neighbours)

    def _build_moves(self, neighbours: Sites) -> None:
        """Flatten the movement table with an extra "stay" column at the end.

        A draw ``u`` picks column ``floor(u * K / move_prob)``, which is below
        ``K`` exactly when ``u < move_prob``; larger values are clipped to the
        stay column.
        """
        n_sites, width = neighbours.shape
        stay = np.arange(n_sites, dtype=np.int64)[:, None]
        moves = np.where(neighbours >= 0, neighbours, stay)
        if self.move_prob == 0.0:
            moves = np.broadcast_to(stay, moves.shape)
        self._moves = np.hstack((moves, stay)).ravel()
        self._width = width + 1
        self._scale = width / self.move_prob if self.move_prob > 0.0 else 0.0

    def _start(self, key: int, users: Sites) -> Sites:
        if self.start_site is not None:
            self._sites = np.full(len(users), self.start_site, dtype=np.int64)
        else:
            draw = uniforms(key, users, 0, 1)[:, 0]
            self._sites = (draw * self.topology.n_sites).astype(np.int64)
        return self._sites

    def _step(self, key: int, users: Sites, slot: int) -> Sites:
        draw = uniforms(key, users, slot, 1)[:, 0]
        draw *= self._scale
        column = np.minimum(draw, self._width - 1).astype(np.int64)
        self._sites = self._moves[self._sites * self._width + column]
        return self._sites


class _ContinuousSource(MobilitySource):
    """A source of users moving in the bounding box of the sites.

    Each user attaches to the site nearest to its position, found with a k-d
    tree built once.
    """

    def __init__(self, topology: Topology, *, slot_s: float) -> None:
        super().__init__(topology)
        _check_positive("slot_s", slot_s)
        self.slot_s = float(slot_s)
        self._low_m: Points = topology.positions_m.min(axis=0)
        self._span_m: Points = topology.positions_m.max(axis=0) - self._low_m
        self._tree = cKDTree(topology.positions_m)
        self._position_m: Points = np.empty((0, 2))

    @property
    def positions_m(self) -> Points:
        """Current ``(N, 2)`` positions of the users, a copy."""
        return self._position_m.copy()

    def _uniform_points(self, draws: Points) -> Points:
        """Map ``(N, 2)`` uniform draws to points of the bounding box."""
        return self._low_m + draws * self._span_m

    def _nearest_sites(self, positions_m: Points) -> Sites:
        _, nearest = self._tree.query(positions_m)
        return np.asarray(nearest, dtype=np.int64)


class RandomWaypoint(_ContinuousSource):
    """Random waypoint: straight trips between uniformly drawn points.

    Each user heads for a waypoint drawn uniformly in the bounding box of
    the sites, at a speed drawn uniformly in [``speed_min_mps``,
    ``speed_max_mps``], covering ``speed * slot_s`` metres per slot. On
    arrival it waits ``pause_slots`` slots, then sets off for a new waypoint
    at a new speed. Its access site is the site nearest to its position.

    Args:
        topology: Sites and their positions.
        slot_s: Length of a slot.
        speed_min_mps: Lowest trip speed; must be positive, because trips
            at speeds near zero never end and would slowly absorb every
            user (the known speed decay of this model).
        speed_max_mps: Highest trip speed.
        pause_slots: Slots spent at each waypoint.

    Raises:
        ValueError: If a parameter is out of range.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        slot_s: float,
        speed_min_mps: float = 1.0,
        speed_max_mps: float = 20.0,
        pause_slots: int = 0,
    ) -> None:
        super().__init__(topology, slot_s=slot_s)
        _check_positive("speed_min_mps", speed_min_mps)
        _check_positive("speed_max_mps", speed_max_mps)
        check(
            speed_max_mps >= speed_min_mps,
            "speed_max_mps",
            f"must be >= speed_min_mps ({speed_min_mps}), got {speed_max_mps}",
        )
        _check_integer("pause_slots", pause_slots, minimum=0)
        self.speed_min_mps = float(speed_min_mps)
        self.speed_max_mps = float(speed_max_mps)
        self.pause_slots = int(pause_slots)
        self._waypoint_m: Points = np.empty((0, 2))
        self._speed_mps = np.empty(0)
        self._pause = np.empty(0, dtype=np.int64)

    def _start(self, key: int, users: Sites) -> Sites:
        draws = uniforms(key, users, 0, 5)
        self._position_m = self._uniform_points(draws[:, 0:2])
        self._waypoint_m, self._speed_mps = self._trips(draws[:, 2:5])
        self._pause = np.zeros(len(users), dtype=np.int64)
        return self._nearest_sites(self._position_m)

    def _step(self, key: int, users: Sites, slot: int) -> Sites:
        moving = self._pause == 0
        offset_m = self._waypoint_m - self._position_m
        remaining_m = np.hypot(offset_m[:, 0], offset_m[:, 1])
        stride_m = self._speed_mps * self.slot_s
        arrived = moving & (remaining_m <= stride_m)

        # Travel a full stride towards the waypoint, or land on it.
        fraction = np.where(moving, stride_m / np.maximum(remaining_m, _TINY_M), 0.0)
        position_m = self._position_m + offset_m * fraction[:, None]
        self._position_m = np.where(arrived[:, None], self._waypoint_m, position_m)

        # Users already waiting count down; new arrivals start waiting and
        # know their next trip.
        self._pause = np.where(moving, 0, self._pause - 1)
        self._pause[arrived] = self.pause_slots
        waypoint_m, speed_mps = self._trips(uniforms(key, users, slot, 3))
        self._waypoint_m = np.where(arrived[:, None], waypoint_m, self._waypoint_m)
        self._speed_mps = np.where(arrived, speed_mps, self._speed_mps)
        return self._nearest_sites(self._position_m)

    def _trips(self, draws: Points) -> tuple[Points, npt.NDArray[np.float64]]:
        """Turn three uniform draws per user into a waypoint and a speed."""
        waypoint_m = self._uniform_points(draws[:, 0:2])
        speed_range = self.speed_max_mps - self.speed_min_mps
        return waypoint_m, self.speed_min_mps + draws[:, 2] * speed_range


class GaussMarkov(_ContinuousSource):
    """Gauss-Markov mobility: speed and heading with memory.

    Each slot a user first moves ``max(speed, 0) * slot_s`` metres along its
    heading, then updates both, with memory ``alpha`` (0: memoryless, 1:
    straight lines)::

        speed   <- alpha * speed + (1 - alpha) * mean_speed_mps
                   + sqrt(1 - alpha**2) * speed_std_mps * w1
        heading <- alpha * heading + (1 - alpha) * mean_heading
                   + sqrt(1 - alpha**2) * heading_std_rad * w2

    with ``w1``, ``w2`` standard normal and ``mean_heading`` drawn uniformly
    per user at the start. Users bounce off the bounding box of the sites
    like light off a mirror, and the mirror turns ``mean_heading`` too, so
    the memory does not push them back into the wall. The access site is the
    site nearest to the position.

    Args:
        topology: Sites and their positions.
        slot_s: Length of a slot.
        alpha: Memory of speed and heading, in [0, 1].
        mean_speed_mps: Long-run mean speed.
        speed_std_mps: Long-run standard deviation of the speed.
        heading_std_rad: Long-run standard deviation of the heading around
            its mean.

    Raises:
        ValueError: If a parameter is out of range.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        slot_s: float,
        alpha: float = 0.75,
        mean_speed_mps: float = 10.0,
        speed_std_mps: float = 2.0,
        heading_std_rad: float = math.pi / 4,
    ) -> None:
        super().__init__(topology, slot_s=slot_s)
        check(
            _is_number(alpha) and 0.0 <= alpha <= 1.0,
            "alpha",
            f"must be in [0, 1], got {alpha!r}",
        )
        _check_non_negative("mean_speed_mps", mean_speed_mps)
        _check_non_negative("speed_std_mps", speed_std_mps)
        _check_non_negative("heading_std_rad", heading_std_rad)
        self.alpha = float(alpha)
        self.mean_speed_mps = float(mean_speed_mps)
        self.speed_std_mps = float(speed_std_mps)
        self.heading_std_rad = float(heading_std_rad)
        self._speed_mps = np.empty(0)
        self._heading_rad = np.empty(0)
        self._mean_heading_rad = np.empty(0)

    def _start(self, key: int, users: Sites) -> Sites:
        draws = uniforms(key, users, 0, 3)
        self._position_m = self._uniform_points(draws[:, 0:2])
        self._mean_heading_rad = 2.0 * math.pi * draws[:, 2]
        self._heading_rad = self._mean_heading_rad.copy()
        noise = normals(key, users, 0, 1)[:, 0]
        self._speed_mps = self.mean_speed_mps + self.speed_std_mps * noise
        return self._nearest_sites(self._position_m)

    def _step(self, key: int, users: Sites, slot: int) -> Sites:
        stride_m = np.maximum(self._speed_mps, 0.0) * self.slot_s
        heading = self._heading_rad
        moved_m = self._position_m + stride_m[:, None] * np.column_stack(
            (np.cos(heading), np.sin(heading))
        )
        self._position_m = self._reflect(moved_m)
        self._update_velocity(normals(key, users, slot, 2))
        return self._nearest_sites(self._position_m)

    def _update_velocity(self, noise: Points) -> None:
        alpha = self.alpha
        innovation = math.sqrt(1.0 - alpha * alpha)
        self._speed_mps = (
            alpha * self._speed_mps
            + (1.0 - alpha) * self.mean_speed_mps
            + innovation * self.speed_std_mps * noise[:, 0]
        )
        self._heading_rad = (
            alpha * self._heading_rad
            + (1.0 - alpha) * self._mean_heading_rad
            + innovation * self.heading_std_rad * noise[:, 1]
        )

        # Shift both angles by the same whole turns so they stay small
        # without changing their difference.
        turns = np.round(self._mean_heading_rad / (2.0 * math.pi))
        self._mean_heading_rad -= 2.0 * math.pi * turns
        self._heading_rad -= 2.0 * math.pi * turns

    def _reflect(self, position_m: Points) -> Points:
        """Fold positions back into the box and mirror the headings."""
        folded_m = np.empty_like(position_m)
        for axis in (0, 1):
            low, span = self._low_m[axis], self._span_m[axis]
            if span == 0.0:
                folded_m[:, axis] = low
                continue
            # Unfold the box into a strip of mirrored copies; odd copies
            # are mirror images.
            copies = (position_m[:, axis] - low) / span
            index = np.floor(copies)
            within = copies - index
            mirrored = index % 2 == 1
            folded_m[:, axis] = low + span * np.where(mirrored, 1.0 - within, within)
            self._heading_rad = _mirror(self._heading_rad, mirrored, axis)
            self._mean_heading_rad = _mirror(self._mean_heading_rad, mirrored, axis)
        return folded_m


class Replay(MobilitySource):
    """Replay of recorded access sites, one column per user.

    ``sites[t, u]`` is the site of user ``u`` at slot ``t``; the user ids
    given to :meth:`reset` are column indices. ``-1`` marks a slot where the
    user was not seen: it keeps its last known site, and before its first
    appearance it takes the first site it was seen at. The key is ignored.

    Args:
        topology: The sites the trace refers to.
        sites: Integer array of shape ``(n_slots, n_users)``.

    Raises:
        ValueError: If ``sites`` is not a non-empty two-dimensional integer
            array or holds an id outside ``[-1, n_sites)``.
    """

    def __init__(self, topology: Topology, *, sites: npt.ArrayLike) -> None:
        super().__init__(topology)
        recorded = np.asarray(sites)
        check(
            recorded.ndim == 2 and recorded.size > 0,
            "sites",
            f"expected a non-empty (n_slots, n_users) array, got shape "
            f"{recorded.shape}",
        )
        check(
            recorded.dtype.kind in "iu",
            "sites",
            f"expected integer site ids, got dtype {recorded.dtype}",
        )
        n_sites = topology.n_sites
        bad = np.argwhere((recorded < -1) | (recorded >= n_sites))
        if len(bad):
            slot, user = bad[0].tolist()
            raise ConfigError(
                "sites",
                f"site ids must be -1 or in [0, {n_sites}); found "
                f"{recorded[slot, user]} at slot {slot}, user {user}",
            )
        self._recorded = recorded.astype(np.int64)
        seen = self._recorded >= 0
        first = self._recorded[seen.argmax(axis=0), np.arange(recorded.shape[1])]
        self._first_seen = np.where(seen.any(axis=0), first, -1)
        self._sites: Sites = np.empty(0, dtype=np.int64)

    @property
    def n_slots(self) -> int:
        """Number of recorded slots."""
        return len(self._recorded)

    @property
    def n_users(self) -> int:
        """Number of recorded users (columns)."""
        return int(self._recorded.shape[1])

    def trace(self, key: int, users: npt.ArrayLike, n_slots: int) -> Sites:
        """Return the replayed sites of ``n_slots`` slots; see the base class.

        Raises:
            ValueError: Also if more slots are asked for than were recorded.
        """
        _check_integer("n_slots", n_slots, minimum=1)
        check(
            n_slots <= self.n_slots,
            "n_slots",
            f"the trace records only {self.n_slots} slots, asked for {n_slots}",
        )
        return super().trace(key, users, n_slots)

    def _start(self, key: int, users: Sites) -> Sites:
        unknown = users[users >= self.n_users]
        if unknown.size:
            raise ConfigError(
                "users",
                f"the trace records users 0..{self.n_users - 1}, got user {unknown[0]}",
            )
        never_seen = users[self._first_seen[users] < 0]
        if never_seen.size:
            raise ConfigError(
                "users", f"user {never_seen[0]} never appears in the trace"
            )
        self._sites = self._first_seen[users]
        return self._step(key, users, 0)

    def _step(self, key: int, users: Sites, slot: int) -> Sites:
        if slot >= self.n_slots:
            raise ValueError(
                f"the trace records only {self.n_slots} slots; slot {slot} is "
                "past its end"
            )
        recorded = self._recorded[slot, users]
        self._sites = np.where(recorded >= 0, recorded, self._sites)
        return self._sites


def _mirror(
    angle_rad: npt.NDArray[np.float64], mirrored: npt.NDArray[np.bool_], axis: int
) -> npt.NDArray[np.float64]:
    """Mirror headings across a wall perpendicular to ``axis`` where asked."""
    # A vertical wall (x fixed) maps angle h to pi - h, a horizontal one to -h.
    offset = math.pi if axis == 0 else 0.0
    return np.where(mirrored, offset - angle_rad, angle_rad)


def _checked_key(key: Any) -> int:
    try:
        number = operator.index(key)
    except TypeError:
        raise ValueError(f"key must be an integer, got {key!r}") from None
    check(0 <= number < 2**64, "key", f"must be in [0, 2**64), got {number}")
    return number


def _checked_users(users: npt.ArrayLike) -> Sites:
    ids = np.asarray(users)
    check(
        ids.ndim == 1 and ids.dtype.kind in "iu",
        "users",
        f"expected a one-dimensional integer array, got dtype {ids.dtype} "
        f"with shape {ids.shape}",
    )
    check(not ids.size or ids.min() >= 0, "users", "ids must be non-negative")
    return ids.astype(np.int64)


def _is_number(value: Any) -> bool:
    is_real = isinstance(value, int | float | np.integer | np.floating)
    return is_real and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(name: str, value: Any) -> None:
    check(_is_number(value) and value > 0, name, f"must be > 0, got {value!r}")


def _check_non_negative(name: str, value: Any) -> None:
    check(_is_number(value) and value >= 0, name, f"must be >= 0, got {value!r}")


def _check_integer(name: str, value: Any, *, minimum: int) -> None:
    check(
        isinstance(value, int | np.integer) and not isinstance(value, bool),
        name,
        f"must be an integer, got {value!r}",
    )
    check(value >= minimum, name, f"must be at least {minimum}, got {value}")


MOBILITY.add("random-walk", RandomWalk)
MOBILITY.add("random-waypoint", RandomWaypoint)
MOBILITY.add("gauss-markov", GaussMarkov)
MOBILITY.add("replay", Replay)
