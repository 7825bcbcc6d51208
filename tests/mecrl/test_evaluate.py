"""Evaluation: the exported problems, the hindsight floor, the CLI report."""

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from mecrl.backend import SimBackend
from mecrl.cli import main
from mecrl.costs import TERM_NAMES, CostConfig, CostWeights
from mecrl.envs import MigrationEnv
from mecrl.evaluate import (
    HINDSIGHT,
    episode_key,
    episode_problems,
    evaluate,
    run_hindsight,
    run_lookahead,
    run_policy,
    run_predictive,
    tune_policy,
)
from mecrl.scenario import (
    ComponentConfig,
    Scenario,
    ScenarioConfig,
    load_scenario,
)
from mecrl.services import ServiceClassConfig
from mecrl.sites import SitesConfig

BASELINES = ["never", "follow", "threshold", "myopic"]

# three sites in a row, one trust zone each, west and east untrusted: a move
# from one end to the other must stop in the middle
TINY = ScenarioConfig(
    name="tiny-line",
    seed=2,
    topology=ComponentConfig(
        "line", {"n_sites": 3, "spacing_m": 2000.0, "bandwidth_mbps": 200.0}
    ),
    mobility=ComponentConfig("random-walk", {"move_prob": 0.9}),
    episode_slots=4,
    candidates=3,
    per_hop_ms=5.0,
    sites=SitesConfig(
        zones=("west", "central", "east"),
        untrusted_zone_pairs=(("west", "east"),),
        background_tenants=0.5,
    ),
    layers={"base": 100.0},
    services=(
        ServiceClassConfig(
            name="app",
            migration="precopy",
            state_mb=64.0,
            layers=("base",),
            slo_ms=15.0,
        ),
    ),
    costs=CostConfig(weights=CostWeights(zone_crossing=0.5)),
)


def test_episode_problems_shapes_and_start() -> None:
    scenario = load_scenario("city-grid")
    problems = episode_problems(scenario, seed=5, n_services=6)
    slots, n_sites = scenario.config.episode_slots, scenario.n_sites

    assert problems.slot_cost.shape == (6, slots, n_sites)
    assert problems.access.shape == (6, slots)
    assert problems.migration_cost.shape == (3, n_sites, n_sites)
    assert np.all(np.diagonal(problems.migration_cost, axis1=1, axis2=2) == 0.0)
    # every service starts where it may run
    start = problems.slot_cost[np.arange(6), 0, problems.initial_site]
    assert np.isfinite(start).all()
    with pytest.raises(ValueError, match="n_services must be >= 1"):
        episode_problems(scenario, seed=5, n_services=0)


@pytest.mark.parametrize("name", ["city-grid", "hex-2d", "wang-1d"])
def test_exported_problems_reproduce_the_env_rewards(name: str) -> None:
    scenario = load_scenario(name)
    seed, n_services = 9, 3
    problems = episode_problems(scenario, seed, n_services)
    rng = np.random.default_rng(0)

    for n in range(n_services):
        env = MigrationEnv(scenario)
        _, info = env.reset(seed=seed, options={"service": n})
        assert info["site"] == problems.initial_site[n]
        previous = info["site"]
        for t in range(scenario.config.episode_slots):
            assert info["access"] == problems.access[n, t]
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
            _, reward, _, _, info = env.step(action)
            site = info["site"]
            expected = (
                problems.slot_cost[n, t, site]
                + problems.migration_cost[problems.cls[n], previous, site]
            )
            assert np.isfinite(expected)
            assert reward == pytest.approx(-expected, rel=1e-12, abs=1e-12)
            previous = site


def test_cli_export_reproduces_the_env_rewards(tmp_path: Path) -> None:
    path = tmp_path / "problems.json"
    argv = ["scenario", "export", "city-grid", "--seed", "3", "--services", "4"]
    status = main([*argv, "--out", str(path)])
    document = json.loads(path.read_text())
    scenario = load_scenario("city-grid")

    assert status == 0
    assert document["scenario"] == "city-grid"
    assert document["config_sha256"] == scenario.config.digest()
    assert document["slots"] == scenario.config.episode_slots
    assert document["sites"] == scenario.n_sites
    assert [s["service"] for s in document["services"]] == [0, 1, 2, 3]
    rng = np.random.default_rng(3)
    for service in document["services"]:
        slot_cost, migration_cost = service["slot_cost"], service["migration_cost"]
        env = MigrationEnv(scenario, action_space="sites")
        _, info = env.reset(seed=3, options={"service": service["service"]})
        assert scenario.classes.names[env.backend.cls[0]] == service["class"]
        assert info["site"] == service["initial_site"]
        previous = info["site"]
        for t in range(document["slots"]):
            assert info["access"] == service["access_site"][t]
            # null marks exactly the sites the environment masks
            allowed = [
                slot_cost[t][s] is not None and migration_cost[previous][s] is not None
                for s in range(document["sites"])
            ]
            np.testing.assert_array_equal(env.action_masks(), allowed)
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
            _, reward, _, _, info = env.step(action)
            site = info["site"]
            expected = slot_cost[t][site] + migration_cost[previous][site]
            assert reward == pytest.approx(-expected, rel=1e-12, abs=1e-12)
            previous = site


