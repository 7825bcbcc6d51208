"""Backends: what places services and reports the cost of each slot.

A backend knows nothing of reinforcement learning. It holds where each
service runs and where its user is, applies the placement decided for the
slot (refusing any that breaks a hard constraint), reports every cost term,
and moves the users on. The simulated backend does this with NumPy arrays
over all services at once; a backend driving real hosts implements the same
interface.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mecrl.constraints import CONFLICTS, N_CATEGORIES, Occupancy
from mecrl.costs import MOVE_TERMS, PLACEMENT_TERMS
from mecrl.mobility import MobilitySource
from mecrl.problem import cost_tables, move_terms, placement_terms
from mecrl.registry import Registry
from mecrl.rng import uniforms
from mecrl.scenario import Scenario

logger = logging.getLogger(__name__)

_SPAWN_DOMAIN = 0x5EED5EED5EED5EED
"""Mixed into the episode key for drawing service classes and tenants, so
those draws never coincide with the mobility source's."""


@dataclass(frozen=True)
class SlotResult:
    """What one slot cost, one entry per service."""

    terms: dict[str, np.ndarray]
    """Raw value of every named cost term (see :mod:`mecrl.costs`)."""
    cost: np.ndarray
    """Weighted sum of the terms: minus the reward."""
    refused: np.ndarray
    """Whether the requested site broke a hard constraint (service stayed)."""
    moved: np.ndarray
    """Whether the service changed site."""


class Backend(ABC):
    """Places services slot by slot and reports what each slot cost."""

    scenario: Scenario
    slot: int
    """Index of the slot about to be decided."""
    service_ids: np.ndarray
    """(N,) which services of the episode's population these are."""
    mobility: MobilitySource
    """Where the users go."""
    cls: np.ndarray
    """(N,) service class of each service."""
    tenant: np.ndarray
    """(N,) tenant of each service."""
    site: np.ndarray
    """(N,) where each service runs now (before this slot's decision)."""
    access: np.ndarray
    """(N,) the access site of each service's user in this slot."""
    occupancy: Occupancy | None = None
    """What runs where, when services share sites; None when uncoupled."""
    history: AccessHistory | None = None
    """Recent access sites, kept when the scenario asks for history."""
    motion: UserMotion | None = None
    """Users' positions and velocities, kept when the scenario projects them."""

    @abstractmethod
    def reset(self, key: int, service_ids: np.ndarray) -> None:
        """Start an episode with the services ``service_ids`` drawn from ``key``."""

    @abstractmethod
    def step(self, target: np.ndarray) -> SlotResult:
        """Run this slot with each service at ``target``, then move users on."""

    def _checked_target(self, target: np.ndarray) -> np.ndarray:
        """Return ``target`` as site indices, one per service.

        Raises:
            ValueError: If its shape or a site index is wrong.
        """
        target = np.asarray(target, dtype=np.int64)
        if target.shape != self.site.shape:
            raise ValueError(
                f"target must have shape {self.site.shape}, got {target.shape}"
            )
        if ((target < 0) | (target >= self.scenario.n_sites)).any():
            raise ValueError(f"target sites must lie in [0, {self.scenario.n_sites})")
        return target

    def _start_users(self, key: int) -> None:
        """Place the users of ``service_ids`` at their first access sites."""
        self.mobility = self.scenario.make_mobility()
        self.access = self.mobility.reset(key, self.service_ids)
        self.slot = 0
        slots = self.scenario.config.history_slots
        self.history = AccessHistory(self.access, slots) if slots > 0 else None
        self.motion = None
        if self.scenario.config.tracks_motion:
            self.motion = UserMotion.at_rest(self._positions_m())

    def _advance_users(self) -> None:
        """Move every user on to the next slot's access site."""
        self.access = self.mobility.advance()
        if self.history is not None:
            self.history.record(self.access)
        if self.motion is not None:
            self.motion = self.motion.moved_to(
                self._positions_m(), self.scenario.config.slot_s
            )
        self.slot += 1

    def _positions_m(self) -> np.ndarray:
        """Return the users' positions; the scenario has checked they exist."""
        positions_m = self.mobility.positions_m
        if positions_m is None:
            raise RuntimeError(f"{type(self.mobility).__name__} reports no positions")
        return positions_m

    def step_one(self, target: int) -> ServiceSlot:
        """:meth:`step` for a lone service, in Python scalars."""
        result = self.step(np.array([target], dtype=np.int64))
        return ServiceSlot(
            {name: float(value[0]) for name, value in result.terms.items()},
            float(result.cost[0]),
            refused=bool(result.refused[0]),
            moved=bool(result.moved[0]),
        )


