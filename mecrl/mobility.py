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

The one-service environment advances a single user per step, where array
operations cost more than the arithmetic they do. Each random source
therefore also has a scalar step for a population of one, which repeats the
array step operation for operation in Python floats (and NumPy's own
functions wherever they could round differently from :mod:`math`), so a
user's trajectory stays the same to the last bit.
"""

from __future__ import annotations

import logging
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from mecrl.config import (
    ConfigError,
    check,
    check_integer,
    check_non_negative,
    check_positive,
    is_number,
)
from mecrl.network import Topology
from mecrl.registry import Registry
from mecrl.rng import SlotDraws, normals, uniforms

logger = logging.getLogger(__name__)

MOBILITY = Registry[Callable[..., "MobilitySource"]]("mobility source")
"""Mobility sources by name: ``random-walk``, ``random-waypoint``,
``gauss-markov`` and ``replay``."""

Sites = npt.NDArray[np.int64]
Points = npt.NDArray[np.float64]

# A distance below which a user counts as standing on its waypoint; it only
# guards the division that scales each step.
_TINY_M = 1e-9

# Two sites whose squared distances to a point differ by less than this
# fraction count as tied; rounding alone moves them by about 1e-16.
_TIE_FRACTION = 1e-9

# The site grid has about this many cells per site, and at most _GRID_CELLS.
_CELLS_PER_SITE = 64
_GRID_CELLS = 65_536

# Sites the grid considers per cell; a cell that could need more is left to
# the k-d tree.
_GRID_CANDIDATES = 8


class MobilitySource(ABC):
    """Access sites of a population of users over time.

    Subclasses implement :meth:`_start` and :meth:`_step`; this class checks
    the arguments, counts slots and hands out copies of the sites so callers
    may modify them freely.

    Args:
        topology: The sites users attach to.
    """

    reports_positions: ClassVar[bool] = False
    """Whether :attr:`positions_m` gives the users' positions, not None."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._key: int | None = None
        self._users: Sites = np.empty(0, dtype=np.int64)
        self._slot = -1

    @property
    def slot(self) -> int:
        """Slot of the sites last returned; -1 before the first reset."""
        return self._slot

    @property
    def positions_m(self) -> Points | None:
        """``(N, 2)`` user positions of the last slot returned, or None.

        A copy; None for a source that knows only access sites.
        """
        return None

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
        sites = self._step(self._slot + 1)
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
        check_integer("n_slots", n_slots, minimum=1)
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
    def _step(self, slot: int) -> Sites:
        """Move the users of the last reset to ``slot`` and return their sites."""


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
            is_number(move_prob) and 0.0 <= move_prob <= 1.0,
            "move_prob",
            f"must be a probability in [0, 1], got {move_prob!r}",
        )
        if start_site is not None:
            check_integer("start_site", start_site, minimum=0)
            check(
                start_site < topology.n_sites,
                "start_site",
                f"must be a site in [0, {topology.n_sites}), got {start_site}",
            )
        self.move_prob = float(move_prob)
        self.start_site = start_site
        self._sites: Sites = np.empty(0, dtype=np.int64)
        self._draws = SlotDraws(0, np.empty(0, dtype=np.int64), 1)
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
        self._move_list: list[int] = self._moves.tolist()
        self._width = width + 1
        self._scale = width / self.move_prob if self.move_prob > 0.0 else 0.0

    def _start(self, key: int, users: Sites) -> Sites:
        self._draws = SlotDraws(key, users, 1)
        if self.start_site is not None:
            self._sites = np.full(len(users), self.start_site, dtype=np.int64)
        else:
            draw = uniforms(key, users, 0, 1)[:, 0]
            self._sites = (draw * self.topology.n_sites).astype(np.int64)
        return self._sites

    def _step(self, slot: int) -> Sites:
        draw = self._draws.at(slot)[:, 0]
        if len(draw) == 1:
            # The array step below, in Python numbers for a single user.
            column = int(min(float(draw[0]) * self._scale, self._width - 1))
            site = self._move_list[int(self._sites[0]) * self._width + column]
            self._sites = np.array([site], dtype=np.int64)
            return self._sites
        column = np.minimum(draw * self._scale, self._width - 1).astype(np.int64)
        self._sites = self._moves[self._sites * self._width + column]
        return self._sites


