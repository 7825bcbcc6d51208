"""The simulated backend: reproducible services, costs, scalar and array steps."""

import dataclasses

import numpy as np
import pytest

from mecrl import problem
from mecrl.backend import BACKENDS, SimBackend, spawn_services
from mecrl.costs import TERM_NAMES
from mecrl.evaluate import episode_key
from mecrl.scenario import Scenario, load_config, load_scenario


def random_targets(
    rng: np.random.Generator, backend: SimBackend, near: float = 0.7
) -> np.ndarray:
    """Mostly a neighbour of the current site, sometimes any site."""
    scenario = backend.scenario
    hops = scenario.network.hops[backend.site]
    close = np.array([rng.choice(np.flatnonzero(row <= 1)) for row in hops])
    anywhere = rng.integers(0, scenario.n_sites, backend.site.shape)
    return np.where(rng.random(backend.site.shape) < near, close, anywhere)


def test_registry_holds_the_simulator() -> None:
    assert BACKENDS.get("simulated") is SimBackend
    # the real backend registers itself once mecrl.hosts.backend is imported
    with pytest.raises(
        KeyError, match=r"unknown backend 'k8s'; known: (real, )?simulated"
    ):
        BACKENDS.get("k8s")


def test_a_service_is_the_same_alone_or_in_a_crowd() -> None:
    scenario = load_scenario("city-grid")
    key = episode_key(6)
    crowd = SimBackend(scenario, coupled=False)
    crowd.reset(key, np.arange(30))
    alone = SimBackend(scenario, coupled=False)
    alone.reset(key, np.array([17]))
    rng = np.random.default_rng(0)

    assert (alone.cls[0], alone.tenant[0]) == (crowd.cls[17], crowd.tenant[17])
    for _ in range(12):
        assert alone.access[0] == crowd.access[17]
        assert alone.site[0] == crowd.site[17]
        targets = random_targets(rng, crowd)
        together = crowd.step(targets)
        single = alone.step(targets[17:18])
        assert single.cost[0] == together.cost[17]
        for name in TERM_NAMES:
            assert single.terms[name][0] == together.terms[name][17]


def test_spawned_classes_follow_the_shares() -> None:
    scenario = load_scenario("city-grid")

    cls, tenant = spawn_services(scenario, episode_key(0), np.arange(20_000))

    shares = np.bincount(cls, minlength=3) / 20_000
    np.testing.assert_allclose(shares, [0.4, 0.4, 0.2], atol=0.015)
    names = scenario.classes.tenant_names
    ar_tenants = {names[t] for t in tenant[cls == 0]}
    assert ar_tenants == {"acme", "globex"}
    assert {names[t] for t in tenant[cls == 2]} == {"umbrella"}


def test_coupled_co_residency_counts_other_tenants_and_background() -> None:
    scenario = load_scenario("city-grid")
    backend = SimBackend(scenario, coupled=True)
    backend.reset(episode_key(3), np.arange(300))
    exposure = scenario.runtimes.column("exposure")[
        scenario.classes.runtime[backend.cls]
    ]
    weights = scenario.config.costs.weights
    rng = np.random.default_rng(3)
    for _ in range(5):
        result = backend.step(random_targets(rng, backend))
        site, tenant = backend.site, backend.tenant

        foreign = np.array(
            [
                np.count_nonzero((site == site[n]) & (tenant != tenant[n]))
                for n in range(300)
            ]
        )
        expected = exposure * (scenario.sites.background_tenants[site] + foreign)
        np.testing.assert_allclose(result.terms["co_residency"], expected)
        assert (foreign > 0).any()
        total = sum(getattr(weights, name) * result.terms[name] for name in TERM_NAMES)
        np.testing.assert_allclose(result.cost, total, rtol=1e-12, atol=1e-12)


def test_step_rejects_malformed_targets() -> None:
    backend = SimBackend(load_scenario("wang-1d"), coupled=False)
    backend.reset(episode_key(0), np.arange(3))

    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        backend.step(np.zeros(2, int))
    with pytest.raises(ValueError, match=r"target sites must lie in \[0, 21\)"):
        backend.step(np.array([0, 21, 0]))
    with pytest.raises(ValueError, match=r"target sites must lie in \[0, 21\)"):
        backend.step(np.array([-1, 0, 0]))


def test_reset_reports_when_the_sites_cannot_hold_the_fleet() -> None:
    config = load_config("wang-1d")
    sites = dataclasses.replace(config.sites, cpu_cores=1.0)
    backend = SimBackend(Scenario(dataclasses.replace(config, sites=sites)))

    with pytest.raises(ValueError, match="cannot hold 30 services: 9 found no room"):
        backend.reset(episode_key(0), np.arange(30))


def assert_scalar_step_matches(scenario: Scenario, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for service in range(4):
        scalar = SimBackend(scenario, coupled=False)
        array = SimBackend(scenario, coupled=False)
        scalar.reset(episode_key(seed), np.array([service]))
        array.reset(episode_key(seed), np.array([service]))
        for _ in range(15):
            target = int(random_targets(rng, array, near=0.5)[0])
            one = scalar.step_one(target)
            many = array.step(np.array([target]))
            assert one.cost == many.cost[0]
            assert one.refused == many.refused[0]
            assert one.moved == many.moved[0]
            assert one.terms == {k: float(v[0]) for k, v in many.terms.items()}
            assert scalar.site[0] == array.site[0]
            assert scalar.access[0] == array.access[0]
            assert scalar.slot == array.slot


@pytest.mark.parametrize("name", ["city-grid", "wang-1d"])
def test_scalar_step_equals_the_array_step(name: str) -> None:
    assert_scalar_step_matches(load_scenario(name), seed=7)


def test_scalar_step_without_term_tables_equals_the_array_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(problem, "TERM_TABLE_BUDGET_MB", 0.0)
    # a scenario object of its own, so no cost tables are cached for it yet
    scenario = Scenario(load_config("city-grid"))
    assert problem.cost_tables(scenario).placement_terms is None

    assert_scalar_step_matches(scenario, seed=8)


def test_scalar_step_needs_one_uncoupled_service() -> None:
    scenario = load_scenario("wang-1d")
    coupled = SimBackend(scenario, coupled=True)
    coupled.reset(episode_key(0), np.array([0]))
    several = SimBackend(scenario, coupled=False)
    several.reset(episode_key(0), np.arange(2))
    alone = SimBackend(scenario, coupled=False)
    alone.reset(episode_key(0), np.array([0]))

    for backend in (coupled, several):
        with pytest.raises(ValueError, match="single uncoupled service"):
            backend.step_one(0)
    with pytest.raises(ValueError, match=r"target site must lie in \[0, 21\)"):
        alone.step_one(21)
