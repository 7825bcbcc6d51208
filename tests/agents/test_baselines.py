"""Baseline policies and the MDP-optimal policy of Wang et al."""

import dataclasses
import re

import numpy as np
import pytest

from mecrl.agents import POLICIES, PolicyContext, make_policy
from mecrl.agents.baselines import DistanceThreshold, MdpOptimal
from mecrl.agents.mdp import best_threshold
from mecrl.agents.policy import parse_policy_spec
from mecrl.costs import CostWeights, wang2019_costs
from mecrl.envs.fleet import FleetCore
from mecrl.evaluate import episode_key, run_policy
from mecrl.problem import CostTables
from mecrl.scenario import ComponentConfig, Scenario, load_config, load_scenario

BASELINES = ("never", "follow", "threshold", "myopic")


def fleet(
    scenario: Scenario, n_services: int, seed: int = 0, space: str = "candidates"
):
    core = FleetCore(scenario, n_services, coupled=False, action_space=space)
    return core, core.reset(episode_key(seed))


def context(core: FleetCore) -> PolicyContext:
    return PolicyContext(core.layout, core.scenario)


def run_checked(name: str, scenario: Scenario, n_services: int, check, **params):
    """Run a policy over an episode, calling ``check`` after each step."""
    core, observation = fleet(scenario, n_services)
    policy = make_policy(name, context(core), **params)
    while not core.done:
        site, access = core.backend.site.copy(), core.backend.access.copy()
        actions = policy.act(observation, core.mask)
        assert core.mask[np.arange(n_services), actions].all()
        candidates = core.sites.copy()
        result = core.step(actions)
        check(site, access, candidates, core.backend.site, result)
        observation = core.observe()


def test_registry_lists_every_policy() -> None:
    assert POLICIES.names() == ["follow", "mdp", "myopic", "never", "threshold"]


def test_unknown_policy_lists_the_known_ones() -> None:
    core, _ = fleet(load_scenario("wang-1d"), 2)

    with pytest.raises(
        ValueError, match="unknown policy 'oracle'; known: follow, mdp, myopic"
    ):
        make_policy("oracle", context(core))


def test_a_spec_sets_the_policys_parameters() -> None:
    core, _ = fleet(load_scenario("wang-1d"), 2)

    policy = make_policy("threshold:hops=4", context(core))

    assert isinstance(policy, DistanceThreshold)
    assert policy.hops == 4.0
    assert policy.name == "threshold:hops=4"
    assert parse_policy_spec(" threshold : hops = 3 ") == ("threshold", {"hops": 3.0})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("threshold:hop=4", "'hop=4' is not a parameter of threshold; valid: hops"),
        ("threshold:hops", "'hops' is not a parameter of threshold; valid: hops"),
        ("never:hops=2", "'hops=2' is not a parameter of never; valid: none"),
        ("threshold:hops=far", "hops must be a number, got 'far'"),
    ],
)
def test_a_bad_spec_names_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_policy_spec(spec)


@pytest.mark.parametrize("hops", [0, 0.5, -2])
def test_threshold_below_one_hop_is_rejected(hops: float) -> None:
    core, _ = fleet(load_scenario("wang-1d"), 2)

    with pytest.raises(ValueError, match="hops must be >= 1"):
        make_policy("threshold", context(core), hops=hops)


def test_threshold_of_the_wang_ring_matches_the_closed_form() -> None:
    scenario = load_scenario("wang-1d")
    core, _ = fleet(scenario, 1)

    solved = MdpOptimal(context(core)).solution.threshold()

    # a ring of 21 cells is at most 10 hops across; the costs are Wang et
    # al.'s with migration weight 1 and power 0.8 (see wang-1d.yaml)
    closed_form = best_threshold(
        move_prob=0.6,
        discount=0.9,
        max_distance=10,
        costs=wang2019_costs(migration_weight=1.0, power=0.8),
    )
    assert solved is not None
    assert solved == closed_form
    assert 1 < solved <= 10


def assert_threshold_behaviour(scenario: Scenario, name: str, n_star: int, **params):
    hops = scenario.network.hops
    seen = {"stay_away": 0, "moved": 0}

    def check(site, access, candidates, new_site, result) -> None:
        distance = hops[access, site]
        near = distance < n_star
        np.testing.assert_array_equal(new_site[near], site[near])
        np.testing.assert_array_equal(new_site[~near], access[~near])
        seen["stay_away"] += int(np.count_nonzero(near & (distance > 0)))
        seen["moved"] += int(np.count_nonzero(result.moved))

    run_checked(name, scenario, 30, check, **params)
    # both branches of the rule were exercised
    assert seen["moved"] > 0
    assert seen["stay_away"] > 0 or n_star == 1


def test_mdp_policy_on_the_wang_ring_is_a_threshold_policy() -> None:
    scenario = load_scenario("wang-1d")
    core, _ = fleet(scenario, 1)
    n_star = MdpOptimal(context(core)).solution.threshold()
    assert n_star is not None

    assert_threshold_behaviour(scenario, "mdp", n_star)


@pytest.mark.parametrize("hops", [1, 2, 4])
def test_threshold_policy_follows_from_its_distance(hops: int) -> None:
    assert_threshold_behaviour(load_scenario("wang-1d"), "threshold", hops, hops=hops)


def test_mdp_policy_beats_every_baseline_on_the_wang_ring() -> None:
    scenario = load_scenario("wang-1d")

    mdp = run_policy(scenario, 0, 50, "mdp").total_cost

    for name in BASELINES:
        assert mdp <= run_policy(scenario, 0, 50, name).total_cost, name


