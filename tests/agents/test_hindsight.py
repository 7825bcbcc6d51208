import itertools

import networkx as nx
import numpy as np
import pytest

from mecrl.agents.hindsight import hindsight_optimum, lookahead_sites, path_cost


def random_instance(
    seed: int, n_slots: int, n_sites: int, infeasible_share: float = 0.15
) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    slot = rng.uniform(0.0, 5.0, size=(n_slots, n_sites))
    slot[rng.random(slot.shape) < infeasible_share] = np.inf
    migration = rng.uniform(0.0, 4.0, size=(n_sites, n_sites))
    migration[rng.random(migration.shape) < infeasible_share] = np.inf
    np.fill_diagonal(migration, 0.0)
    return slot, migration, int(rng.integers(n_sites))


def brute_force(
    slot: np.ndarray, migration: np.ndarray, initial: int, discount: float
) -> tuple[float, tuple[int, ...]]:
    n_slots, n_sites = slot.shape
    best, best_path = np.inf, ()
    for path in itertools.product(range(n_sites), repeat=n_slots):
        total, previous = 0.0, initial
        for t, site in enumerate(path):
            total += discount**t * (slot[t, site] + migration[previous, site])
            previous = site
        if total < best:
            best, best_path = total, path
    return best, best_path


@pytest.mark.parametrize("discount", [1.0, 0.7])
@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force(seed: int, discount: float) -> None:
    slot, migration, initial = random_instance(seed, n_slots=4 + seed % 2, n_sites=3)
    best, _ = brute_force(slot, migration, initial, discount)
    if np.isinf(best):
        with pytest.raises(ValueError, match="no feasible site sequence"):
            hindsight_optimum(slot, migration, initial, discount)
        return

    plan = hindsight_optimum(slot, migration, initial, discount)

    assert plan.total_cost.shape == (1,)
    assert plan.sites.shape == (1, slot.shape[0])
    assert plan.total_cost[0] == pytest.approx(best, rel=1e-12)
    rescored = path_cost(slot, migration, initial, plan.sites[0], discount)
    assert rescored[0] == pytest.approx(best, rel=1e-12)


def test_brute_force_instances_include_infeasible_ones() -> None:
    # The parametrised comparison above only tests the error path if some seeds
    # are infeasible; a heavier share of inf entries makes sure of one.
    slot, migration, initial = random_instance(3, 4, 3, infeasible_share=0.6)
    assert np.isinf(brute_force(slot, migration, initial, 1.0)[0])
    with pytest.raises(ValueError, match="no feasible site sequence"):
        hindsight_optimum(slot, migration, initial)


def time_expanded_graph(
    slot: np.ndarray, migration: np.ndarray, initial: int, discount: float
) -> nx.DiGraph:
    n_slots, n_sites = slot.shape
    graph = nx.DiGraph()
    for t, site in itertools.product(range(n_slots), range(n_sites)):
        sources = (
            [("start", initial)] if t == 0 else [(t - 1, a) for a in range(n_sites)]
        )
        for source in sources:
            weight = discount**t * (slot[t, site] + migration[source[1], site])
            if np.isfinite(weight):
                graph.add_edge(source, (t, site), weight=weight)
        if t == n_slots - 1:
            graph.add_edge((t, site), "end", weight=0.0)
    return graph


def test_matches_networkx_shortest_path() -> None:
    slot, migration, initial = random_instance(11, n_slots=12, n_sites=6)
    graph = time_expanded_graph(slot, migration, initial, discount=0.9)

    expected = nx.shortest_path_length(graph, ("start", initial), "end", "weight")
    plan = hindsight_optimum(slot, migration, initial, discount=0.9)

    assert plan.total_cost[0] == pytest.approx(expected, rel=1e-12)


def test_no_random_or_perturbed_path_is_cheaper() -> None:
    slot, migration, initial = random_instance(5, n_slots=20, n_sites=5)
    rng = np.random.default_rng(0)
    plan = hindsight_optimum(slot, migration, initial)
    best = plan.total_cost[0]

    random_paths = rng.integers(5, size=(5000, 20))
    assert np.all(path_cost(slot, migration, initial, random_paths) >= best - 1e-9)

    # Every path that differs from the optimum at one slot.
    neighbours = np.repeat(plan.sites, 20 * 5, axis=0)
    for index, (t, site) in enumerate(itertools.product(range(20), range(5))):
        neighbours[index, t] = site
    costs = path_cost(slot, migration, initial, neighbours)
    assert np.all(costs >= best - 1e-9)
    assert np.isfinite(best)


def test_batch_equals_separate_calls() -> None:
    rng = np.random.default_rng(7)
    slot = rng.uniform(0.0, 3.0, size=(4, 15, 5))
    migration = rng.uniform(0.0, 6.0, size=(4, 5, 5))
    for matrix in migration:
        np.fill_diagonal(matrix, 0.0)
    initial = np.array([0, 4, 2, 2])

    plan = hindsight_optimum(slot, migration, initial, discount=0.95)

    for i in range(4):
        single = hindsight_optimum(slot[i], migration[i], int(initial[i]), 0.95)
        assert plan.total_cost[i] == pytest.approx(single.total_cost[0], rel=1e-12)
        np.testing.assert_array_equal(plan.sites[i], single.sites[0])


def test_shared_costs_broadcast_over_initial_sites() -> None:
    slot, migration, _ = random_instance(2, n_slots=10, n_sites=4, infeasible_share=0)
    plan = hindsight_optimum(slot, migration, np.array([0, 1, 2, 3]))

    assert plan.sites.shape == (4, 10)
    for start in range(4):
        single = hindsight_optimum(slot, migration, start)
        assert plan.total_cost[start] == pytest.approx(single.total_cost[0])


