"""An orchestrator loop: a simulated deployment driven through the server.

Each slot the loop reports every service and site of a coupled
:class:`mecrl.backend.SimBackend` to ``POST /v1/decisions``, applies the
sites it gets back, and adds up the slot's cost. The same episode run with
a policy in process costs exactly the same: the server builds the same
observations and masks, and admits the same moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from mecrl.agents.policy import Policy
from mecrl.backend import SimBackend
from mecrl.envs.observation import CandidateView
from mecrl.evaluate import episode_key
from mecrl.runtimes import RUNTIME_NAMES
from mecrl.scenario import Scenario
from mecrl.services import ISOLATION_LEVELS


@dataclass(frozen=True)
class EpisodeCost:
    """What an episode cost."""

    total: float
    """Weighted cost summed over services and slots."""
    moves: int
    """Migrations over the episode."""


def report(backend: SimBackend, ids: list[str]) -> dict[str, Any]:
    """Return the decision request describing ``backend``'s current slot."""
    s, occupancy = backend.scenario, backend.occupancy
    if occupancy is None:
        raise ValueError("the orchestrator drives a coupled backend (shared sites)")
    classes = s.classes
    names = np.array(classes.names)[backend.cls].tolist()
    runtime = np.array(RUNTIME_NAMES)[classes.runtime[backend.cls]].tolist()
    isolation = np.array(ISOLATION_LEVELS)[classes.isolation[backend.cls]].tolist()
    tenant = np.array(classes.tenant_names)[backend.tenant].tolist()
    rows = zip(
        ids,
        backend.site.tolist(),
        backend.access.tolist(),
        names,
        runtime,
        isolation,
        tenant,
        strict=True,
    )
    services = [
        {
            "id": i,
            "current_site": site,
            "access_site": access,
            "service_class": name,
            "runtime": rt,
            "isolation": iso,
            "tenant": ten,
        }
        for i, site, access, name, rt, iso, ten in rows
    ]
    sites = [
        {"id": j, "cpu_cores_used": cpu, "memory_mb_used": memory}
        for j, (cpu, memory) in enumerate(
            zip(
                occupancy.cpu_used.tolist(), occupancy.memory_used.tolist(), strict=True
            )
        )
    ]
    if backend.history is not None:
        past = backend.history.window()[:, :-1].tolist()
        for service, recent in zip(services, past, strict=True):
            service["recent_access_sites"] = recent
    if backend.motion is not None:
        motion = zip(
            backend.motion.position_m.tolist(),
            backend.motion.velocity_mps.tolist(),
            strict=True,
        )
        for service, (position_m, velocity_mps) in zip(services, motion, strict=True):
            service["position_m"] = position_m
            service["velocity_mps"] = velocity_mps
    return {"slot": backend.slot, "services": services, "sites": sites}


def as_columns(request: dict[str, Any]) -> dict[str, Any]:
    """Return a decision request of :func:`report`'s form as columns.

    That is the body ``POST /v1/decisions/columns`` takes: one list per
    field, for large batches.
    """
    services, sites = request["services"], request["sites"]
    return {
        "slot": request["slot"],
        "services": {key: [x[key] for x in services] for key in services[0]},
        "sites": {
            key: [x[key] for x in sites]
            for key in ("id", "cpu_cores_used", "memory_mb_used")
        },
    }


def run_over_http(
    client: httpx.Client, scenario: Scenario, seed: int, n_services: int
) -> EpisodeCost:
    """Run one episode, asking the server at ``client``'s base URL each slot.

    Raises:
        httpx.HTTPStatusError: If the server refuses a request.
    """
    backend = _start(scenario, seed, n_services)
    ids = [f"service-{n}" for n in range(n_services)]
    total, moves = 0.0, 0
    for _ in range(scenario.config.episode_slots):
        response = client.post("/v1/decisions", json=report(backend, ids))
        response.raise_for_status()
        target = np.array([d["site"] for d in response.json()["decisions"]])
        result = backend.step(target)
        total += float(result.cost.sum())
        moves += int(result.moved.sum())
    return EpisodeCost(total, moves)


def run_in_process(
    policy: Policy, view: CandidateView, seed: int, n_services: int
) -> EpisodeCost:
    """Run the same episode with ``policy`` acting in this process."""
    scenario = view.scenario
    backend = _start(scenario, seed, n_services)
    total, moves = 0.0, 0
    for _ in range(scenario.config.episode_slots):
        sites, mask, observation = view.view(backend)
        action = policy.act(observation, mask)
        result = backend.step(sites[np.arange(n_services), action])
        total += float(result.cost.sum())
        moves += int(result.moved.sum())
    return EpisodeCost(total, moves)


def _start(scenario: Scenario, seed: int, n_services: int) -> SimBackend:
    backend = SimBackend(scenario, coupled=True)
    backend.reset(episode_key(seed), np.arange(n_services))
    return backend
