"""Evaluation over several seeds, with trained runs next to the baselines."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mecrl.agents.hindsight import path_cost
from mecrl.agents.policy import make_policy
from mecrl.cli import main
from mecrl.evaluate import (
    HINDSIGHT,
    Estimate,
    episode_problems,
    evaluate,
    evaluate_seeds,
    policy_context,
    run_policy_object,
    service_path,
)
from mecrl.scenario import load_scenario
from mecrl.train import RunDirectory


def test_estimate_is_the_mean_with_a_student_t_interval() -> None:
    values = [1.0, 2.0, 4.0]

    estimate = Estimate.of(values)

    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert estimate.mean == pytest.approx(7 / 3)
    assert estimate.half_width == pytest.approx(half)
    assert math.isnan(Estimate.of([5.0]).half_width)
    assert Estimate.of([5.0]).to_dict() == {"mean": 5.0, "ci95": None, "n": 1}
    with pytest.raises(ValueError, match="at least one value"):
        Estimate.of([])


def test_evaluate_seeds_matches_single_seed_evaluation() -> None:
    scenario = load_scenario("wang-1d")
    policies = {"never": make_policy("never", policy_context(scenario))}

    report = evaluate_seeds(scenario, [0, 3], 4, policies)

    for i, seed in enumerate((0, 3)):
        single = evaluate(scenario, seed, 4, ["never"])
        assert report.totals("never")[i] == single["never"].total_cost
        assert report.totals(HINDSIGHT)[i] == single[HINDSIGHT].total_cost
    assert (report.ratios("never") >= 1.0).all()
    document = report.to_dict()
    assert document["seeds"] == [0, 3]
    assert document["policies"]["never"]["ratio_to_hindsight"]["n"] == 2


def test_evaluate_seeds_rejects_no_seeds_and_a_policy_named_hindsight() -> None:
    scenario = load_scenario("wang-1d")
    never = make_policy("never", policy_context(scenario))

    with pytest.raises(ValueError, match="at least one episode seed"):
        evaluate_seeds(scenario, [], 4, {"never": never})
    with pytest.raises(ValueError, match="names the optimum"):
        evaluate_seeds(scenario, [0], 4, {HINDSIGHT: never})


def test_service_path_is_the_evaluated_path_of_that_service() -> None:
    scenario = load_scenario("city-grid")
    follow = make_policy("follow", policy_context(scenario))

    path = service_path(scenario, seed=1, service=2, policy=follow)

    problems = episode_problems(scenario, 1, 3)
    np.testing.assert_array_equal(path.access, problems.access[2])
    assert path.initial_site == problems.initial_site[2]
    assert path.moves.sum() > 0
    # the path costs what evaluating the policy charged that service
    cost = path_cost(
        problems.slot_cost[2],
        problems.migration_cost[problems.cls[2]],
        problems.initial_site[2],
        path.sites,
    )
    outcome = run_policy_object(scenario, 1, 3, follow)
    assert cost[0] == pytest.approx(outcome.per_service[2], rel=1e-12)


def test_cli_evaluate_seeds_prints_intervals_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.json"

    status = main(
        [
            "evaluate",
            "--scenario",
            "wang-1d",
            "--services",
            "4",
            "--seeds",
            "0,1,2",
            "--policies",
            "never,mdp",
            "--json",
            str(path),
        ]
    )

    out = capsys.readouterr().out
    assert status == 0
    assert "seeds 0,1,2" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:5]}
    assert set(rows) == {"hindsight", "never", "mdp"}
    assert "+-" in rows["mdp"]
    document = json.loads(path.read_text())
    assert set(document["policies"]) == {"hindsight", "never", "mdp"}
    assert len(document["policies"]["mdp"]["per_seed"]) == 3


def test_cli_evaluates_a_run_on_its_own_scenario(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDirectory.open(tiny_run)
    best = min(run.evaluations(), key=lambda row: row["total_cost"])
    path = tmp_path / "out.json"

    status = main(
        [
            "evaluate",
            "--runs",
            str(tiny_run),
            "--seeds",
            "0,1",
            "--services",
            "4",
            "--json",
            str(path),
        ]
    )

    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("scenario toy, seeds 0,1, 4 services, 20 slots")
    assert run.name in out
    learned = json.loads(path.read_text())["policies"][run.name]
    assert learned["total_cost"]["mean"] == pytest.approx(best["total_cost"])
    assert learned["masked_choices"] == [0, 0]


def test_cli_evaluate_names_a_missing_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["evaluate", "--runs", str(tmp_path / "nothing")])

    assert status == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_cli_evaluate_without_seeds_keeps_its_single_seed_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        ["evaluate", "--scenario", "wang-1d", "--services", "3", "--policies", "never"]
    )

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0] == "scenario wang-1d, seed 0, 3 services, 200 slots"
    assert lines[1].split()[:4] == ["policy", "total", "ratio", "moves"]
