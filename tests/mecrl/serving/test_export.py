"""Export: bundle contents, and the ONNX graph acting as the trained policy."""

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from mecrl import __version__
from mecrl.agents.learned import ALGORITHMS
from mecrl.backend import SimBackend
from mecrl.config import from_dict
from mecrl.datasets.paths import file_sha256
from mecrl.envs.observation import FEATURES, HISTORY_FEATURES, past_slot_features
from mecrl.evaluate import episode_key
from mecrl.scenario import load_config
from mecrl.serving.bundle import load_bundle
from mecrl.serving.export import export_run
from mecrl.train import RunDirectory, TrainConfig, start_run, train_run

TinyRun = Callable[[Path, Path, str], Path]


def recorded_episode(run: Path, bundle: Path, n_services: int = 60) -> tuple:
    """Observations and masks of a coupled episode under the trained policy."""
    loaded = load_bundle(bundle)
    policy = RunDirectory(run).load_policy(loaded.scenario)
    backend = SimBackend(loaded.scenario, coupled=True)
    backend.reset(episode_key(1), np.arange(n_services))
    observations, masks, actions = [], [], []
    for _ in range(loaded.scenario.config.episode_slots):
        sites, mask, observation = loaded.view.view(backend)
        action = policy.act(observation, mask)
        observations.append(observation)
        masks.append(mask)
        actions.append(action)
        backend.step(sites[np.arange(n_services), action])
    return (
        loaded,
        np.concatenate(observations),
        np.concatenate(masks),
        np.concatenate(actions),
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_exported_graph_acts_as_the_trained_policy(
    algorithm: str, runs: dict[str, Path], bundles: dict[str, Path]
) -> None:
    loaded, observation, mask, expected = recorded_episode(
        runs[algorithm], bundles[algorithm]
    )
    assert not mask.all(), "the episode must hold masked candidates"

    action, proposed = loaded.act(observation, mask)

    np.testing.assert_array_equal(action, expected)
    assert mask[np.arange(len(action)), action].all()
    if algorithm == "maskable_ppo":
        np.testing.assert_array_equal(proposed, action)


def test_every_site_action_space_stays_at_the_current_site_when_masked(
    tmp_path: Path, train_tiny: TinyRun
) -> None:
    # 6 sites and 8 candidates: every site is an action, so staying is the
    # current site's index, not candidate 0
    config = dataclasses.replace(
        load_config("wang-1d"),
        name="ring-6",
        episode_slots=20,
        topology=dataclasses.replace(
            load_config("wang-1d").topology,
            params={"n_sites": 6, "spacing_m": 1000.0, "ring": True},
        ),
    )
    scenario = tmp_path / "ring.yaml"
    scenario.write_text(yaml.safe_dump(config.to_dict()))
    run = train_tiny(tmp_path / "runs", scenario, "dqn")
    export_run(run, tmp_path / "bundle")

    loaded, observation, mask, _expected = recorded_episode(run, tmp_path / "bundle")
    assert loaded.manifest["actions"]["space"] == "sites"
    # forbid moving in half of the rows: the fallback must find the current site
    rng = np.random.default_rng(0)
    here = (
        observation[:, :-1].reshape(len(mask), 6, len(FEATURES))[
            :, :, FEATURES.index("hops_from_current_10")
        ]
        == 0
    )
    restricted = mask & (here | (rng.random(mask.shape) < 0.5))
    policy = RunDirectory(run).load_policy(loaded.scenario)

    action, _ = loaded.act(observation, restricted)

    np.testing.assert_array_equal(action, policy.act(observation, restricted))
    assert restricted[np.arange(len(action)), action].all()
    assert (action != 0).any(), "the current site is not always site 0"


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_manifest_records_layout_actions_scenario_and_hashes(
    algorithm: str, runs: dict[str, Path], bundles: dict[str, Path]
) -> None:
    bundle = bundles[algorithm]
    manifest = json.loads((bundle / "manifest.json").read_text())
    meta = yaml.safe_load((runs[algorithm] / "meta.yaml").read_text())

    assert manifest["algorithm"] == algorithm
    assert manifest["mecrl_version"] == __version__
    assert manifest["observation"]["features"] == list(FEATURES)
    assert manifest["observation"]["n_candidates"] == 8
    assert manifest["observation"]["size"] == 8 * len(FEATURES) + 1
    assert manifest["observation"]["normalisation"]["kind"] == "none"
    assert manifest["actions"]["space"] == "candidates"
    assert "candidate 0" in manifest["actions"]["stay"]
    assert manifest["scenario"]["name"] == "city-short"
    assert manifest["scenario"]["config_sha256"] == meta["scenario_sha256"]
    assert manifest["model"]["sha256"] == file_sha256(bundle / "model.onnx")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "scenario.yaml",
    ]


