"""Training: configs, run directories, TensorBoard, resume, learning."""

import csv
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mecrl.agents.policy import Policy, PolicyContext, make_policy
from mecrl.cli import main
from mecrl.config import ConfigError, from_dict
from mecrl.costs import TERM_NAMES
from mecrl.datasets.scenarios import uses_real_data
from mecrl.envs.single import MigrationEnv
from mecrl.evaluate import evaluate_seeds, policy_context, run_policy_object
from mecrl.scenario import Scenario, ScenarioConfig, load_config
from mecrl.train import (
    EVALUATION_COLUMNS,
    TRAIN_SEED_OFFSET,
    RunDirectory,
    TrainConfig,
    load_train_config,
    start_run,
    train,
    train_run,
)

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "train"

ENV_TAGS = [
    *(f"env/{name}" for name in TERM_NAMES),
    "env/cost",
    "env/migrations_per_slot",
    "env/downtime_s",
    "env/slo_violations",
    "env/refused",
]
EVAL_TAGS = [
    "eval/cost",
    "eval/ratio_to_hindsight",
    "eval/best_heuristic_ratio",
    "eval/ratio_to_best_heuristic",
    "eval/masked_choices",
]


TinyConfig = Callable[..., dict[str, Any]]


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def scalars(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tb" / "run_1"))
    events.Reload()
    return events


def test_built_in_default_trains_maskable_ppo_on_city_grid() -> None:
    config = load_train_config()

    assert config.algorithm == "maskable_ppo"
    assert config.scenario == "city-grid"
    assert config.env.kind == "single"
    assert config.torch_threads == 1
    assert config.run_root == "runs"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"algorithm": "sac"}, "algorithm: must be one of"),
        ({"learning_rate": 0.1}, "learning_rate: unknown key; valid keys are"),
        ({"env": {"kind": "multi"}}, "env.kind: must be one of 'single', 'fleet'"),
        ({"env": {"n_envs": 0}}, "env.n_envs: must be at least 1"),
        (
            {"hyperparameters": {"n_step": 64}},
            "hyperparameters.n_step: not a parameter of MaskablePPO; valid: ",
        ),
        (
            {"algorithm": "dqn", "hyperparameters": {"n_steps": 64, "gae": 1}},
            "hyperparameters.gae: not a parameter of DQN",
        ),
        (
            {"hyperparameters": {"seed": 3}},
            "hyperparameters.seed: mecrl sets it from the config's seed field",
        ),
        (
            {"hyperparameters": {"policy_kwargs": {}}},
            "hyperparameters.policy_kwargs: mecrl sets it from the config's policy",
        ),
        ({"eval": {"baselines": ["oracle"]}}, "eval.baselines.0: unknown policy"),
        ({"eval": {"seeds": []}}, "eval.seeds: needs at least one seed"),
        ({"total_timesteps": 0}, "total_timesteps: must be at least 1"),
        ({"torch_threads": 0}, "torch_threads: must be at least 1"),
        ({"policy": {"net_arch": []}}, "policy.net_arch: needs at least one layer"),
        ({"name": "a/b"}, "name: may hold letters"),
        (
            {"learning_rate_schedule": "cosine"},
            "learning_rate_schedule: must be one of",
        ),
        (
            {
                "learning_rate_schedule": "linear",
                "hyperparameters": {"learning_rate": "fast"},
            },
            "hyperparameters.learning_rate: must be a number to decay linearly",
        ),
    ],
)
def test_bad_config_fails_naming_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_dict(TrainConfig, changes)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("atlantis", "scenario: unknown scenario 'atlantis'; known: city-grid"),
        ("gone.yaml", "scenario: scenario file 'gone.yaml' does not exist"),
    ],
)
def test_unknown_scenario_fails_when_the_run_starts(
    scenario: str, message: str, tmp_path: Path
) -> None:
    config = from_dict(TrainConfig, {"scenario": scenario, "run_root": str(tmp_path)})

    with pytest.raises(ConfigError, match=message):
        start_run(config)
    assert not any(tmp_path.iterdir())