def test_mdp_discounted_cost_matches_its_value() -> None:
    scenario = load_scenario("wang-1d")
    n_services = 400
    core, observation = fleet(scenario, n_services, seed=4)
    policy = make_policy("mdp", context(core))
    discount = scenario.config.discount
    discounted, weight = np.zeros(n_services), 1.0
    # services start at their user's cell: distance 0
    assert np.all(core.backend.site == core.backend.access)

    while not core.done:
        result = core.step(policy.act(observation, core.mask))
        discounted += weight * result.cost
        weight *= discount
        observation = core.observe()

    expected = policy.solution.values[0]
    error = discounted.std() / np.sqrt(n_services)
    assert abs(discounted.mean() - expected) < 4 * error + 1e-3


def test_mdp_policy_on_the_hex_grid_beats_never_and_follow() -> None:
    scenario = Scenario(dataclasses.replace(load_config("hex-2d"), episode_slots=80))

    mdp = run_policy(scenario, 0, 10, "mdp").total_cost

    assert mdp <= run_policy(scenario, 0, 10, "never").total_cost
    assert mdp <= run_policy(scenario, 0, 10, "follow").total_cost


def test_mdp_policy_refuses_a_scenario_outside_its_model() -> None:
    core, _ = fleet(load_scenario("city-grid"), 1)

    with pytest.raises(
        ValueError, match=r"needs random-walk mobility.*random-waypoint"
    ):
        make_policy("mdp", context(core))


def test_mdp_policy_refuses_physical_costs() -> None:
    config = load_config("wang-1d")
    weights = dataclasses.replace(config.costs.weights, access_latency=0.02)
    costs = dataclasses.replace(config.costs, weights=weights)
    core, _ = fleet(Scenario(dataclasses.replace(config, costs=costs)), 1)

    with pytest.raises(ValueError, match=r"hop-distance costs only.*access_latency"):
        make_policy("mdp", context(core))


def test_mdp_policy_refuses_an_open_line() -> None:
    config = load_config("wang-1d")
    params = {**config.topology.params, "ring": False}
    scenario = Scenario(
        dataclasses.replace(config, topology=ComponentConfig("line", params))
    )
    core, _ = fleet(scenario, 1)

    with pytest.raises(ValueError, match="ring line or a hex topology"):
        make_policy("mdp", context(core))


@pytest.mark.parametrize("name", ["wang-1d", "city-grid"])
def test_never_migrates_nothing(name: str) -> None:
    outcome = run_policy(load_scenario(name), 0, 20, "never")

    assert outcome.migrations == 0
    assert outcome.terms["downtime"] == 0.0


def test_follow_keeps_the_service_at_the_access_site_on_the_ring() -> None:
    scenario = load_scenario("wang-1d")

    def check(site, access, candidates, new_site, result) -> None:
        np.testing.assert_array_equal(new_site, access)

    run_checked("follow", scenario, 20, check)


@pytest.mark.parametrize("space", ["candidates", "sites"])
def test_follow_moves_to_the_access_site_whenever_it_is_allowed(space: str) -> None:
    scenario = load_scenario("city-grid")
    core, observation = fleet(scenario, 30, space=space)
    policy = make_policy("follow", context(core))
    reached = 0
    for _ in range(30):
        access = core.backend.access.copy()
        allowed = (core.sites == access[:, None]) & core.mask
        core.step(policy.act(observation, core.mask))
        at_user = allowed.any(axis=1)
        np.testing.assert_array_equal(core.backend.site[at_user], access[at_user])
        reached += int(at_user.sum())
        observation = core.observe()
    assert reached > 0


def test_myopic_picks_the_cheapest_next_slot() -> None:
    scenario = load_scenario("city-grid")
    tables = CostTables(scenario)
    core, observation = fleet(scenario, 30)
    policy = make_policy("myopic", context(core))
    rows = np.arange(30)
    for _ in range(10):
        backend = core.backend
        cls, access, here = backend.cls[:, None], backend.access[:, None], backend.site
        cost = (
            tables.placement[cls, access, core.sites]
            + tables.move[cls, here[:, None], core.sites]
        )
        cheapest = np.where(core.mask, cost, np.inf).min(axis=1)

        actions = policy.act(observation, core.mask)

        chosen = cost[rows, actions]
        # features are float32, so ties within that precision may go either way
        np.testing.assert_allclose(chosen, cheapest, rtol=1e-5, atol=1e-6)
        core.step(actions)
        observation = core.observe()


@pytest.mark.parametrize("name", [*BASELINES, "mdp"])
def test_policies_never_return_a_masked_action(name: str) -> None:
    scenario = load_scenario("wang-1d" if name == "mdp" else "city-grid")
    core, observation = fleet(scenario, 40, space="sites")
    policy = make_policy(name, context(core))
    rng = np.random.default_rng(0)
    for _ in range(5):
        # hide a random share of the allowed actions, keeping staying allowed
        mask = core.mask & (rng.random(core.mask.shape) < 0.5)
        mask[np.arange(40), core.backend.site] = True

        actions = policy.act(observation, mask)

        assert mask[np.arange(40), actions].all()
        core.step(actions)
        observation = core.observe()


def test_weights_of_wang_scenario_are_hop_costs_only() -> None:
    weights = load_config("wang-1d").costs.weights

    assert weights == CostWeights(
        access_latency=0.0,
        slo_violation=0.0,
        co_residency=0.0,
        distance=1.0,
        downtime=0.0,
        bytes_moved=0.0,
        zone_crossing=0.0,
        migration=1.0,
    )
