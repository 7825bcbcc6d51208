import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from mecrl.agents.mdp import (
    DistanceChain,
    DistanceCosts,
    MdpSolution,
    best_threshold,
    distance_costs,
    evaluate_policy,
    solve_policy_iteration,
    solve_value_iteration,
    threshold_policy_values,
)
from mecrl.costs import CostConfig, HopCost, wang2019_costs

MAX_DISTANCE = 12


def threshold_target(threshold: int, max_distance: int) -> np.ndarray:
    distances = np.arange(max_distance + 1)
    return np.where(distances < threshold, distances, 0)


def lumped_ring_walk(move_prob: float, max_distance: int) -> np.ndarray:
    """Distance chain obtained by walking on every cell of the ring explicitly."""
    n_cells = 2 * max_distance + 1
    cells = np.arange(n_cells)
    walk = np.zeros((n_cells, n_cells))
    walk[cells, cells] = 1 - move_prob
    walk[cells, (cells + 1) % n_cells] += move_prob / 2
    walk[cells, (cells - 1) % n_cells] += move_prob / 2
    distance = np.minimum(cells, n_cells - cells)
    lumped = np.zeros((max_distance + 1, max_distance + 1))
    for d in range(max_distance + 1):
        # The service sits in cell 0; every cell at distance d moves alike.
        lumped[d] = np.bincount(distance, weights=walk[d], minlength=max_distance + 1)
    return lumped


@pytest.mark.parametrize("move_prob", [0.0, 0.3, 1.0])
def test_ring_chain_is_the_exact_lumped_walk(move_prob: float) -> None:
    chain = DistanceChain.ring_1d(move_prob, 6)
    np.testing.assert_allclose(chain.matrix(), lumped_ring_walk(move_prob, 6))


def test_hex_chain_probabilities() -> None:
    chain = DistanceChain.hex_2d(0.6, 4)
    np.testing.assert_allclose(
        chain.outward, [0.6, 0.3, 0.25, 0.6 * (1 / 3 + 1 / 18), 0]
    )
    np.testing.assert_allclose(
        chain.inward, [0, 0.1, 0.15, 0.6 * (1 / 3 - 1 / 18), 0.6 * (1 / 3 - 1 / 24)]
    )
    assert chain.max_distance == 4