def test_run_outlives_its_scenario_file(
    tmp_path: Path, tiny_config: TinyConfig
) -> None:
    scenario = tmp_path / "walk.yaml"
    scenario.write_text(yaml.safe_dump(load_config("wang-1d").to_dict()))
    data = tiny_config(tmp_path, scenario=str(scenario))
    run = start_run(from_dict(TrainConfig, data))

    scenario.unlink()

    assert RunDirectory.open(run.path).config().scenario == str(scenario)
    assert run.scenario().config.name == "wang-1d"


def test_bad_smoke_variant_fails_naming_its_field(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"smoke": {"total_timestep": 5}})

    with pytest.raises(ConfigError, match=r"smoke\.total_timestep: unknown key"):
        load_train_config(path)


def test_smoke_variant_merges_nested_values(tmp_path: Path) -> None:
    data = {
        "eval": {"services": 30, "seeds": [0, 1, 2]},
        "smoke": {"total_timesteps": 64, "eval": {"seeds": [5]}},
    }
    path = write_config(tmp_path / "c.yaml", data)

    full, smoke = load_train_config(path), load_train_config(path, smoke=True)

    assert full.eval.seeds == (0, 1, 2)
    assert smoke.total_timesteps == 64
    assert smoke.eval.seeds == (5,)
    assert smoke.eval.services == 30


def test_smoke_without_a_smoke_section_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"seed": 1})

    with pytest.raises(ConfigError, match="has no smoke section"):
        load_train_config(path, smoke=True)


def test_number_written_as_yaml_text_becomes_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("hyperparameters:\n  learning_rate: 3e-4\n")

    assert load_train_config(path).hyperparameters["learning_rate"] == 3e-4


def test_cli_bad_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "c.yaml", {"hyperparameters": {"lr": 1.0}})

    status = main(["train", str(path)])

    assert status == 2
    assert "hyperparameters.lr: not a parameter of MaskablePPO" in (
        capsys.readouterr().err
    )