class _SiteGrid:
    """The nearest site to points: what a k-d tree query returns, but faster.

    ``cKDTree.query`` costs about 170 ns per point and 9 µs per call, too much
    for a single user per step and most of a 10,000-user step. This grid over
    the bounding box of the sites lists, for each cell, every site that can be
    nearest to a point of the cell: those within ``d + 2 h`` of its centre,
    where ``d`` is the distance from the centre to its nearest site and ``h``
    half the diagonal of the cell, enlarged a little against rounding. Most
    cells list one site, which is then the answer. Elsewhere the listed sites
    are compared, and a point whose two nearest sites are nearly tied, that
    lies outside the grid, or whose cell could list more than
    ``_GRID_CANDIDATES`` sites, is left to the tree, so every answer, ties
    included, is the tree's.

    Args:
        positions_m: ``(M, 2)`` site positions.
    """

    def __init__(self, positions_m: Points) -> None:
        self._tree = cKDTree(positions_m)
        n_sites = len(positions_m)

        # A box slightly larger than the sites', cut into near-square cells;
        # the second bound on the cell keeps a flat box from needing more
        # cells than asked for.
        low_m, high_m = positions_m.min(axis=0), positions_m.max(axis=0)
        pad_m = 1e-6 * max(float((high_m - low_m).max()), 1.0)
        low_m, span_m = low_m - pad_m, high_m - low_m + 2.0 * pad_m
        n_cells = min(_CELLS_PER_SITE * n_sites, _GRID_CELLS)
        cell_m = max(math.sqrt(span_m.prod() / n_cells), span_m.max() / n_cells)
        shape = np.ceil(span_m / cell_m).astype(np.int64)
        size_m = span_m / shape
        self._box: list[float] = [*low_m.tolist(), *(shape / span_m).tolist()]
        self._n_columns, self._n_rows = int(shape[0]), int(shape[1])

        # Candidates of each cell, nearest first, padded with the sentinel
        # site n_sites, which lies infinitely far away. The half diagonal
        # grows by a millionth to cover points rounded into the cell, the
        # reach by a billionth to cover rounded distances.
        axes = [low_m[a] + (np.arange(shape[a]) + 0.5) * size_m[a] for a in (0, 1)]
        centres_m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        k = min(_GRID_CANDIDATES, n_sites)
        distance_m, index = self._tree.query(centres_m.reshape(-1, 2), k=k)
        distance_m = distance_m.reshape(-1, k)
        half_m = (1.0 + 1e-6) * math.hypot(*size_m.tolist()) / 2.0
        reach_m = (distance_m[:, :1] + 2.0 * half_m) * (1.0 + 1e-9)
        listed = distance_m <= reach_m
        self._count = listed.sum(axis=1)
        if k < n_sites:
            self._count[listed[:, -1]] = 0
        width = max(1, int(self._count.max()))
        self._table = np.where(listed, index.reshape(-1, k), n_sites)[:, :width]
        self._x_m = np.append(positions_m[:, 0], np.inf)
        self._y_m = np.append(positions_m[:, 1], np.inf)

        # The same tables in Python numbers, for one point at a time.
        self._count_list: list[int] = self._count.tolist()
        self._first_list: list[int] = self._table[:, 0].tolist()
        self._x_list: list[float] = self._x_m.tolist()
        self._y_list: list[float] = self._y_m.tolist()

    def sites(self, positions_m: Points) -> Sites:
        """Return the nearest site to each row of an ``(N, 2)`` array."""
        # Columns one at a time: operations along the short axis are slow.
        low_x_m, low_y_m, scale_x, scale_y = self._box
        x_m, y_m = positions_m[:, 0], positions_m[:, 1]
        column, row = (x_m - low_x_m) * scale_x, (y_m - low_y_m) * scale_y
        inside = (column >= 0.0) & (column < self._n_columns)
        inside &= (row >= 0.0) & (row < self._n_rows)
        cell = np.clip(column, 0, self._n_columns - 1).astype(np.int64) * self._n_rows
        cell += np.clip(row, 0, self._n_rows - 1).astype(np.int64)
        count = np.where(inside, self._count[cell], 0)
        nearest = self._table[cell, 0]

        # Where a cell lists several sites, keep the nearest and the
        # squared distance of the runner-up.
        several = np.flatnonzero(count > 1)
        candidates = self._table[cell[several]]
        x_m, y_m = x_m[several], y_m[several]
        best = candidates[:, 0]
        least = (self._x_m[best] - x_m) ** 2 + (self._y_m[best] - y_m) ** 2
        second = np.full(len(several), np.inf)
        for site in candidates[:, 1:].T:
            squared = (self._x_m[site] - x_m) ** 2 + (self._y_m[site] - y_m) ** 2
            closer = squared < least
            second = np.where(closer, least, np.minimum(second, squared))
            best = np.where(closer, site, best)
            least = np.where(closer, squared, least)
        nearest[several] = best

        # The tree answers the rest.
        clear = second > least * (1.0 + _TIE_FRACTION)
        unsure = np.concatenate((np.flatnonzero(count == 0), several[~clear]))
        if len(unsure):
            nearest[unsure] = self._tree.query(positions_m[unsure])[1]
        return nearest

    def site(self, x_m: float, y_m: float) -> int:
        """Return the nearest site to one point, as :meth:`sites` does."""
        low_x_m, low_y_m, scale_x, scale_y = self._box
        column, row = (x_m - low_x_m) * scale_x, (y_m - low_y_m) * scale_y
        if 0.0 <= column < self._n_columns and 0.0 <= row < self._n_rows:
            cell = int(column) * self._n_rows + int(row)
            count = self._count_list[cell]
            if count == 1:
                return self._first_list[cell]
            if count > 1:
                best, least, second = -1, math.inf, math.inf
                for site in self._table[cell].tolist():
                    dx_m, dy_m = self._x_list[site] - x_m, self._y_list[site] - y_m
                    squared = dx_m * dx_m + dy_m * dy_m
                    if squared < least:
                        best, least, second = site, squared, least
                    elif squared < second:
                        second = squared
                if second > least * (1.0 + _TIE_FRACTION):
                    return best
        return int(self._tree.query((x_m, y_m))[1])