def test_cli_export_marks_infeasible_entries_null(tmp_path: Path) -> None:
    path = tmp_path / "problems.json"
    main(["scenario", "export", "city-grid", "--services", "6", "--out", str(path)])
    document = json.loads(path.read_text())
    problems = episode_problems(load_scenario("city-grid"), 0, 6)

    for n, service in enumerate(document["services"]):
        slot_null = np.array([[v is None for v in row] for row in service["slot_cost"]])
        move_null = np.array(
            [[v is None for v in row] for row in service["migration_cost"]]
        )
        np.testing.assert_array_equal(slot_null, np.isinf(problems.slot_cost[n]))
        np.testing.assert_array_equal(
            move_null, np.isinf(problems.migration_cost[problems.cls[n]])
        )
    # west to east is forbidden in city-grid, so some moves are always null
    assert move_null.any()


@pytest.mark.parametrize(
    ("name", "n_services"), [("wang-1d", 20), ("hex-2d", 3), ("city-grid", 12)]
)
def test_no_policy_beats_the_hindsight_optimum(name: str, n_services: int) -> None:
    outcomes = evaluate(load_scenario(name), 1, n_services, BASELINES)

    assert list(outcomes) == [HINDSIGHT, *BASELINES]
    floor = outcomes[HINDSIGHT].per_service
    assert floor.shape == (n_services,)
    for name_, outcome in outcomes.items():
        assert np.all(outcome.per_service >= floor - 1e-9), name_
        assert outcome.total_cost == pytest.approx(outcome.per_service.sum())
        assert set(outcome.terms) == set(TERM_NAMES)


def test_never_policy_reports_no_move_terms() -> None:
    outcome = evaluate(load_scenario("city-grid"), 0, 8, ["never"])["never"]

    assert outcome.migrations == 0
    for name in ("downtime", "bytes_moved", "zone_crossing", "migration"):
        assert outcome.terms[name] == 0.0
    weights = load_scenario("city-grid").config.costs.weights
    for name in TERM_NAMES:
        assert outcome.weighted[name] == pytest.approx(
            getattr(weights, name) * outcome.terms[name]
        )
    assert sum(outcome.weighted.values()) == pytest.approx(outcome.total_cost)


def brute_force(scenario: Scenario, seed: int) -> float:
    """Cheapest cost of service 0 over every site sequence, via the backend."""
    best = np.inf
    n_sites, slots = scenario.n_sites, scenario.config.episode_slots
    for sequence in itertools.product(range(n_sites), repeat=slots):
        backend = SimBackend(scenario, coupled=False)
        backend.reset(episode_key(seed), np.array([0]))
        total = 0.0
        for site in sequence:
            result = backend.step(np.array([site]))
            if result.refused[0]:
                break
            total += float(result.cost[0])
        else:
            best = min(best, total)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hindsight_optimum_equals_brute_force(seed: int) -> None:
    scenario = Scenario(TINY)
    assert scenario.n_sites == 3

    optimum = evaluate(scenario, seed, 1, [])[HINDSIGHT].per_service[0]

    assert optimum == pytest.approx(brute_force(scenario, seed), rel=1e-12)


def test_tiny_scenario_forbids_the_direct_end_to_end_move() -> None:
    problems = episode_problems(Scenario(TINY), 0, 1)

    assert np.isinf(problems.migration_cost[0, 0, 2])
    assert np.isinf(problems.migration_cost[0, 2, 0])
    assert np.isfinite(problems.migration_cost[0, 0, 1])


def test_cli_evaluate_writes_json_and_prints_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evaluation.json"

    argv = ["evaluate", "--scenario", "wang-1d", "--services", "5", "--seed", "2"]
    status = main([*argv, "--policies", "never", "--json", str(path)])

    assert status == 0
    document = json.loads(path.read_text())
    policies = document["policies"]
    assert set(policies) == {"hindsight", "never"}
    for outcome in policies.values():
        assert len(outcome["per_service"]) == 5
        assert outcome["total_cost"] == pytest.approx(sum(outcome["per_service"]))
        assert set(outcome["terms"]) == set(TERM_NAMES)
    assert policies["hindsight"]["ratio_to_hindsight"] == 1.0
    ratio = policies["never"]["total_cost"] / policies["hindsight"]["total_cost"]
    assert policies["never"]["ratio_to_hindsight"] == pytest.approx(ratio)
    assert ratio >= 1.0

    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("policy"))
    column = header.split().index("ratio")
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1 :]}
    assert rows["hindsight"][column] == "1.000"
    assert rows["never"][column] == f"{ratio:.3f}"


def test_cli_evaluate_rejects_an_unknown_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["evaluate", "--scenario", "wang-1d", "--policies", "oracle"])

    assert status == 2
    assert "unknown policy 'oracle'" in capsys.readouterr().err


def test_evaluate_handles_fewer_sites_than_candidates() -> None:
    scenario = Scenario(dataclasses.replace(TINY, candidates=8))
    assert scenario.n_sites < scenario.config.candidates

    outcomes = evaluate(scenario, 0, 2, ["never"])

    assert np.all(outcomes["never"].per_service >= outcomes[HINDSIGHT].per_service)