def test_discount_can_make_an_early_migration_not_worth_it() -> None:
    # Site 0 costs 1 a slot, site 1 nothing, and moving there costs 4 once.
    slot = np.tile([1.0, 0.0], (10, 1))
    migration = np.array([[0.0, 4.0], [4.0, 0.0]])

    patient = hindsight_optimum(slot, migration, 0, discount=1.0)
    impatient = hindsight_optimum(slot, migration, 0, discount=0.5)

    assert patient.total_cost[0] == pytest.approx(4.0)
    np.testing.assert_array_equal(patient.sites[0], np.ones(10))
    assert impatient.total_cost[0] == pytest.approx((1 - 0.5**10) / 0.5)
    np.testing.assert_array_equal(impatient.sites[0], np.zeros(10))


def test_tiny_discount_keeps_late_infeasible_slots_infeasible() -> None:
    # 0.5**t underflows to 0 long before slot 1200; inf must not become NaN or 0.
    slot = np.zeros((1200, 2))
    slot[-1, :] = np.inf
    with pytest.raises(ValueError, match=r"service 0 .*slot 1199"):
        hindsight_optimum(slot, np.zeros((2, 2)), 0, discount=0.5)


def test_infeasible_service_is_named_with_the_slot() -> None:
    slot = np.zeros((3, 5, 2))
    slot[1, 2, :] = np.inf
    with pytest.raises(ValueError, match=r"service 1 .*slot 2"):
        hindsight_optimum(slot, np.zeros((2, 2)), 0)


def test_unreachable_site_counts_as_infeasible() -> None:
    slot = np.array([[np.inf, 0.0], [0.0, 0.0]])
    forbidden = np.array([[0.0, np.inf], [np.inf, 0.0]])
    with pytest.raises(ValueError, match=r"service 0 .*slot 0"):
        hindsight_optimum(slot, forbidden, 0)


def test_path_cost_marks_infeasible_paths_inf() -> None:
    slot = np.array([[0.0, np.inf], [0.0, 0.0]])
    migration = np.array([[0.0, 1.0], [1.0, 0.0]])

    costs = path_cost(slot, migration, 0, np.array([[0, 0], [1, 1], [0, 1]]))

    np.testing.assert_array_equal(costs, [0.0, np.inf, 1.0])


@pytest.mark.parametrize(
    ("slot", "migration", "initial", "discount", "match"),
    [
        (np.zeros(3), np.zeros((3, 3)), 0, 1.0, "slot_cost"),
        (np.zeros((0, 3)), np.zeros((3, 3)), 0, 1.0, "slot_cost"),
        (np.full((2, 3), np.nan), np.zeros((3, 3)), 0, 1.0, "slot_cost"),
        (np.full((2, 3), -np.inf), np.zeros((3, 3)), 0, 1.0, "slot_cost"),
        (np.zeros((2, 3)), np.zeros((2, 2)), 0, 1.0, "migration_cost"),
        (np.zeros((2, 3)), np.ones((3, 3)), 0, 1.0, "migration_cost"),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3, 3)),
            np.zeros(3, int),
            1.0,
            "migration_cost",
        ),
        (np.zeros((2, 3)), np.zeros((3, 3)), 3, 1.0, "initial_site"),
        (np.zeros((2, 3)), np.zeros((3, 3)), 0.0, 1.0, "initial_site"),
        (np.zeros((2, 3)), np.zeros((3, 3)), 0, 0.0, "discount"),
        (np.zeros((2, 3)), np.zeros((3, 3)), 0, 1.5, "discount"),
    ],
)
def test_bad_arguments_are_named(
    slot: np.ndarray,
    migration: np.ndarray,
    initial: int | float | np.ndarray,
    discount: float,
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        hindsight_optimum(slot, migration, initial, discount)


def test_path_cost_rejects_paths_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="sites"):
        path_cost(np.zeros((4, 2)), np.zeros((2, 2)), 0, np.zeros(3, dtype=int))


@pytest.mark.parametrize("seed", range(4))
def test_lookahead_over_the_whole_episode_is_the_optimum(seed: int) -> None:
    slot, migration, initial = random_instance(seed, 12, 6, infeasible_share=0.0)
    plan = hindsight_optimum(slot, migration, initial)

    for window in (12, 20):
        sites = lookahead_sites(slot, migration, initial, window)
        np.testing.assert_array_equal(sites, plan.sites)


@pytest.mark.parametrize("seed", range(4))
def test_lookahead_of_one_slot_takes_the_cheapest_next_slot(seed: int) -> None:
    slot, migration, initial = random_instance(seed, 15, 7, infeasible_share=0.0)
    slot[:, 3] = np.inf  # a site no slot allows stays out of every plan

    sites = lookahead_sites(slot, migration, initial, 1)

    previous, expected = initial, []
    for t in range(15):
        previous = int(np.argmin(slot[t] + migration[previous]))
        expected.append(previous)
    np.testing.assert_array_equal(sites[0], expected)
    assert 3 not in sites


def test_longer_foresight_costs_less_on_average() -> None:
    totals = {window: 0.0 for window in (1, 3, 30)}
    for seed in range(6):
        slot, migration, initial = random_instance(seed, 30, 8, infeasible_share=0.0)
        for window in totals:
            sites = lookahead_sites(slot, migration, initial, window)
            totals[window] += float(path_cost(slot, migration, initial, sites)[0])
    assert totals[1] > totals[3] > totals[30]


def test_lookahead_needs_a_window_of_a_slot() -> None:
    slot, migration, initial = random_instance(0, 5, 3, infeasible_share=0.0)
    with pytest.raises(ValueError, match="window: must be >= 1 slot, got 0"):
        lookahead_sites(slot, migration, initial, 0)