class _ContinuousSource(MobilitySource):
    """A source of users moving in the bounding box of the sites.

    Each user attaches to the site nearest to its position, found with a
    :class:`_SiteGrid` built once.
    """

    reports_positions: ClassVar[bool] = True

    def __init__(self, topology: Topology, *, slot_s: float) -> None:
        super().__init__(topology)
        check_positive("slot_s", slot_s)
        self.slot_s = float(slot_s)
        self._low_m: Points = topology.positions_m.min(axis=0)
        self._span_m: Points = topology.positions_m.max(axis=0) - self._low_m
        # The box again in Python floats, for the scalar steps.
        self._low_xy: list[float] = self._low_m.tolist()
        self._span_xy: list[float] = self._span_m.tolist()
        self._grid = _SiteGrid(topology.positions_m)
        self._position_m: Points = np.empty((0, 2))

    @property
    def positions_m(self) -> Points:
        """Current ``(N, 2)`` positions of the users, a copy."""
        return self._position_m.copy()

    def _uniform_points(self, draws: Points) -> Points:
        """Map ``(N, 2)`` uniform draws to points of the bounding box."""
        return self._low_m + draws * self._span_m

    def _nearest_sites(self, positions_m: Points) -> Sites:
        return self._grid.sites(positions_m)

    def _nearest_site(self, x_m: float, y_m: float) -> Sites:
        """Return the site nearest to one point, as a one-element array."""
        return np.array([self._grid.site(x_m, y_m)], dtype=np.int64)


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
        check_positive("speed_min_mps", speed_min_mps)
        check_positive("speed_max_mps", speed_max_mps)
        check(
            speed_max_mps >= speed_min_mps,
            "speed_max_mps",
            f"must be >= speed_min_mps ({speed_min_mps}), got {speed_max_mps}",
        )
        check_integer("pause_slots", pause_slots, minimum=0)
        self.speed_min_mps = float(speed_min_mps)
        self.speed_max_mps = float(speed_max_mps)
        self.pause_slots = int(pause_slots)
        self._waypoint_m: Points = np.empty((0, 2))
        self._speed_mps = np.empty(0)
        self._pause = np.empty(0, dtype=np.int64)
        self._draws = SlotDraws(0, np.empty(0, dtype=np.int64), 3)

    def _start(self, key: int, users: Sites) -> Sites:
        draws = uniforms(key, users, 0, 5)
        self._position_m = self._uniform_points(draws[:, 0:2])
        self._waypoint_m, self._speed_mps = self._trips(draws[:, 2:5])
        self._pause = np.zeros(len(users), dtype=np.int64)
        self._draws = SlotDraws(key, users, 3)
        return self._nearest_sites(self._position_m)

    def _step(self, slot: int) -> Sites:
        draws = self._draws.at(slot)
        if len(draws) == 1:
            return self._step_one(draws[0].tolist())
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
        waypoint_m, speed_mps = self._trips(draws)
        self._waypoint_m = np.where(arrived[:, None], waypoint_m, self._waypoint_m)
        self._speed_mps = np.where(arrived, speed_mps, self._speed_mps)
        return self._nearest_sites(self._position_m)

    def _step_one(self, draws: list[float]) -> Sites:
        """:meth:`_step` for a single user, in Python floats."""
        x_m, y_m = self._position_m[0].tolist()
        to_x_m, to_y_m = self._waypoint_m[0].tolist()
        speed_mps, pause = float(self._speed_mps[0]), int(self._pause[0])

        # As in the array step, a waiting user moves by a zero offset.
        offset_x_m, offset_y_m = to_x_m - x_m, to_y_m - y_m
        stride_m = speed_mps * self.slot_s
        arrived, fraction = False, 0.0
        if pause == 0:
            remaining_m = float(np.hypot(offset_x_m, offset_y_m))
            arrived = remaining_m <= stride_m
            fraction = stride_m / max(remaining_m, _TINY_M)
        if arrived:
            x_m, y_m = to_x_m, to_y_m
        else:
            x_m, y_m = x_m + offset_x_m * fraction, y_m + offset_y_m * fraction
        self._position_m = np.array([[x_m, y_m]])

        if arrived:
            self._pause[0] = self.pause_slots
            (low_x_m, low_y_m), (span_x_m, span_y_m) = self._low_xy, self._span_xy
            self._waypoint_m = np.array(
                [[low_x_m + draws[0] * span_x_m, low_y_m + draws[1] * span_y_m]]
            )
            speed_range = self.speed_max_mps - self.speed_min_mps
            self._speed_mps[0] = self.speed_min_mps + draws[2] * speed_range
        elif pause > 0:
            self._pause[0] = pause - 1
        return self._nearest_site(x_m, y_m)

    def sample_access(
        self,
        position_m: Points,
        velocity_mps: Points,
        n_slots: int,
        n_samples: int,
        rng: np.random.Generator,
    ) -> Sites:
        """Draw access sites users could have over the next ``n_slots`` slots.

        What an observer who knows this model, and each user's position and
        velocity but not its waypoint, may expect: the trip under way goes
        on along the heading, at the same speed, to a waypoint drawn
        uniformly on the part of the heading's ray inside the box; later
        trips are drawn as the model draws them. A user with no velocity
        (the first slot, or a pause) sets off on a fresh trip. Simplified:
        the waypoint of the trip under way is in truth likelier far than
        near (a uniform point of the box seen along a ray from the trip's
        start), and pauses at waypoints are not drawn.

        Args:
            position_m: ``(N, 2)`` positions now.
            velocity_mps: ``(N, 2)`` velocities over the last slot.
            n_slots: Slots drawn, from the next one on.
            n_samples: Draws per user.
            rng: Source of the draws.

        Returns:
            ``(N, n_samples, n_slots)`` access sites.
        """
        check_integer("n_slots", n_slots, minimum=0)
        check_integer("n_samples", n_samples, minimum=1)
        n = len(position_m)
        shape = (n, n_samples)
        at_m = np.repeat(np.asarray(position_m, np.float64)[:, None], n_samples, 1)
        velocity = np.repeat(
            np.asarray(velocity_mps, np.float64)[:, None], n_samples, 1
        )
        speed_mps = np.hypot(velocity[..., 0], velocity[..., 1])
        moving = speed_mps > _TINY_M
        heading = velocity / np.where(moving, speed_mps, 1.0)[..., None]
        reach_m = np.where(moving, self._ray_length_m(at_m, heading), 0.0)
        ahead_m = rng.random(shape) * reach_m
        waypoint_m = np.where(
            moving[..., None],
            at_m + heading * ahead_m[..., None],
            self._uniform_points(rng.random((*shape, 2))),
        )
        speed_range = self.speed_max_mps - self.speed_min_mps
        speed_mps = np.where(
            moving, speed_mps, self.speed_min_mps + rng.random(shape) * speed_range
        )
        sites = np.empty((*shape, n_slots), dtype=np.int64)
        for k in range(n_slots):
            offset_m = waypoint_m - at_m
            remaining_m = np.hypot(offset_m[..., 0], offset_m[..., 1])
            stride_m = speed_mps * self.slot_s
            arrived = remaining_m <= stride_m
            fraction = stride_m / np.maximum(remaining_m, _TINY_M)
            at_m = np.where(
                arrived[..., None], waypoint_m, at_m + offset_m * fraction[..., None]
            )
            next_m = self._uniform_points(rng.random((*shape, 2)))
            waypoint_m = np.where(arrived[..., None], next_m, waypoint_m)
            next_speed = self.speed_min_mps + rng.random(shape) * speed_range
            speed_mps = np.where(arrived, next_speed, speed_mps)
            sites[..., k] = self._nearest_sites(at_m.reshape(-1, 2)).reshape(shape)
        return sites

    def _ray_length_m(self, start_m: Points, heading: Points) -> Points:
        """Return how far each ray runs from ``start_m`` inside the box."""
        length_m = np.full(start_m.shape[:-1], np.inf)
        for axis in (0, 1):
            step = heading[..., axis]
            low, high = self._low_m[axis], self._low_m[axis] + self._span_m[axis]
            edge = np.where(step > 0, high, low)
            with np.errstate(divide="ignore", invalid="ignore"):
                to_edge = np.where(
                    step != 0, (edge - start_m[..., axis]) / step, np.inf
                )
            length_m = np.minimum(length_m, to_edge)
        return np.maximum(length_m, 0.0)

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
            is_number(alpha) and 0.0 <= alpha <= 1.0,
            "alpha",
            f"must be in [0, 1], got {alpha!r}",
        )
        check_non_negative("mean_speed_mps", mean_speed_mps)
        check_non_negative("speed_std_mps", speed_std_mps)
        check_non_negative("heading_std_rad", heading_std_rad)
        self.alpha = float(alpha)
        self.mean_speed_mps = float(mean_speed_mps)
        self.speed_std_mps = float(speed_std_mps)
        self.heading_std_rad = float(heading_std_rad)
        self._speed_mps = np.empty(0)
        self._heading_rad = np.empty(0)
        self._mean_heading_rad = np.empty(0)
        self._draws = SlotDraws(0, np.empty(0, dtype=np.int64), 2, normal=True)

    def _start(self, key: int, users: Sites) -> Sites:
        draws = uniforms(key, users, 0, 3)
        self._position_m = self._uniform_points(draws[:, 0:2])
        self._mean_heading_rad = 2.0 * math.pi * draws[:, 2]
        self._heading_rad = self._mean_heading_rad.copy()
        noise = normals(key, users, 0, 1)[:, 0]
        self._speed_mps = self.mean_speed_mps + self.speed_std_mps * noise
        self._draws = SlotDraws(key, users, 2, normal=True)
        return self._nearest_sites(self._position_m)

    def _step(self, slot: int) -> Sites:
        noise = self._draws.at(slot)
        if len(noise) == 1:
            return self._step_one(noise[0].tolist())
        stride_m = np.maximum(self._speed_mps, 0.0) * self.slot_s
        heading = self._heading_rad
        moved_m = self._position_m + stride_m[:, None] * np.column_stack(
            (np.cos(heading), np.sin(heading))
        )
        self._position_m = self._reflect(moved_m)
        self._update_velocity(noise)
        return self._nearest_sites(self._position_m)

    def _step_one(self, noise: list[float]) -> Sites:
        """:meth:`_step` for a single user, in Python floats."""
        speed_mps = float(self._speed_mps[0])
        heading_rad = float(self._heading_rad[0])
        mean_rad = float(self._mean_heading_rad[0])

        # Move; np.maximum returns +0.0 for a speed of -0.0, and so does this.
        stride_m = (speed_mps if speed_mps > 0.0 else 0.0) * self.slot_s
        x_m, y_m = self._position_m[0].tolist()
        moved_m = (
            x_m + stride_m * float(np.cos(heading_rad)),
            y_m + stride_m * float(np.sin(heading_rad)),
        )

        # Reflect off the walls, as _reflect does.
        folded_m = []
        for axis, (value_m, low_m, span_m) in enumerate(
            zip(moved_m, self._low_xy, self._span_xy, strict=True)
        ):
            if span_m == 0.0:
                folded_m.append(low_m)
                continue
            copies = (value_m - low_m) / span_m
            index = float(np.floor(copies))
            within = copies - index
            if index % 2 == 1:
                folded_m.append(low_m + span_m * (1.0 - within))
                offset = math.pi if axis == 0 else 0.0
                heading_rad, mean_rad = offset - heading_rad, offset - mean_rad
            else:
                folded_m.append(low_m + span_m * within)
        self._position_m = np.array([folded_m])

        # Update the velocity, as _update_velocity does.
        alpha = self.alpha
        innovation = math.sqrt(1.0 - alpha * alpha)
        speed_mps = (
            alpha * speed_mps
            + (1.0 - alpha) * self.mean_speed_mps
            + innovation * self.speed_std_mps * noise[0]
        )
        heading_rad = (
            alpha * heading_rad
            + (1.0 - alpha) * mean_rad
            + innovation * self.heading_std_rad * noise[1]
        )
        turns = float(np.rint(mean_rad / (2.0 * math.pi)))
        self._speed_mps = np.array([speed_mps])
        self._mean_heading_rad = np.array([mean_rad - 2.0 * math.pi * turns])
        self._heading_rad = np.array([heading_rad - 2.0 * math.pi * turns])
        return self._nearest_site(*folded_m)

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
        turns = np.rint(self._mean_heading_rad / (2.0 * math.pi))
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
        check_integer("n_slots", n_slots, minimum=1)
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
        return self._step(0)

    def _step(self, slot: int) -> Sites:
        if slot >= self.n_slots:
            raise ValueError(
                f"the trace records only {self.n_slots} slots; slot {slot} is "
                "past its end"
            )
        recorded = self._recorded[slot, self._users]
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


MOBILITY.add("random-walk", RandomWalk)
MOBILITY.add("random-waypoint", RandomWaypoint)
MOBILITY.add("gauss-markov", GaussMarkov)
MOBILITY.add("replay", Replay)