@pytest.mark.parametrize("make", [DistanceChain.ring_1d, DistanceChain.hex_2d])
@pytest.mark.parametrize("move_prob", [0.0, 0.25, 0.7, 1.0])
def test_chain_matrices_are_row_stochastic(
    make: Callable[[float, int], DistanceChain], move_prob: float
) -> None:
    matrix = make(move_prob, 9).matrix()
    assert matrix.shape == (10, 10)
    assert np.all(matrix >= 0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_wang2019_costs() -> None:
    costs = DistanceCosts.wang2019(3, migration_weight=2.0, power=0.5)
    np.testing.assert_allclose(costs.transmission, [0, 0.5, 0.75, 0.875])
    np.testing.assert_allclose(costs.migration, [0, 2.0, 2.5, 2.75])


def test_distance_costs_ignore_the_weights() -> None:
    shapes = wang2019_costs(migration_weight=2.0, power=0.5)
    costs = distance_costs(CostConfig(distance=shapes.distance), 3)
    np.testing.assert_allclose(costs.transmission, [0, 0.5, 0.75, 0.875])
    np.testing.assert_allclose(costs.migration, CostConfig().migration.table(3))


@pytest.mark.parametrize("hops", [0, 1, 4])
def test_hop_cost_at_matches_its_table(hops: int) -> None:
    shape = HopCost(const=3.0, scale=-1.0, power=0.9)
    assert shape.at(hops) == pytest.approx(shape.table(4)[hops], rel=1e-15)


@pytest.mark.parametrize(
    ("make", "move_prob", "migration_weight", "discount"),
    [
        (make, q, w, g)
        for make in (DistanceChain.ring_1d, DistanceChain.hex_2d)
        for q, w, g in [
            (0.3, 0.5, 0.6),
            (0.9, 3.0, 0.95),
            (0.6, 1.0, 0.9),
            (1.0, 0.0, 0.0),
        ]
    ],
)
def test_value_and_policy_iteration_agree(
    make: Callable[[float, int], DistanceChain],
    move_prob: float,
    migration_weight: float,
    discount: float,
) -> None:
    chain = make(move_prob, MAX_DISTANCE)
    costs = DistanceCosts.wang2019(MAX_DISTANCE, migration_weight)

    by_values = solve_value_iteration(chain, costs, discount)
    by_policies = solve_policy_iteration(chain, costs, discount)

    np.testing.assert_allclose(by_values.values, by_policies.values, atol=1e-6)
    np.testing.assert_array_equal(by_values.target, by_policies.target)


def test_optimal_values_satisfy_bellman_equation() -> None:
    chain = DistanceChain.hex_2d(0.5, MAX_DISTANCE)
    costs = DistanceCosts.wang2019(MAX_DISTANCE, 1.5)
    solution = solve_policy_iteration(chain, costs, 0.9)

    distances = np.arange(MAX_DISTANCE + 1)
    moved = np.abs(distances[:, None] - distances[None, :])
    after = costs.transmission + 0.9 * chain.matrix() @ solution.values
    decision_costs = costs.migration[moved] + after[None, :]

    np.testing.assert_allclose(decision_costs.min(axis=1), solution.values, rtol=1e-12)
    chosen = decision_costs[distances, solution.target]
    np.testing.assert_allclose(chosen, solution.values, rtol=1e-12)


@pytest.mark.parametrize(
    ("move_prob", "migration_weight", "discount"),
    list(itertools.product([0.2, 0.5, 0.8], [0.25, 1.0, 2.0, 4.0], [0.5, 0.9])),
)
def test_ring_optimum_is_the_closed_form_threshold(
    move_prob: float, migration_weight: float, discount: float
) -> None:
    chain = DistanceChain.ring_1d(move_prob, MAX_DISTANCE)
    model = wang2019_costs(migration_weight)

    solution = solve_value_iteration(
        chain, distance_costs(model, MAX_DISTANCE), discount
    )
    threshold = solution.threshold()

    assert threshold is not None
    assert threshold == best_threshold(move_prob, discount, MAX_DISTANCE, model)
    closed_form = threshold_policy_values(
        move_prob, discount, threshold, MAX_DISTANCE, model
    )
    np.testing.assert_allclose(closed_form, solution.values, atol=1e-6)


def test_closed_form_covers_thresholds_that_migrate() -> None:
    # The grid above holds both policies that migrate and ones that never do.
    found = set()
    for q, w, g in itertools.product(
        [0.2, 0.5, 0.8], [0.25, 1.0, 2.0, 4.0], [0.5, 0.9]
    ):
        found.add(best_threshold(q, g, MAX_DISTANCE, wang2019_costs(w)))
    assert MAX_DISTANCE + 1 in found
    assert len(found - {MAX_DISTANCE + 1}) >= 3


@pytest.mark.parametrize(
    ("move_prob", "discount"), [(0.1, 0.3), (0.6, 0.95), (1.0, 0.8)]
)
def test_closed_form_equals_exact_evaluation_of_every_threshold(
    move_prob: float, discount: float
) -> None:
    # Costs with const + scale != 0 check that distance 0 stays free regardless.
    model = CostConfig(
        distance=HopCost(const=2.0, scale=-1.5, power=0.7),
        migration=HopCost(const=3.0, scale=-1.0, power=0.9),
    )
    max_distance = 8
    chain = DistanceChain.ring_1d(move_prob, max_distance)
    costs = distance_costs(model, max_distance)

    for threshold in range(1, max_distance + 2):
        exact = evaluate_policy(
            chain, costs, discount, threshold_target(threshold, max_distance)
        )
        closed_form = threshold_policy_values(
            move_prob, discount, threshold, max_distance, model
        )
        np.testing.assert_allclose(
            closed_form, exact, rtol=1e-9, err_msg=f"N={threshold}"
        )


def test_free_migration_always_follows_the_user() -> None:
    chain = DistanceChain.ring_1d(0.5, MAX_DISTANCE)
    wang = DistanceCosts.wang2019(MAX_DISTANCE, 1.0)
    free = DistanceCosts(wang.transmission, np.zeros(MAX_DISTANCE + 1))

    assert solve_policy_iteration(chain, free, 0.9).threshold() == 1


def test_wang2019_zero_weight_still_charges_a_fixed_migration_cost() -> None:
    # migration_weight = 0 leaves the fixed cost of 1 per migration, more than
    # one slot at distance 1 costs (0.2), so following at once is not optimal.
    chain = DistanceChain.ring_1d(0.5, MAX_DISTANCE)
    costs = DistanceCosts.wang2019(MAX_DISTANCE, 0.0)

    assert solve_policy_iteration(chain, costs, 0.9).threshold() > 1


@pytest.mark.parametrize("make", [DistanceChain.ring_1d, DistanceChain.hex_2d])
def test_prohibitive_migration_never_migrates(
    make: Callable[[float, int], DistanceChain],
) -> None:
    chain = make(0.8, MAX_DISTANCE)
    costs = DistanceCosts.wang2019(MAX_DISTANCE, 1e6)

    solution = solve_policy_iteration(chain, costs, 0.95)

    assert solution.threshold() == MAX_DISTANCE + 1
    np.testing.assert_array_equal(solution.target, np.arange(MAX_DISTANCE + 1))


@pytest.mark.parametrize("make", [DistanceChain.ring_1d, DistanceChain.hex_2d])
@pytest.mark.parametrize("discount", [0.6, 0.9])
def test_threshold_grows_with_migration_weight(
    make: Callable[[float, int], DistanceChain], discount: float
) -> None:
    chain = make(0.6, MAX_DISTANCE)
    thresholds = [
        solve_policy_iteration(
            chain, DistanceCosts.wang2019(MAX_DISTANCE, weight), discount
        ).threshold()
        for weight in np.linspace(0.0, 8.0, 17)
    ]

    steps = [n for n in thresholds if n is not None]
    assert len(steps) == len(thresholds)
    assert steps == sorted(steps)
    assert steps[0] < steps[-1]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ([0, 1, 2, 0, 0], 3),
        ([0, 0, 0, 0, 0], 1),
        ([0, 1, 2, 3, 4], 5),
        ([0, 1, 0, 3, 4], None),
        ([0, 1, 2, 1, 0], None),
        ([1, 1, 2, 3, 4], None),
    ],
)
def test_threshold_reading(target: list[int], expected: int | None) -> None:
    solution = MdpSolution(np.zeros(5), np.array(target), iterations=1)
    assert solution.threshold() == expected