def test_cli_resume_refuses_a_new_config(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", str(tmp_path / "x.yaml"), "--resume", str(tiny_run)])

    assert status == 2
    assert "drop CONFIG" in capsys.readouterr().err


def test_run_directory_records_the_run(tiny_run: Path) -> None:
    run = RunDirectory.open(tiny_run)
    config = run.config()
    meta = yaml.safe_load((tiny_run / "meta.yaml").read_text())

    # the scenario's discount became gamma, and the recorded config says so
    assert config.hyperparameters["gamma"] == 0.9
    assert meta["seed"] == 0
    assert meta["train_seed"] == TRAIN_SEED_OFFSET
    assert set(meta["versions"]) >= {
        "mecrl",
        "numpy",
        "torch",
        "stable-baselines3",
        "sb3-contrib",
        "gymnasium",
    }
    assert run.scenario().config.name == "toy"
    assert [steps for steps, _ in run.checkpoints()] == [512, 1024]
    assert run.best_model_file.is_file()
    with run.evaluations_file.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == EVALUATION_COLUMNS
    assert [float(row["timesteps"]) for row in rows] == [0, 512, 1024]


def test_open_rejects_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDirectory.open(tmp_path)


def test_tensorboard_holds_sb3_env_and_eval_curves(tiny_run: Path) -> None:
    tags = scalars(tiny_run).Tags()["scalars"]

    for tag in [*ENV_TAGS, *EVAL_TAGS, "rollout/ep_rew_mean", "train/value_loss"]:
        assert tag in tags


def test_env_curves_report_the_training_costs(tiny_run: Path) -> None:
    events = scalars(tiny_run)
    cost = [e.value for e in events.Scalars("env/cost")]
    distance = [e.value for e in events.Scalars("env/distance")]
    migration = [e.value for e in events.Scalars("env/migration")]

    # wang-1d weighs only distance and migration, both by 1
    np.testing.assert_allclose(cost, np.add(distance, migration), rtol=1e-5)
    assert all(e.value == 0.0 for e in events.Scalars("env/refused"))
    assert [e.step for e in events.Scalars("eval/ratio_to_hindsight")] == [
        0,
        512,
        1024,
    ]


def test_saved_best_model_reproduces_its_recorded_score(tiny_run: Path) -> None:
    run = RunDirectory.open(tiny_run)
    config = run.config()
    best = min(run.evaluations(), key=lambda row: row["total_cost"])

    policy = run.load_policy()
    report = evaluate_seeds(
        run.scenario(), config.eval.seeds, config.eval.services, {"run": policy}
    )

    assert report.totals("run").mean() == pytest.approx(best["total_cost"], rel=1e-9)
    assert report.ratios("run").mean() == pytest.approx(
        best["ratio_to_hindsight"], rel=1e-9
    )


def interrupt_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make the single-service environment raise Ctrl-C at its step ``steps``."""
    original = MigrationEnv.step
    calls = {"n": 0}

    def step(self: MigrationEnv, action: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == steps:
            raise KeyboardInterrupt
        return original(self, action)

    monkeypatch.setattr(MigrationEnv, "step", step)


@pytest.mark.slow
def test_interrupted_run_saves_a_checkpoint_and_resumes_counting_on(
    tmp_path: Path, tiny_config: TinyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_config(tmp_path, total_timesteps=1_280, checkpoint_freq_steps=10_000)
    run = start_run(from_dict(TrainConfig, data))
    # 4 environments step in turn: the 1,100th env step is in the 275th
    # vector step, after 274 * 4 = 1,096 timesteps
    interrupt_after(monkeypatch, 1_100)

    first = train_run(run)

    assert first.interrupted
    assert first.timesteps == 1_096
    assert [steps for steps, _ in run.checkpoints()] == [1_096]
    monkeypatch.undo()

    status = main(["train", "--resume", str(run.path), "--no-progress"])

    # the step count goes on: one more rollout of 4 x 64 reaches the budget
    assert status == 0
    assert [steps for steps, _ in run.checkpoints()] == [1_096, 1_352]
    steps = [row["timesteps"] for row in run.evaluations()]
    assert steps == [0, 512, 1_024, 1_352]
    # one TensorBoard folder whose steps go on after the interruption
    assert [p.name for p in (run.path / "tb").iterdir()] == ["run_1"]
    fps = [step for path in event_files(run.path) for step in fps_steps(path)]
    assert fps == sorted(fps)
    assert fps[-1] > 1_096


def event_files(run_dir: Path) -> list[Path]:
    """The run's event files in the order they were started.

    TensorBoard orders them by name, whose fields are the second, the host, the
    process and a counter within the process. A real resume is a new process
    at a later second; this test resumes in the same process, often within the
    same second, where the counter decides and sorts as text ("10" < "9").
    """

    def started(path: Path) -> tuple[int, int]:
        fields = path.name.split(".")
        return int(fields[3]), int(fields[-1])

    return sorted((run_dir / "tb" / "run_1").glob("events.out.tfevents.*"), key=started)


def fps_steps(event_file: Path) -> list[int]:
    events = EventAccumulator(str(event_file))
    events.Reload()
    return [e.step for e in events.Scalars("time/fps")]


def test_resuming_a_finished_run_trains_no_more(tiny_run: Path) -> None:
    before = RunDirectory.open(tiny_run).checkpoints()

    result = train_run(RunDirectory.open(tiny_run))

    assert not result.interrupted
    assert result.timesteps == 1024
    assert RunDirectory.open(tiny_run).checkpoints() == before


class RandomMasked(Policy):
    """Picks uniformly among the allowed actions."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        score = np.where(mask, self.rng.random(mask.shape), -1.0)
        return np.asarray(score.argmax(axis=1))


def random_cost(scenario: Scenario, seeds: list[int], services: int) -> float:
    return float(
        np.mean(
            [
                run_policy_object(
                    scenario, seed, services, RandomMasked(seed)
                ).per_service.sum()
                for seed in seeds
            ]
        )
    )


# budgets that beat a random policy with room to spare, on 2 cores
LEARNING_SETUPS = {
    "maskable_ppo": {"n_steps": 64, "batch_size": 128},
    "ppo": {"n_steps": 64, "batch_size": 128},
    "a2c": {"n_steps": 8, "learning_rate": 1e-3},
    "dqn": {
        "learning_starts": 500,
        "exploration_fraction": 0.3,
        "target_update_interval": 500,
        "learning_rate": 1e-3,
        "batch_size": 64,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("env_kind", ["single", "fleet"])
@pytest.mark.parametrize("algorithm", list(LEARNING_SETUPS))
def test_short_training_beats_a_random_policy(
    algorithm: str, env_kind: str, tmp_path: Path, tiny_config: TinyConfig
) -> None:
    data = tiny_config(
        tmp_path,
        algorithm=algorithm,
        env={"kind": env_kind, "n_envs": 8, "n_services": 16, "coupled": False},
        total_timesteps=8_192,
        hyperparameters=LEARNING_SETUPS[algorithm],
        eval={"freq_steps": 100_000, "services": 10, "seeds": [0, 1]},
        checkpoint_freq_steps=100_000,
    )

    result = train(from_dict(TrainConfig, data))

    run = RunDirectory(result.run_dir)
    scenario = run.scenario()
    learned = evaluate_seeds(scenario, [0, 1], 10, {"run": run.load_policy()})
    assert learned.totals("run").mean() < 0.8 * random_cost(scenario, [0, 1], 10)


@pytest.mark.slow
def test_maskable_ppo_learns_when_to_migrate(tmp_path: Path) -> None:
    # over 50 slots the user drifts away: never migrating costs 44 % more
    # than the MDP-optimal policy; 32k timesteps close most of that gap
    scenario = dataclasses.replace(load_config("wang-1d"), episode_slots=50)
    path = write_config(tmp_path / "walk.yaml", scenario.to_dict())
    data = {
        "scenario": str(path),
        "env": {"kind": "fleet", "n_services": 32, "coupled": False},
        "total_timesteps": 32_768,
        "hyperparameters": {"n_steps": 32, "batch_size": 256, "learning_rate": 1e-3},
        "learning_rate_schedule": "linear",
        "eval": {"freq_steps": 100_000, "services": 20, "seeds": [0, 1]},
        "run_root": str(tmp_path),
    }

    run = RunDirectory(train(from_dict(TrainConfig, data)).run_dir)

    built = run.scenario()
    never = make_policy("never", policy_context(built))
    report = evaluate_seeds(
        built, [0, 1], 20, {"run": run.load_policy(), "never": never}
    )
    assert report.totals("run").mean() < 0.85 * report.totals("never").mean()


@pytest.mark.parametrize("config", sorted(EXPERIMENTS.glob("*.yaml")), ids=str)
def test_experiment_smoke_variant_runs(config: Path, tmp_path: Path) -> None:
    smoke = load_train_config(config, smoke=True, overrides={"run_root": str(tmp_path)})
    assert smoke.total_timesteps <= 4096, "a smoke run must take seconds"
    if uses_real_data(load_config(smoke.scenario)) and not os.environ.get(
        "MECRL_DATA_DIR"
    ):
        pytest.skip("MECRL_DATA_DIR is not set: this experiment trains on real data")

    result = train(smoke)

    assert not result.interrupted
    assert result.best is not None
    assert (result.run_dir / "best_model.zip").is_file()


def test_experiment_configs_define_real_runs() -> None:
    configs = sorted(EXPERIMENTS.glob("*.yaml"))
    assert {path.stem for path in configs} >= {"wang-1d", "city-grid"}
    for path in configs:
        assert load_train_config(path).total_timesteps > 100_000


def test_policy_context_matches_the_training_spaces(toy_scenario: Path) -> None:
    scenario = Scenario(ScenarioConfig.from_file(toy_scenario))
    context: PolicyContext = policy_context(scenario)
    env = MigrationEnv(scenario)

    assert env.observation_space.shape == (context.layout.size,)
    assert env.action_space.n == context.layout.n_candidates
    small = dataclasses.replace(scenario.config, candidates=30)
    assert policy_context(Scenario(small)).layout.n_candidates == scenario.n_sites