def test_tuning_finds_the_cheapest_threshold() -> None:
    scenario = load_scenario("wang-1d")
    tuning = tune_policy(scenario, [0, 1], 10, "threshold:hops=1,2,3,5")

    costs = {
        hops: np.mean(
            [
                run_policy(scenario, seed, 10, "threshold", hops=hops).total_cost
                for seed in (0, 1)
            ]
        )
        for hops in (1.0, 2.0, 3.0, 5.0)
    }
    np.testing.assert_allclose(tuning.mean_cost, list(costs.values()))
    assert tuning.best_value == min(costs, key=costs.__getitem__)
    assert tuning.best_spec == f"threshold:hops={tuning.best_value:g}"
    hindsight = np.mean([run_hindsight(scenario, s, 10).total_cost for s in (0, 1)])
    assert tuning.hindsight_cost == pytest.approx(hindsight)
    assert min(tuning.mean_cost) >= tuning.hindsight_cost


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("threshold", "give name:param=v1,v2"),
        ("threshold:hops=", "give name:param=v1,v2"),
        ("threshold:hops=2,far", "values must be numbers"),
        ("threshold:reach=2,3", "'reach=2' is not a parameter of threshold"),
        ("oracle:hops=2", "unknown policy 'oracle'"),
    ],
)
def test_tuning_rejects_a_bad_sweep(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tune_policy(load_scenario("wang-1d"), [0], 2, spec)


def test_cli_tune_prints_the_best_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tuning.json"
    argv = ["evaluate", "--scenario", "wang-1d", "--services", "6", "--seeds", "0,1"]
    status = main([*argv, "--tune", "threshold:hops=2,3", "--json", str(path)])

    assert status == 0
    document = json.loads(path.read_text())
    best = document["values"][int(np.argmin(document["mean_cost"]))]
    assert capsys.readouterr().out.splitlines()[-1] == f"best: threshold:hops={best:g}"


def test_cli_lookahead_rows_bracket_the_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["evaluate", "--scenario", "wang-1d", "--services", "8"]
    status = main([*argv, "--lookahead", "1,200", "--policies", "never"])

    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["lookahead-200"][1] == rows["hindsight"][1]  # the whole episode
    assert float(rows["lookahead-1"][2]) > 1.0


def test_cli_yardsticks_over_seeds_come_with_intervals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    argv = ["evaluate", "--scenario", "wang-1d", "--services", "6", "--seeds", "0,1"]
    status = main(
        [*argv, "--lookahead", "1,200", "--policies", "never", "--json", str(path)]
    )

    assert status == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert names == ["hindsight", "lookahead-1", "lookahead-200", "never"]
    policies = json.loads(path.read_text())["policies"]
    whole = policies["lookahead-200"]["per_seed"]
    best = policies["hindsight"]["per_seed"]
    # foreseeing the whole episode is the optimum, seed by seed
    assert [s["total_cost"] for s in whole] == [s["total_cost"] for s in best]
    assert policies["lookahead-1"]["ratio_to_hindsight"]["mean"] > 1.0
    assert policies["lookahead-1"]["ratio_to_hindsight"]["ci95"] is not None


@pytest.mark.parametrize("flag", ["--lookahead", "--predictive"])
def test_cli_tuning_refuses_a_yardstick(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["evaluate", "--tune", "threshold:hops=1,2", flag, "3"])

    assert status == 2
    assert f"{flag} adds a yardstick, not a heuristic to tune" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("flag", ["--lookahead", "--predictive"])
def test_cli_yardstick_window_below_one_slot_fails_before_any_run(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["evaluate", "--seeds", "0,1", flag, "0"])

    assert status == 2
    assert f"{flag[2:]}: windows must be >= 1 slot, got 0" in capsys.readouterr().err


def test_the_model_predictive_planner_lies_between_hindsight_and_the_threshold() -> (
    None
):
    scenario = load_scenario("city-grid")
    best = run_hindsight(scenario, 3, 20).total_cost
    planned = run_predictive(scenario, 3, 20, window=12, n_samples=16)
    threshold = run_policy(scenario, 3, 20, "threshold", hops=3).total_cost

    assert best <= planned.total_cost < threshold
    assert planned.migrations > 0
    again = run_predictive(scenario, 3, 20, window=12, n_samples=16)
    assert again.total_cost == planned.total_cost  # its draws are seeded


def test_a_one_slot_model_predictive_plan_is_the_one_slot_lookahead() -> None:
    scenario = load_scenario("city-grid")
    planned = run_predictive(scenario, 2, 10, window=1)
    looked = run_lookahead(scenario, 2, 10, window=1)

    np.testing.assert_allclose(planned.per_service, looked.per_service)


def test_cli_predictive_names_a_mobility_it_cannot_draw_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["evaluate", "--scenario", "wang-1d", "--predictive", "4"])

    assert status == 2
    assert "draws futures of random-waypoint users; scenario 'wang-1d' uses " in (
        capsys.readouterr().err
    )