def test_value_iteration_reports_non_convergence() -> None:
    chain = DistanceChain.ring_1d(0.5, 5)
    costs = DistanceCosts.wang2019(5, 1.0)
    with pytest.raises(RuntimeError, match="max_iter=3"):
        solve_value_iteration(chain, costs, 0.99, max_iter=3)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DistanceChain.ring_1d(1.5, 4), "move_prob"),
        (lambda: DistanceChain.hex_2d(-0.1, 4), "move_prob"),
        (lambda: DistanceChain.ring_1d(0.5, 0), "max_distance"),
        (lambda: DistanceChain(np.array([0.5, 0.5]), np.array([0.0, 0.5])), "outward"),
        (lambda: DistanceChain(np.array([0.5, 0.0]), np.array([0.1, 0.5])), "inward"),
        (lambda: DistanceChain(np.array([0.5, 0.0]), np.zeros(3)), "inward"),
        (
            lambda: DistanceChain(np.array([0.5, 0.7, 0.0]), np.array([0.0, 0.6, 0.2])),
            "sum exceeds 1",
        ),
        (lambda: DistanceCosts(np.zeros(3), np.ones(3)), "migration"),
        (lambda: DistanceCosts(np.zeros(3), np.zeros(4)), "migration"),
        (lambda: DistanceCosts(np.array([0, np.nan]), np.zeros(2)), "transmission"),
        (lambda: DistanceCosts.wang2019(4, -1.0), "migration_weight"),
        (lambda: DistanceCosts.wang2019(4, 1.0, power=1.0), "power"),
        (lambda: DistanceCosts.wang2019(4, math.inf), "migration_weight"),
        (lambda: HopCost(1.0, -1.0, 0.0), "power"),
        (lambda: HopCost(math.nan, -1.0, 0.8), "const"),
        (lambda: HopCost(1.0, math.inf, 0.8), "scale"),
        (lambda: distance_costs(wang2019_costs(), 0), "max_distance"),
    ],
)
def test_invalid_models_are_named(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("solve", "kwargs", "match"),
    [
        (solve_value_iteration, {"discount": 1.0}, "discount"),
        (solve_policy_iteration, {"discount": -0.1}, "discount"),
        (solve_value_iteration, {"discount": 0.9, "tol": 0.0}, "tol"),
        (solve_value_iteration, {"discount": 0.9, "max_iter": 0}, "max_iter"),
        (solve_policy_iteration, {"discount": 0.9, "max_iter": 0}, "max_iter"),
    ],
)
def test_invalid_solver_arguments_are_named(
    solve: Callable[..., MdpSolution], kwargs: dict[str, float], match: str
) -> None:
    chain = DistanceChain.ring_1d(0.5, 4)
    costs = DistanceCosts.wang2019(4, 1.0)
    with pytest.raises(ValueError, match=match):
        solve(chain, costs, **kwargs)


