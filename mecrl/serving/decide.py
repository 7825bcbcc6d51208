"""Decisions for a reported state of services and sites, by the bundle's model.

Nothing here is a second model of the world: observations and masks come
from :class:`mecrl.envs.observation.CandidateView` and the admission of
moves from :class:`mecrl.backend.SimBackend`, fed with the reported state
instead of a simulated one. So the server answers what the policy does in
the simulator for the same state, and never places a service where a hard
constraint forbids it:

- static rules (runtime, sandboxed in Kata, zones, size, dedicated hosts
  without background tenants) and untrusted zone pairs remove candidates
  from the mask;
- capacity (CPU and memory given the reported load) and co-residency of
  dedicated services remove candidates per service;
- moves into the same site in one batch are admitted together, in service
  order, as the simulator does: a move that no longer fits is refused and
  the service stays.

Co-residency is judged among the services of one request and the
scenario's background workloads: the server knows no other workloads, so
services that share sites belong in one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mecrl.backend import AccessHistory, SimBackend, UserMotion
from mecrl.constraints import Occupancy
from mecrl.serving.bundle import Bundle

STAY, MOVE, REFUSED = 0, 1, 2
KINDS: tuple[str, ...] = ("stay", "move", "refused")
"""Decision kinds by code: ``refused`` is a move the policy proposed that
the mask or the admission of the batch ruled out; the service stays."""


@dataclass(frozen=True)
class FleetState:
    """A reported state, as scenario indices (see :mod:`mecrl.serving.schema`)."""

    cls: np.ndarray
    """(N,) service class of each service."""
    tenant: np.ndarray
    """(N,) tenant index; indices past the scenario's are other tenants."""
    site: np.ndarray
    """(N,) where each service runs."""
    access: np.ndarray
    """(N,) the access site of each service's user."""
    slot: int
    """Slot of the episode, for the progress feature."""
    cpu_used: np.ndarray
    """(M,) CPU in use at each site; infinite (full) where not reported."""
    memory_used: np.ndarray
    """(M,) memory in use at each site; infinite (full) where not reported."""
    n_tenants: int
    """Number of distinct tenant indices."""
    history: np.ndarray | None = None
    """(N, H) access sites of each user's last H slots, oldest first and the
    current one last, when the scenario keeps ``history_slots``."""
    motion: UserMotion | None = None
    """Users' positions and velocities, when the scenario projects motion."""


@dataclass(frozen=True)
class Decisions:
    """What the policy decided for each service."""

    site: np.ndarray
    """(N,) where each service runs this slot."""
    proposed_site: np.ndarray
    """(N,) the site the model proposed."""
    action: np.ndarray
    """(N,) the allowed action (candidate index)."""
    kind: np.ndarray
    """(N,) codes into :data:`KINDS`."""


class Decider:
    """Builds observations and masks of a reported state and acts on them.

    Args:
        bundle: The loaded bundle.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.scenario = bundle.scenario
        self.view = bundle.view

    def backend(self, state: FleetState) -> SimBackend:
        """Return a simulator holding ``state``, for the shared mask code."""
        s = self.scenario
        occupancy = Occupancy(s.constraints, state.n_tenants)
        occupancy.add(state.cls, state.tenant, state.site)
        occupancy.cpu_used = state.cpu_used.astype(np.float64, copy=True)
        occupancy.memory_used = state.memory_used.astype(np.float64, copy=True)
        backend = SimBackend(s, coupled=True)
        backend.cls, backend.tenant = state.cls, state.tenant
        backend.site, backend.access = state.site, state.access
        backend.slot = state.slot
        backend.occupancy = occupancy
        if state.history is not None:
            backend.history = AccessHistory.from_window(state.history)
        backend.motion = state.motion
        return backend

    def decide(self, state: FleetState) -> Decisions:
        """Return the decision for every service of ``state``."""
        backend = self.backend(state)
        sites, mask, observation = self.view.view(backend)
        action, proposed = self.bundle.act(observation, mask)
        rows = np.arange(sites.shape[0])
        chosen = sites[rows, action]
        proposed_site = sites[rows, proposed]
        site = backend.admit(chosen)
        kind = np.where(
            site != state.site,
            MOVE,
            np.where(proposed_site != state.site, REFUSED, STAY),
        )
        return Decisions(site, proposed_site, action, kind)