@dataclass(frozen=True)
class ServiceSlot:
    """What one slot cost a single service, in Python scalars."""

    terms: dict[str, float]
    """Raw value of every named cost term."""
    cost: float
    """Weighted sum of the terms: minus the reward."""
    refused: bool
    """Whether the requested site broke a hard constraint."""
    moved: bool
    """Whether the service changed site."""


BACKENDS: Registry[type[Backend]] = Registry("backend")


def spawn_services(
    scenario: Scenario, key: int, service_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the class and tenant of each service of an episode."""
    draws = uniforms((key ^ _SPAWN_DOMAIN) & (2**64 - 1), service_ids, 0, 2)
    return scenario.classes.draw(draws)


class AccessHistory:
    """The access sites of each user over the last H slots, in a ring.

    Before the first slot every entry holds the user's first access site, as
    if the user had stood there all along.

    Args:
        access: (N,) access sites at the start of the episode.
        slots: H, the slots remembered (including the current one).
    """

    def __init__(self, access: np.ndarray, slots: int) -> None:
        self.sites = np.repeat(np.asarray(access, np.int64)[:, None], slots, axis=1)
        """(N, H) access sites of the last H slots, in ring order."""
        self._next = 0

    @classmethod
    def from_window(cls, window: np.ndarray) -> AccessHistory:
        """Return the history holding ``window``: (N, H) sites, oldest first."""
        history = cls(window[:, -1], window.shape[1])
        history.sites[:] = window
        return history

    def window(self) -> np.ndarray:
        """Return the (N, H) access sites of the last H slots, oldest first."""
        return np.roll(self.sites, -self._next, axis=1)

    def record(self, access: np.ndarray) -> None:
        """Remember ``access`` as the newest slot's, forgetting the oldest."""
        self.sites[:, self._next] = access
        self._next = (self._next + 1) % self.sites.shape[1]

    @property
    def oldest(self) -> np.ndarray:
        """(N,) the access sites of H - 1 slots ago."""
        return self.sites[:, self._next]


@dataclass(frozen=True)
class UserMotion:
    """Where each user is and how fast it goes, as its device reports it."""

    position_m: np.ndarray
    """(N, 2) positions in the scenario's metric frame."""
    velocity_mps: np.ndarray
    """(N, 2) displacement over the last slot, per second; zero at first."""

    @classmethod
    def at_rest(cls, position_m: np.ndarray) -> UserMotion:
        """Return users at ``position_m`` with no known velocity yet."""
        position_m = np.asarray(position_m, dtype=np.float64)
        return cls(position_m, np.zeros_like(position_m))

    def moved_to(self, position_m: np.ndarray, slot_s: float) -> UserMotion:
        """Return the motion after one slot that ends at ``position_m``."""
        position_m = np.asarray(position_m, dtype=np.float64)
        return UserMotion(position_m, (position_m - self.position_m) / slot_s)

    def projected_m(self, after_s: float) -> np.ndarray:
        """Return (N, 2) positions ``after_s`` on at the current velocities."""
        return self.position_m + after_s * self.velocity_mps


@BACKENDS.register("simulated")
class SimBackend(Backend):
    """The vectorised simulator.

    Args:
        scenario: The built scenario.
        coupled: Whether services share site capacity and see each other as
            co-residents. Uncoupled, every service is its own problem, as in
            the single-service environment and the solver export.
    """

    def __init__(self, scenario: Scenario, coupled: bool = True) -> None:
        self.scenario = scenario
        self.coupled = coupled
        self.occupancy: Occupancy | None = None
        self.tables = cost_tables(scenario)
        self.slot = 0

    def reset(self, key: int, service_ids: np.ndarray) -> None:
        """Start an episode: draw services and users, place services near users.

        Raises:
            ValueError: If some service fits at no site.
        """
        s = self.scenario
        self.service_ids = np.asarray(service_ids, dtype=np.int64)
        self.cls, self.tenant = spawn_services(s, key, self.service_ids)
        self._start_users(key)
        if self.coupled:
            self.occupancy = Occupancy(s.constraints, len(s.classes.tenant_names))
            self.site = self._place_coupled()
        else:
            self.site = self._place_alone()

    def _place_alone(self) -> np.ndarray:
        s = self.scenario
        first = self.scenario.nearest_feasible[self.cls, self.access, 0]
        ok = s.constraints.static[self.cls, first]
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"service {self.service_ids[bad]} of class "
                f"{s.classes.names[self.cls[bad]]!r} fits at no site"
            )
        return np.asarray(first, dtype=np.int64)

    def _place_coupled(self) -> np.ndarray:
        """Place each service at the nearest site with room, in id order."""
        s, occupancy = self.scenario, self.occupancy
        assert occupancy is not None  # set by reset just before
        site = np.full(len(self.cls), -1, dtype=np.int64)
        for rank in range(s.n_sites):
            waiting = np.flatnonzero(site < 0)
            if waiting.size == 0:
                break
            target = self.scenario.nearest_feasible[
                self.cls[waiting], self.access[waiting], rank
            ]
            ok = s.constraints.static[self.cls[waiting], target]
            ok &= self._admit_together(waiting, target)
            occupancy.add(self.cls[waiting[ok]], self.tenant[waiting[ok]], target[ok])
            site[waiting[ok]] = target[ok]
        if (site < 0).any():
            raise ValueError(
                f"the sites of scenario {s.config.name!r} cannot hold "
                f"{len(site)} services: {(site < 0).sum()} found no room"
            )
        return site

    def step(self, target: np.ndarray) -> SlotResult:
        """Run this slot with each service at ``target``, then move users on.

        A target that breaks a hard constraint is refused: the service stays.
        """
        target = self._checked_target(target)
        previous = self.site
        new_site = self._apply(target)
        terms = self._placement_terms(new_site)
        moves = self._move_terms(previous, new_site)
        row = (self.cls * self.scenario.n_access + self.access) * self.scenario.n_sites
        cost = self.tables.placement.take(row + new_site) + self.tables.move.take(
            (self.cls * self.scenario.n_sites + previous) * self.scenario.n_sites
            + new_site
        )
        if self.occupancy is not None:
            # exposure to other services of the fleet, beyond the background
            static = self.scenario.sites.background_tenants[new_site]
            foreign = self.occupancy.foreign_total(self.tenant, new_site)
            factor = self.scenario.runtimes.column("exposure")[
                self.scenario.classes.runtime[self.cls]
            ]
            exposure = factor * foreign
            cost = cost + self.scenario.config.costs.weights.co_residency * (
                exposure - factor * static
            )
            terms["co_residency"] = exposure
        terms.update(moves)
        self.site = new_site
        self._advance_users()
        return SlotResult(
            terms=terms,
            cost=np.broadcast_to(cost, previous.shape),
            refused=(target != new_site),
            moved=(new_site != previous),
        )

    def step_one(self, target: int) -> ServiceSlot:
        """:meth:`step` for a lone uncoupled service, in Python scalars.

        The single-service environment calls this every step. It reads the
        same tables as :meth:`step` and gives the same values (the tests
        compare the two), without NumPy's fixed cost per call on arrays of
        one element.

        Raises:
            ValueError: If the backend is coupled or holds more than one
                service, or ``target`` is not a site.
        """
        s = self.scenario
        if self.occupancy is not None or self.site.shape != (1,):
            raise ValueError("step_one needs a single uncoupled service")
        n = s.n_sites
        if not 0 <= target < n:
            raise ValueError(f"target site must lie in [0, {n}), got {target}")
        placement, moves = self.tables.placement_terms, self.tables.move_terms
        if placement is None or moves is None:
            return super().step_one(target)
        here, cls, access = int(self.site[0]), int(self.cls[0]), int(self.access[0])
        zone = s.sites.zone
        allowed = target == here or bool(
            s.constraints.static[cls, target]
            and not s.sites.untrusted[zone[here], zone[target]]
        )
        site = target if allowed else here
        place_row = (cls * s.n_access + access) * n + site
        move_row = (cls * n + here) * n + site
        cost = self._placement_flat[place_row] + self._move_flat[move_row]
        terms = dict(
            zip(PLACEMENT_TERMS, placement[:, place_row].tolist(), strict=True)
        )
        terms.update(zip(MOVE_TERMS, moves[:, move_row].tolist(), strict=True))
        self.site = np.array([site], dtype=np.int64)
        self._advance_users()
        return ServiceSlot(
            terms, float(cost), refused=site != target, moved=site != here
        )

    @cached_property
    def _placement_flat(self) -> np.ndarray:
        return self.tables.placement.reshape(-1)

    @cached_property
    def _move_flat(self) -> np.ndarray:
        return self.tables.move.reshape(-1)

    def _placement_terms(self, site: np.ndarray) -> dict[str, np.ndarray]:
        """Raw placement terms of this slot, read from the table if any."""
        table = self.tables.placement_terms
        if table is None:
            return placement_terms(self.scenario, self.cls, self.access, site)
        s = self.scenario
        row = (self.cls * s.n_access + self.access) * s.n_sites + site
        values = table.take(row, axis=1)
        return dict(zip(PLACEMENT_TERMS, values, strict=True))

    def _move_terms(
        self, previous: np.ndarray, site: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Raw move terms of this slot, read from the table if any."""
        table = self.tables.move_terms
        if table is None:
            return move_terms(self.scenario, self.cls, previous, site)
        n = self.scenario.n_sites
        values = table.take((self.cls * n + previous) * n + site, axis=1)
        return dict(zip(MOVE_TERMS, values, strict=True))

    def admit(self, target: np.ndarray) -> np.ndarray:
        """Move services to ``target`` where admissible; return where they run.

        What :meth:`step` does before it costs the slot: a target that breaks
        a hard constraint, or no longer fits once earlier services of the
        batch have moved, is refused and the service stays. Users do not
        move and the slot does not advance.
        """
        self.site = self._apply(np.asarray(target, dtype=np.int64))
        return self.site

    def _apply(self, target: np.ndarray) -> np.ndarray:
        """Return the new placement: ``target`` where admissible, else stay."""
        s = self.scenario
        movers = np.flatnonzero(target != self.site)
        if movers.size == 0:
            return self.site
        ok = s.constraints.feasible(self.cls[movers], self.site[movers], target[movers])
        if self.occupancy is not None:
            ok &= self._admit_together(movers, target[movers])
            accepted = movers[ok]
            c, t = self.cls[accepted], self.tenant[accepted]
            self.occupancy.remove(c, t, self.site[accepted])
            self.occupancy.add(c, t, target[accepted])
        new_site = self.site.copy()
        new_site[movers[ok]] = target[movers[ok]]
        return new_site

    def _admit_together(self, movers: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Return which movers fit at their targets, considering each other.

        Movers are admitted in id order: a mover fits if the site has room
        for it and every earlier mover to that site, and no earlier mover of
        another tenant conflicts with it. Earlier movers that end up refused
        still count, which refuses a little more than strictly needed but
        never admits an infeasible placement.
        """
        occupancy, classes = self.occupancy, self.scenario.classes
        assert occupancy is not None  # only called when coupled
        cls, tenant = self.cls[movers], self.tenant[movers]
        ok = occupancy.admits(cls, tenant, target)
        if movers.size == 1:
            # a lone mover competes with no one: the site's admission decides
            return ok

        # capacity: cumulative demand of movers to the same site, in order
        order = np.lexsort((movers, target))
        sorted_target = target[order]
        sites = self.scenario.sites
        for demand, used, capacity in (
            (classes.cpu_cores[cls], occupancy.cpu_used, sites.cpu_cores),
            (classes.memory_mb[cls], occupancy.memory_used, sites.memory_mb),
        ):
            cumulative = _group_cumsum(demand[order], sorted_target)
            fits = used[sorted_target] + cumulative <= capacity[sorted_target]
            ok[order[~fits]] = False

        # co-residency: earlier movers of other tenants to the same site
        category = self.scenario.constraints.categories[cls]
        onehot = np.eye(N_CATEGORIES, dtype=np.int64)[category[order]]
        before_all = _group_cumsum(onehot, sorted_target) - onehot
        by_tenant = np.lexsort((movers, tenant, target))
        onehot_t = np.eye(N_CATEGORIES, dtype=np.int64)[category[by_tenant]]
        key = target[by_tenant] * (tenant.max() + 1) + tenant[by_tenant]
        before_same = np.empty_like(before_all)
        before_same_sorted = _group_cumsum(onehot_t, key) - onehot_t
        position = np.empty(len(movers), dtype=np.int64)
        position[order] = np.arange(len(movers))
        before_same[position[by_tenant]] = before_same_sorted
        foreign_before = before_all - before_same
        clash = (foreign_before * CONFLICTS[category[order]]).sum(axis=1) > 0
        ok[order[clash]] = False
        return ok


def _group_cumsum(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``values`` restarting at each new group.

    ``groups`` must be sorted so that equal groups are contiguous.
    """
    total = np.cumsum(values, axis=0)
    # concatenate, not np.r_: this runs every coupled step, and np.r_ is slow
    starts = np.flatnonzero(np.concatenate([[True], groups[1:] != groups[:-1]]))
    before = np.concatenate([np.zeros_like(total[:1]), total[:-1]])[starts]
    lengths = np.diff(np.append(starts, len(groups)))
    result: np.ndarray = total - np.repeat(before, lengths, axis=0)
    return result