def test_mismatched_chain_and_costs_are_rejected() -> None:
    chain = DistanceChain.ring_1d(0.5, 4)
    with pytest.raises(ValueError, match="costs"):
        solve_policy_iteration(chain, DistanceCosts.wang2019(5, 1.0), 0.9)


def test_evaluate_policy_rejects_bad_targets() -> None:
    chain = DistanceChain.ring_1d(0.5, 4)
    costs = DistanceCosts.wang2019(4, 1.0)
    with pytest.raises(ValueError, match="target"):
        evaluate_policy(chain, costs, 0.9, np.array([0, 1, 2, 3, 5]))
    with pytest.raises(ValueError, match="target"):
        evaluate_policy(chain, costs, 0.9, np.zeros(4, dtype=int))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.9, 2, 5), "move_prob"),
        ((0.5, 0.0, 2, 5), "discount"),
        ((0.5, 1.0, 2, 5), "discount"),
        ((0.5, 0.9, 0, 5), "threshold"),
        ((0.5, 0.9, 7, 5), "threshold"),
        ((0.5, 0.9, 1, 0), "max_distance"),
    ],
)
def test_invalid_closed_form_arguments_are_named(
    args: tuple[float, float, int, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        threshold_policy_values(*args, costs=wang2019_costs(1.0))


def test_closed_form_rejects_a_transmission_power_at_a_root() -> None:
    # With g = 0.9 and p = 0.25 the homogeneous roots are (0.55 +- sqrt(0.1)) / 0.45.
    root = (0.55 - math.sqrt(0.1)) / 0.45
    model = CostConfig(
        distance=HopCost(const=1.0, scale=-1.0, power=root),
        migration=HopCost(const=1.0, scale=0.0, power=0.5),
    )
    with pytest.raises(ValueError, match="transmission power"):
        threshold_policy_values(0.5, 0.9, 3, 6, model)
