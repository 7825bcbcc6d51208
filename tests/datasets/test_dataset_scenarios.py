"""The real-city scenarios: they build, pass the env checker, and evaluate."""

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mecrl.config import ConfigError
from mecrl.costs import COST_PRESETS
from mecrl.datasets import (
    DATA_DIR_ENV,
    DatasetNotFoundError,
    uses_real_data,
    with_data_dir,
)
from mecrl.envs import MigrationEnv
from mecrl.evaluate import HINDSIGHT, evaluate
from mecrl.scenario import ComponentConfig, Scenario, load_config

DATA_SCENARIOS = (
    "sf-wang2019",
    "sf-cabspotting",
    "sf-cabspotting-test",
    "melbourne-cbd",
)
BIG = ("sf-cabspotting", "sf-cabspotting-test")  # 501 sites: tables take seconds

REPOSITORY = Path(__file__).resolve().parents[2]


def short(name: str, slots: int) -> Scenario:
    return Scenario(dataclasses.replace(load_config(name), episode_slots=slots))


def marked(names: tuple[str, ...]) -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in BIG else name
        for name in names
    ]


@pytest.mark.parametrize("name", marked(DATA_SCENARIOS))
def test_migration_env_passes_the_checker(data_dir: Path, name: str) -> None:
    env = gym.make("mecrl/Migration-v0", scenario=short(name, 20)).unwrapped
    assert isinstance(env, MigrationEnv)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


@pytest.mark.parametrize(
    ("name", "policies"),
    [
        ("sf-wang2019", ["never", "follow", "myopic", "mdp", "threshold"]),
        pytest.param(
            "sf-cabspotting",
            ["never", "follow", "myopic", "threshold"],
            marks=pytest.mark.slow,
        ),
        ("melbourne-cbd", ["never", "follow", "myopic", "threshold"]),
    ],
)
def test_every_policy_costs_at_least_the_hindsight_optimum(
    data_dir: Path, name: str, policies: list[str]
) -> None:
    outcomes = evaluate(short(name, 60), seed=1, n_services=4, policies=policies)
    best = outcomes[HINDSIGHT]

    assert best.total_cost > 0
    for policy in policies:
        ratio = outcomes[policy].total_cost / best.total_cost
        assert ratio >= 1.0 - 1e-9, policy
        assert np.all(outcomes[policy].per_service >= best.per_service - 1e-9)


@pytest.mark.parametrize("name", DATA_SCENARIOS)
def test_episodes_fit_in_the_trace_and_users_suffice(data_dir: Path, name: str) -> None:
    scenario = Scenario(load_config(name))
    source = scenario.make_mobility()

    if hasattr(source, "n_slots"):
        assert scenario.config.episode_slots <= source.n_slots
        assert source.n_users >= 20  # the CLI's default number of services


def test_sf_wang2019_is_wang_et_al_s_setting(data_dir: Path) -> None:
    scenario = Scenario(load_config("sf-wang2019"))
    config = scenario.config

    assert config.costs == COST_PRESETS.get("wang2019")()
    assert (config.slot_s, config.discount) == (60.0, 0.9)
    assert scenario.n_access == scenario.n_sites == 209
    hosts = np.flatnonzero(scenario.sites.runtimes.any(axis=1))
    # Wang et al.'s choice: cell ids round(2.09 k), k = 1..100
    expected = [int(np.floor(2.09 * k + 0.5 + 1e-9)) for k in range(1, 101)]
    assert [int(scenario.topology.geo.site_ids[h]) for h in hosts] == expected
    assert scenario.make_mobility().n_users == 485


def test_the_mdp_policy_runs_on_the_real_trace(data_dir: Path) -> None:
    from mecrl.agents.baselines import MdpOptimal
    from mecrl.agents.policy import PolicyContext
    from mecrl.envs.observation import CandidateView

    scenario = Scenario(load_config("sf-wang2019"))
    context = PolicyContext(CandidateView(scenario, 8).layout, scenario)

    policy = MdpOptimal(context)

    assert policy.solution.target[0] == 0
    assert policy.solution.threshold() is not None


def test_the_held_out_day_differs_only_in_its_day(data_dir: Path) -> None:
    development = load_config("sf-cabspotting")
    held_out = load_config("sf-cabspotting-test")

    assert "FINAL EVALUATION ONLY" in held_out.description
    assert development.mobility.params["day"] == "2008-05-31"
    assert held_out.mobility.params["day"] == "2008-06-06"
    same_day = dataclasses.replace(
        held_out,
        name=development.name,
        description=development.description,
        mobility=development.mobility,
    )
    assert same_day == development


def test_more_services_than_taxis_is_a_clear_error(data_dir: Path) -> None:
    config = load_config("sf-wang2019")
    params = {**config.mobility.params, "taxis": [1, 2]}
    config = dataclasses.replace(
        config,
        episode_slots=10,
        mobility=ComponentConfig("dataset-replay", params),
    )

    with pytest.raises(ConfigError, match="service 2 has no user: simulate at most 2"):
        evaluate(Scenario(config), seed=0, n_services=3, policies=["never"])


def test_building_a_data_scenario_without_data_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    for name in DATA_SCENARIOS:
        with pytest.raises(DatasetNotFoundError, match=DATA_DIR_ENV):
            Scenario(load_config(name))


def test_with_data_dir_reaches_every_dataset_part(tmp_path: Path) -> None:
    config = with_data_dir(load_config("sf-cabspotting"), tmp_path)

    assert config.topology.params["data_dir"] == str(tmp_path)
    assert config.mobility.params["data_dir"] == str(tmp_path)
    assert uses_real_data(config)
    assert not uses_real_data(load_config("city-grid"))
    assert with_data_dir(load_config("city-grid"), tmp_path) == load_config("city-grid")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    command = [sys.executable, "-m", "mecrl.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False
    )


def test_scenario_list_needs_no_data() -> None:
    listing = run_cli("scenario", "list")

    assert listing.returncode == 0, listing.stderr
    for name in DATA_SCENARIOS:
        assert name in listing.stdout


def test_evaluating_without_data_is_a_one_line_error() -> None:
    result = run_cli("evaluate", "--scenario", "sf-wang2019", "--services", "2")

    assert result.returncode == 2
    assert result.stderr.startswith("mecrl: error: no data folder")
    assert DATA_DIR_ENV in result.stderr
    assert "Traceback" not in result.stderr
