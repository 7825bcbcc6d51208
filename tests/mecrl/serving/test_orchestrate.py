"""A whole episode through the HTTP server costs what the policy costs in process."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mecrl.serving.bundle import load_bundle
from mecrl.serving.orchestrate import run_in_process, run_over_http
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
