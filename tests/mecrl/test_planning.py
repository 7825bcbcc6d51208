"""Planning over drawn futures: mean costs and the cheapest plan per first step."""

import numpy as np
import pytest

from mecrl.agents.hindsight import hindsight_optimum
from mecrl.evaluate import episode_problems
from mecrl.planning import FuturePlanner, first_step_costs, mean_placement_costs
from mecrl.problem import cost_tables
from mecrl.scenario import load_scenario


def test_mean_placement_costs_average_the_drawn_futures() -> None:
    scenario = load_scenario("city-grid")
    placement = cost_tables(scenario).placement
    rng = np.random.default_rng(0)
    cls = rng.integers(0, placement.shape[0], 7)
    futures = rng.integers(0, placement.shape[1], (7, 5, 4))

    mean = mean_placement_costs(placement, cls, futures)

    expected = placement[cls[:, None, None], futures].mean(axis=1)
    assert mean.shape == expected.shape == (7, 4, scenario.n_sites)
    np.testing.assert_array_equal(np.isinf(mean), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(mean[finite], expected[finite], rtol=1e-12)


def test_plans_over_one_sure_future_cost_what_hindsight_does() -> None:
    scenario = load_scenario("city-grid")
    problems = episode_problems(scenario, 6, 8)
    window = 12
    slot_cost = problems.slot_cost[:, :window]
    move = cost_tables(scenario).move[problems.cls]

    costs = first_step_costs(
        slot_cost[:, 0], slot_cost[:, 1:], move, problems.initial_site
    )

    for n in range(8):
        plan = hindsight_optimum(slot_cost[n], move[n], problems.initial_site[n])
        assert costs[n].min() == pytest.approx(plan.total_cost[0], rel=1e-12)
        assert costs[n, plan.sites[0, 0]] == pytest.approx(plan.total_cost[0])


def test_a_plan_of_this_slot_alone_is_the_move_and_the_slot() -> None:
    rng = np.random.default_rng(3)
    slot_cost = rng.random((4, 6))
    move = rng.random((4, 6, 6))
    current = np.array([0, 5, 2, 2])

    costs = first_step_costs(slot_cost, np.empty((4, 0, 6)), move, current)

    np.testing.assert_allclose(costs, move[np.arange(4), current] + slot_cost)


def test_the_planner_needs_random_waypoint_users() -> None:
    with pytest.raises(ValueError, match="scenario 'wang-1d' uses 'random-walk'"):
        FuturePlanner(load_scenario("wang-1d"), 5, 8)


def test_the_planner_window_stops_at_the_episode_end() -> None:
    scenario = load_scenario("city-grid")
    planner = FuturePlanner(scenario, 30, 8)
    problems = episode_problems(scenario, 1, 5)
    last = scenario.config.episode_slots - 1
    position_m = np.zeros((5, 2))
    velocity_mps = np.ones((5, 2))

    costs = planner.first_step_costs(
        problems.cls,
        problems.access[:, last],
        problems.initial_site,
        last,
        position_m,
        velocity_mps,
    )

    move = cost_tables(scenario).move[problems.cls]
    alone = first_step_costs(
        problems.slot_cost[:, last],
        np.empty((5, 0, scenario.n_sites)),
        move,
        problems.initial_site,
    )
    np.testing.assert_array_equal(costs, alone)
