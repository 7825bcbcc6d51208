"""A whole episode through the HTTP server costs what the policy costs in process."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from mecrl.backend import SimBackend
from mecrl.evaluate import episode_key
from mecrl.scenario import Scenario
from mecrl.serving.bundle import load_bundle
from mecrl.serving.export import export_run
from mecrl.serving.orchestrate import (
    as_columns,
    report,
    run_in_process,
    run_over_http,
)
from mecrl.serving.process import ServerProcess
from mecrl.train import RunDirectory


@pytest.mark.parametrize("algorithm", ["dqn", "maskable_ppo"])
def test_an_episode_over_http_costs_what_it_costs_in_process(
    algorithm: str,
    runs: dict[str, Path],
    bundles: dict[str, Path],
    server: ServerProcess,
) -> None:
    bundle = load_bundle(bundles[algorithm])
    policy = RunDirectory(runs[algorithm]).load_policy(bundle.scenario)
    local = run_in_process(policy, bundle.view, seed=4, n_services=60)
    if algorithm == "dqn":
        served_by = server
        served = _over(served_by, bundle.scenario)
    else:
        with ServerProcess(bundles[algorithm], "another-token") as served_by:
            served = _over(served_by, bundle.scenario)

    assert served.total == local.total
    assert served.moves == local.moves
    if algorithm == "dqn":
        assert served.moves > 0, "the episode must move services"


def _over(server: ServerProcess, scenario: object) -> object:
    with httpx.Client(base_url=server.url, headers=server.headers) as client:
        return run_over_http(client, scenario, seed=4, n_services=60)


def test_orchestrate_command_compares_with_the_run(
    runs: dict[str, Path],
    bundles: dict[str, Path],
    server: ServerProcess,
    token: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text(token)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mecrl.cli",
            "orchestrate",
            str(bundles["dqn"]),
            "--url",
            server.url,
            "--token-file",
            str(tmp_path / "token"),
            "--services",
            "10",
            "--run",
            str(runs["dqn"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("over HTTP:  total cost")
    assert lines[1].startswith("in process: total cost")
    assert lines[0].split("cost")[1] == lines[1].split("cost")[1]


@pytest.fixture(scope="module")
def remembering(
    tmp_path_factory: pytest.TempPathFactory,
    city_scenario: Path,
    train_tiny: Callable[[Path, Path, str], Path],
) -> tuple[Path, Path]:
    """A tiny run on city-short keeping 4 slots of history, and its bundle."""
    config = yaml.safe_load(city_scenario.read_text())
    config.update(name="city-short-history", history_slots=4)
    root = tmp_path_factory.mktemp("history")
    scenario = root / "city-short-history.yaml"
    scenario.write_text(yaml.safe_dump(config))
    run = train_tiny(root / "runs", scenario, "maskable_ppo")
    export_run(run, root / "bundle")
    return run, root / "bundle"


def test_history_features_are_served_from_reported_access_sites(
    remembering: tuple[Path, Path],
) -> None:
    run, path = remembering
    bundle = load_bundle(path)
    assert bundle.scenario.config.history_slots == 4
    policy = RunDirectory(run).load_policy(bundle.scenario)
    local = run_in_process(policy, bundle.view, seed=4, n_services=60)  # as _over

    with ServerProcess(path, "history-token") as served_by:
        served = _over(served_by, bundle.scenario)
        request = report_of(bundle.scenario, seed=5, n_services=2)
        del request["services"][1]["recent_access_sites"]
        with httpx.Client(base_url=served_by.url, headers=served_by.headers) as client:
            refused = client.post("/v1/decisions", json=request)

    assert served.total == local.total
    assert served.moves == local.moves
    assert refused.status_code == 422
    assert "keeps history_slots = 4: list the access sites of the 3 slots" in (
        refused.text
    )


def report_of(scenario: Scenario, seed: int, n_services: int) -> dict[str, object]:
    backend = SimBackend(scenario, coupled=True)
    backend.reset(episode_key(seed), np.arange(n_services))
    return report(backend, [f"svc-{n}" for n in range(n_services)])


@pytest.fixture(
    scope="module",
    params=[{}, {"plan_window_slots": 4, "plan_futures": 8}],
    ids=["projected", "planned"],
)
def moving(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    city_scenario: Path,
    train_tiny: Callable[[Path, Path, str], Path],
) -> tuple[Path, Path]:
    """A tiny run on city-short projecting users 1 and 3 slots on, and its
    bundle; with the planner over drawn futures too, in the second case."""
    config = yaml.safe_load(city_scenario.read_text())
    config.update(
        name="city-short-motion", motion_horizons_slots=[1, 3], **request.param
    )
    root = tmp_path_factory.mktemp("motion")
    scenario = root / "city-short-motion.yaml"
    scenario.write_text(yaml.safe_dump(config))
    run = train_tiny(root / "runs", scenario, "maskable_ppo")
    export_run(run, root / "bundle")
    return run, root / "bundle"


def test_motion_features_are_served_from_reported_positions(
    moving: tuple[Path, Path],
) -> None:
    run, path = moving
    bundle = load_bundle(path)
    assert bundle.scenario.config.motion_horizons_slots == (1, 3)
    policy = RunDirectory(run).load_policy(bundle.scenario)
    local = run_in_process(policy, bundle.view, seed=4, n_services=60)  # as _over
    request = report_of(bundle.scenario, seed=5, n_services=3)
    columns = as_columns(request)
    del request["services"][2]["velocity_mps"]

    with ServerProcess(path, "motion-token") as served_by:
        served = _over(served_by, bundle.scenario)
        with httpx.Client(base_url=served_by.url, headers=served_by.headers) as client:
            refused = client.post("/v1/decisions", json=request)
            by_columns = client.post("/v1/decisions/columns", json=columns)

    assert served.total == local.total
    assert served.moves == local.moves
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "services", 2, "velocity_mps"]
    assert "projects users' motion: give the user's position" in refused.text
    assert by_columns.status_code == 200, by_columns.text


def test_a_scenario_without_motion_refuses_positions(
    bundles: dict[str, Path], server: ServerProcess
) -> None:
    scenario = load_bundle(bundles["dqn"]).scenario
    request = report_of(scenario, seed=5, n_services=2)
    request["services"][1]["position_m"] = [100.0, 200.0]
    with httpx.Client(base_url=server.url, headers=server.headers) as client:
        refused = client.post("/v1/decisions", json=request)

    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "services", 1, "position_m"]
    assert "projects no motion; leave it out" in refused.text