def test_bundle_loads_and_acts_without_torch(bundles: dict[str, Path]) -> None:
    script = (
        "import sys\n"
        "for name in ('torch', 'stable_baselines3', 'sb3_contrib'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from mecrl.serving.bundle import load_bundle\n"
        "from mecrl.serving.server import ServerSettings, create_app\n"
        f"bundle = load_bundle({str(bundles['ppo'])!r})\n"
        "create_app(bundle, ServerSettings(token='t'))\n"
        "size, k = bundle.view.layout.size, bundle.view.layout.n_candidates\n"
        "zeros, ones = np.zeros((3, size), np.float32), np.ones((3, k), bool)\n"
        "action, _ = bundle.act(zeros, ones)\n"
        "print(action.tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[")


def test_export_refuses_a_folder_that_holds_files(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        export_run(runs["ppo"], tmp_path)


def test_export_refuses_a_folder_that_is_no_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "bundle")


@pytest.mark.parametrize("per_slot", [False, True])
def test_a_scenario_with_history_exports_its_features_and_acts_alike(
    tmp_path: Path, city_scenario: Path, train_tiny: TinyRun, per_slot: bool
) -> None:
    config = yaml.safe_load(city_scenario.read_text())
    config.update(name="city-short-history", history_slots=3, history_per_slot=per_slot)
    scenario = tmp_path / "city-short-history.yaml"
    scenario.write_text(yaml.safe_dump(config))
    # DQN does not read the mask: its fallback to staying reads the features
    run = train_tiny(tmp_path / "runs", scenario, "dqn")
    export_run(run, tmp_path / "bundle")

    loaded, observation, mask, expected = recorded_episode(run, tmp_path / "bundle")
    action, _ = loaded.act(observation, mask)

    features = loaded.manifest["observation"]["features"]
    past = list(past_slot_features(2)) if per_slot else []
    assert features == [*FEATURES, *HISTORY_FEATURES, *past]
    assert loaded.manifest["observation"]["size"] == 8 * len(features) + 1
    np.testing.assert_array_equal(action, expected)
    assert mask[np.arange(len(action)), action].all()


def test_a_candidate_scoring_policy_exports_and_acts_alike(
    tmp_path: Path, city_scenario: Path
) -> None:
    data = {
        "scenario": str(city_scenario),
        "env": {"kind": "fleet", "n_services": 8, "coupled": False},
        "total_timesteps": 512,
        "policy": {"kind": "candidate_scoring", "net_arch": [16]},
        "hyperparameters": {"n_steps": 32, "batch_size": 64},
        "eval": {"freq_steps": 100_000, "services": 2, "seeds": [0]},
        "checkpoint_freq_steps": 100_000,
        "run_root": str(tmp_path / "runs"),
    }
    run = start_run(from_dict(TrainConfig, data))
    train_run(run)
    export_run(run.path, tmp_path / "bundle")

    loaded, observation, mask, expected = recorded_episode(
        run.path, tmp_path / "bundle"
    )
    action, proposed = loaded.act(observation, mask)

    assert len(set(expected.tolist())) > 1  # not a policy that always stays
    np.testing.assert_array_equal(action, expected)
    np.testing.assert_array_equal(proposed, action)
