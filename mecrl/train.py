"""Training learned policies with Stable-Baselines3, one run directory per run.

A :class:`TrainConfig` (YAML or TOML, or the dataclass in Python) names the
algorithm, the environment, the scenario, the budget and the evaluation.
:func:`start_run` makes the run directory; :func:`train_run` trains in it,
continuing from its last checkpoint if it has one, so the same call starts a
run and resumes an interrupted one.

| in the run directory | what |
|---|---|
| ``config.yaml`` | the resolved training config |
| ``scenario.yaml`` | the scenario config trained on (later edits of the |
| | named scenario do not change the run) |
| ``meta.yaml`` | seed, package versions, scenario SHA-256, start time |
| ``checkpoints/step_N.zip`` | periodic checkpoints, one on Ctrl-C, one at the end |
| ``checkpoints/replay_buffer.pkl`` | DQN's replay buffer at the latest checkpoint |
| ``best_model.zip`` | the model with the lowest evaluation cost so far |
| ``evaluations.csv`` | one row per evaluation (see ``EVALUATION_COLUMNS``) |
| ``baselines.json`` | the baselines and the hindsight optimum on the |
| | evaluation episodes (``mecrl.evaluate.SeedsReport``) |
| ``tb/run_1/`` | TensorBoard events |

TensorBoard holds SB3's own ``train/``, ``rollout/`` and ``time/`` curves and:

| key | meaning |
|---|---|
| ``env/<term>`` | each cost term of ``mecrl.costs``, raw units, mean per |
| | service-slot of the training environment |
| ``env/cost`` | weighted cost (minus the reward) per service-slot |
| ``env/migrations_per_slot`` | moves per service-slot |
| ``env/downtime_s`` | downtime per move, in seconds |
| ``env/slo_violations`` | slots over the latency objective, per service-slot |
| ``env/refused`` | moves refused (the service stayed), per service-slot: |
| | masked actions, and on a coupled fleet also moves |
| | that clash with other services' moves of the slot |
| ``eval/cost`` | evaluated weighted cost per service-slot |
| ``eval/ratio_to_hindsight`` | evaluated cost over the hindsight optimum's, mean |
| | of the per-seed ratios |
| ``eval/best_heuristic_ratio`` | the same ratio for the best baseline (a constant) |
| ``eval/ratio_to_best_heuristic`` | evaluated cost over the best baseline's |
| ``eval/masked_choices`` | masked actions the model proposed in evaluation |

Only MaskablePPO reads the action mask. PPO, A2C and DQN choose among all K
actions; the environment refuses a masked one (the service stays,
``info["refused"]``), so they learn that asking for an infeasible site is
staying, and ``env/refused`` shows how often they do. The mask of a coupled
fleet is computed before the slot, service by service, so even MaskablePPO
sees a few refusals there: two services moving into the last free room of
a site in the same slot (see ``SimBackend._admit_together``).

Evaluation runs the deterministic policy on the uncoupled problems of
``mecrl.evaluate`` (the same services and seeds as ``mecrl evaluate``), also
when training on a coupled fleet. Training episodes come from the seed
``seed + TRAIN_SEED_OFFSET``, so they never replay an evaluation episode.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    ProgressBarCallback,
)
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

from mecrl.agents import make_policy
from mecrl.agents.candidate_net import CandidateScoringPolicy
from mecrl.agents.learned import ALGORITHMS, LearnedPolicy
from mecrl.agents.policy import parse_policy_spec
from mecrl.agents.vec import FleetVecEnv
from mecrl.clone import clone, planner_demonstrations
from mecrl.config import (
    ConfigError,
    check,
    check_integer,
    check_positive,
    from_dict,
    is_number,
    load_file,
    merged,
    to_dict,
)
from mecrl.costs import TERM_NAMES
from mecrl.envs.single import DEFAULT_SCENARIO, MigrationEnv
from mecrl.evaluate import (
    HINDSIGHT,
    Estimate,
    PolicyOutcome,
    action_space_for,
    evaluate_seeds,
    policy_context,
    run_policy_object,
)
from mecrl.scenario import Scenario, ScenarioConfig, load_config

logger = logging.getLogger(__name__)

TRAIN_SEED_OFFSET = 1_000_000
"""Added to the config's seed for training episodes; evaluation seeds are
small integers, so training never sees an evaluation episode."""

CLONE_SEED_OFFSET = 2_000_000
"""Added to the config's seed for the episodes that the planner is cloned
from, apart from the evaluation and the training episodes."""

TB_LOG_NAME = "run"
"""SB3 writes TensorBoard events under ``tb/run_1``."""

EVALUATION_COLUMNS: tuple[str, ...] = (
    "timesteps",
    "wall_s",
    "total_cost",
    "cost_per_service_slot",
    "ratio_to_hindsight",
    "ratio_to_hindsight_ci95",
    "best_heuristic",
    "best_heuristic_ratio",
    "ratio_to_best_heuristic",
    "migrations_per_slot",
    "slo_violations",
    "masked_choices",
    *(f"weighted_{name}" for name in TERM_NAMES),
)
"""Columns of ``evaluations.csv``. Costs are means over the evaluation seeds
of a seed's total over its services; ``weighted_<term>`` likewise."""

# constructor arguments mecrl sets itself, and how
_SET_BY_MECRL = {
    "policy": "from the config's policy field",
    "env": "from the config's env field",
    "policy_kwargs": "from the config's policy field",
    "seed": "from the config's seed field",
    "tensorboard_log": "to the run directory's tb folder",
    "verbose": "to 0: mecrl reports through logging",
    "device": "to the CPU",
    "_init_setup_model": "to SB3's default",
}

_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


@dataclass(frozen=True)
class EnvConfig:
    """The environment trained on."""

    kind: Literal["single", "fleet"] = "single"
    """``single``: ``n_envs`` copies of ``MigrationEnv`` in SB3's DummyVecEnv;
    ``fleet``: ``mecrl.agents.vec.FleetVecEnv``, each service one of SB3's
    environments."""
    n_envs: int = 8
    """Copies of the single-service environment (``single`` only)."""
    n_services: int = 64
    """Services in the fleet (``fleet`` only)."""
    coupled: bool = True
    """Whether the fleet's services share capacity (``fleet`` only)."""

    def __post_init__(self) -> None:
        check_integer("n_envs", self.n_envs, minimum=1)
        check_integer("n_services", self.n_services, minimum=1)


@dataclass(frozen=True)
class PolicyNetConfig:
    """Sizes of the policy (and value) networks."""

    kind: Literal["mlp", "candidate_scoring"] = "mlp"
    """``mlp``: SB3's ``MlpPolicy``; ``candidate_scoring``: every candidate
    scored by the same weights (``mecrl.agents.candidate_net``;
    ``maskable_ppo`` only), ``net_arch`` then sizing its shared encoder."""
    net_arch: tuple[int, ...] = (64, 64)
    """Units of each hidden layer, shared by the actor and the critic."""
    activation: Literal["default", "tanh", "relu"] = "default"
    """Activation of the hidden layers; ``default`` keeps the algorithm's
    (tanh for the actor-critics, ReLU for DQN)."""

    def __post_init__(self) -> None:
        check(len(self.net_arch) > 0, "net_arch", "needs at least one layer")
        for i, units in enumerate(self.net_arch):
            check_integer(f"net_arch.{i}", units, minimum=1)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation during training."""

    freq_steps: int = 50_000
    """Timesteps (all environments together) between evaluations."""
    services: int = 20
    """Services per evaluation episode."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Evaluation episode seeds."""
    baselines: tuple[str, ...] = ("never", "follow", "threshold", "myopic")
    """Registered policies to compare with; the best gives
    ``eval/best_heuristic_ratio``."""

    def __post_init__(self) -> None:
        check_integer("freq_steps", self.freq_steps, minimum=1)
        check_integer("services", self.services, minimum=1)
        check(len(self.seeds) > 0, "seeds", "needs at least one seed")
        check(len(self.baselines) > 0, "baselines", "needs at least one policy")
        for i, spec in enumerate(self.baselines):
            try:
                parse_policy_spec(spec)
            except ValueError as error:
                raise ConfigError(f"baselines.{i}", str(error)) from None


@dataclass(frozen=True)
class CloneConfig:
    """Cloning the planner before reinforcement learning (see ``mecrl.clone``)."""

    episodes: int = 0
    """Episodes followed with the planner's choice (0: no cloning). The
    scenario must set ``plan_window_slots``."""
    services: int = 64
    """Services per episode."""
    epochs: int = 6
    """Passes over the demonstrations."""
    batch_size: int = 1024
    """Demonstrations per gradient step."""
    learning_rate: float = 1e-3
    """Adam's step size while cloning."""

    def __post_init__(self) -> None:
        check_integer("episodes", self.episodes, minimum=0)
        check_integer("services", self.services, minimum=1)
        check_integer("epochs", self.epochs, minimum=1)
        check_integer("batch_size", self.batch_size, minimum=1)
        check_positive("learning_rate", self.learning_rate)


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    name: str = ""
    """Prefix of the run directory's name; ``<scenario>-<algorithm>`` if empty."""
    algorithm: Literal["maskable_ppo", "ppo", "a2c", "dqn"] = "maskable_ppo"
    """SB3 algorithm (see ``mecrl.agents.learned.ALGORITHMS``)."""
    scenario: str = DEFAULT_SCENARIO
    """Registered scenario name or scenario config file."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment trained on."""
    total_timesteps: int = 300_000
    """Training budget in timesteps, counted over all environments."""
    seed: int = 0
    """Seed of the network initialisation and of the training episodes."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the SB3 constructor (``learning_rate``,
    ``n_steps``, ...). ``gamma`` defaults to the scenario's ``discount``."""
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    """``linear`` decays the learning rate to 0 at ``total_timesteps``, which
    steadies the policy late in training."""
    policy: PolicyNetConfig = field(default_factory=PolicyNetConfig)
    """Network sizes."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation during training."""
    clone_planner: CloneConfig = field(default_factory=CloneConfig)
    """Cloning the planner first (``maskable_ppo`` only)."""
    checkpoint_freq_steps: int = 100_000
    """Timesteps between periodic checkpoints."""
    torch_threads: int = 1
    """Threads torch may use (``torch.set_num_threads``); one per run lets
    runs share a machine."""
    run_root: str = "runs"
    """Folder that holds the run directories."""

    def __post_init__(self) -> None:
        check_integer("total_timesteps", self.total_timesteps, minimum=1)
        check_integer("seed", self.seed, minimum=0)
        check_integer("checkpoint_freq_steps", self.checkpoint_freq_steps, minimum=1)
        check_integer("torch_threads", self.torch_threads, minimum=1)
        check(bool(self.run_root), "run_root", "must not be empty")
        check(
            self.algorithm in ALGORITHMS,
            "algorithm",
            f"unknown algorithm {self.algorithm!r}; known: "
            f"{', '.join(ALGORITHMS.names())}",
        )
        check(
            re.fullmatch(r"[\w.-]*", self.name) is not None,
            "name",
            f"may hold letters, digits, '.', '_' and '-' only, got {self.name!r}",
        )
        object.__setattr__(
            self,
            "hyperparameters",
            _check_hyperparameters(self.algorithm, self.hyperparameters),
        )
        check(
            self.policy.kind == "mlp" or self.algorithm == "maskable_ppo",
            "policy.kind",
            f"{self.policy.kind!r} needs algorithm maskable_ppo, "
            f"got {self.algorithm!r}",
        )
        check(
            self.clone_planner.episodes == 0 or self.algorithm == "maskable_ppo",
            "clone_planner.episodes",
            f"cloning needs algorithm maskable_ppo, got {self.algorithm!r}",
        )
        rate = self.hyperparameters.get("learning_rate", 1.0)
        check(
            self.learning_rate_schedule == "constant" or is_number(rate),
            "hyperparameters.learning_rate",
            f"must be a number to decay linearly, got {rate!r}",
        )


def _check_hyperparameters(algorithm: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return ``params`` checked against the SB3 constructor's signature."""
    cls = ALGORITHMS.get(algorithm).cls
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    checked = {}
    for key, value in params.items():
        where = f"hyperparameters.{key}"
        if key in _SET_BY_MECRL:
            raise ConfigError(where, f"mecrl sets it {_SET_BY_MECRL[key]}")
        if key not in accepted:
            valid = ", ".join(sorted(accepted - set(_SET_BY_MECRL)))
            raise ConfigError(
                where, f"not a parameter of {cls.__name__}; valid: {valid}"
            )
        checked[key] = _number_text(value)
    return checked


def _number_text(value: Any) -> Any:
    """Return a number written as text (YAML 1.1 reads ``3e-4`` so) as a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_train_config(
    path: str | Path | None = None,
    smoke: bool = False,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Load a training config, its smoke variant, or the built-in default.

    A config file may hold a ``smoke`` mapping: values that replace the
    file's own (nested mappings merge key by key) to make a run that takes
    seconds, for CI. It is checked even when not used, so a config and its
    smoke variant cannot drift apart unnoticed.

    Args:
        path: YAML or TOML file; None for the built-in default (MaskablePPO
            on ``city-grid``).
        smoke: Whether to apply the file's ``smoke`` mapping.
        overrides: Values applied last, as if written in the file.

    Raises:
        ConfigError: On an unknown key or a bad value (naming the field), or
            if ``smoke`` is asked of a config without a smoke mapping.
    """
    data = {} if path is None else load_file(path)
    variant = data.pop("smoke", None)
    if variant is not None and not isinstance(variant, dict):
        raise ConfigError("smoke", f"expected a mapping, got {type(variant).__name__}")
    if path is not None:
        data = _resolve_scenario_path(data, Path(path).parent)
    config = from_dict(TrainConfig, merged(data, overrides or {}))
    if variant is not None:
        smoke_data = merged(merged(data, variant), overrides or {})
        smoke_config = from_dict(TrainConfig, smoke_data, "smoke")
        if smoke:
            return smoke_config
    elif smoke:
        source = path if path is not None else "the built-in default"
        raise ConfigError("smoke", f"{source} has no smoke section")
    return config


def _resolve_scenario_path(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Read a relative scenario file path from the config file's folder."""
    scenario = data.get("scenario")
    if not isinstance(scenario, str) or Path(scenario).is_absolute():
        return data
    is_file = scenario.endswith((".yaml", ".yml", ".toml"))
    if is_file and (folder / scenario).exists():
        return {**data, "scenario": str(folder / scenario)}
    return data


def package_versions() -> dict[str, str]:
    """Return the versions of the packages a run's results depend on."""
    names = ("mecrl", "numpy", "torch", "stable-baselines3", "sb3-contrib")
    versions = {name: metadata.version(name) for name in (*names, "gymnasium")}
    versions["python"] = sys.version.split()[0]
    return versions


class RunDirectory:
    """The files of one training run (see the module's table).

    Args:
        path: The run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        """Return an existing run directory.

        Raises:
            FileNotFoundError: If ``path`` holds no run config.
        """
        run = cls(path)
        if not run.config_file.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a run directory: it has no config.yaml"
            )
        return run

    @property
    def name(self) -> str:
        """The run's name: its directory's name."""
        return self.path.name

    @property
    def config_file(self) -> Path:
        """The resolved training config."""
        return self.path / "config.yaml"

    @property
    def scenario_file(self) -> Path:
        """The scenario config trained on."""
        return self.path / "scenario.yaml"

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of the checkpoints."""
        return self.path / "checkpoints"

    @property
    def replay_buffer_file(self) -> Path:
        """DQN's replay buffer at the latest checkpoint."""
        return self.checkpoint_dir / "replay_buffer.pkl"

    @property
    def best_model_file(self) -> Path:
        """The model with the lowest evaluation cost."""
        return self.path / "best_model.zip"

    @property
    def evaluations_file(self) -> Path:
        """The evaluation history."""
        return self.path / "evaluations.csv"

    @property
    def clone_file(self) -> Path:
        """How the policy fitted the planner's choices, epoch by epoch."""
        return self.path / "clone.csv"

    @property
    def baselines_file(self) -> Path:
        """Baselines and optimum on the evaluation episodes."""
        return self.path / "baselines.json"

    @property
    def tensorboard_dir(self) -> Path:
        """Root of the TensorBoard events."""
        return self.path / "tb"

    def config(self) -> TrainConfig:
        """Return the run's training config."""
        return from_dict(TrainConfig, load_file(self.config_file))

    def scenario(self) -> Scenario:
        """Return the scenario the run trains on, as recorded."""
        return Scenario(ScenarioConfig.from_file(self.scenario_file))

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Return (timesteps, file) of every checkpoint, oldest first."""
        found = []
        for path in self.checkpoint_dir.glob("step_*.zip"):
            match = re.fullmatch(r"step_(\d+)\.zip", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save_checkpoint(self, model: BaseAlgorithm, off_policy: bool) -> Path:
        """Save ``model`` (and a DQN's replay buffer) as the latest checkpoint."""
        path = self.checkpoint_dir / f"step_{model.num_timesteps:012d}.zip"
        model.save(path)
        if off_policy:
            model.save_replay_buffer(self.replay_buffer_file)  # type: ignore[attr-defined]
        logger.info("checkpoint at %d timesteps: %s", model.num_timesteps, path)
        return path

    def model_file(self) -> Path:
        """Return the best model, or the latest checkpoint if none was kept.

        Raises:
            FileNotFoundError: If the run has saved no model yet.
        """
        if self.best_model_file.is_file():
            return self.best_model_file
        checkpoints = self.checkpoints()
        if not checkpoints:
            raise FileNotFoundError(f"run {str(self.path)!r} has saved no model yet")
        return checkpoints[-1][1]

    def load_policy(self, scenario: Scenario | None = None) -> LearnedPolicy:
        """Return the run's best model as a policy for ``scenario``.

        Args:
            scenario: The scenario to act on; the run's own by default.
        """
        scenario = scenario if scenario is not None else self.scenario()
        spec = ALGORITHMS.get(self.config().algorithm)
        model = spec.load(self.model_file())
        return LearnedPolicy(model, policy_context(scenario))

    def evaluations(self) -> list[dict[str, float]]:
        """Return the evaluation history, oldest first."""
        if not self.evaluations_file.is_file():
            return []
        with self.evaluations_file.open(newline="") as handle:
            return [
                {key: float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)
            ]

    def append_evaluation(self, row: dict[str, float]) -> None:
        """Append one row to the evaluation history."""
        new = not self.evaluations_file.is_file()
        with self.evaluations_file.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=EVALUATION_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def start_run(config: TrainConfig) -> RunDirectory:
    """Create the run directory of ``config`` and record what defines the run.

    The scenario's ``discount`` becomes the algorithm's ``gamma`` unless the
    config sets it; the recorded config says which was used.

    The scenario is checked here, not in the config: a run directory holds
    its own copy, so its config stays valid where the scenario file is gone.

    Raises:
        ConfigError: If the scenario is neither registered (the message lists
            the known ones) nor an existing file, or its file is invalid.
    """
    try:
        scenario = load_config(config.scenario)
    except (KeyError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        raise ConfigError("scenario", message) from None
    check(
        config.clone_planner.episodes == 0 or scenario.plan_window_slots > 0,
        "clone_planner.episodes",
        f"cloning needs a scenario that sets plan_window_slots; "
        f"{scenario.name!r} does not",
    )
    resolved = dataclasses.replace(
        config,
        hyperparameters={"gamma": scenario.discount, **config.hyperparameters},
    )
    stem = Path(config.scenario).stem
    prefix = config.name or f"{stem}-{config.algorithm}"
    root = Path(config.run_root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{prefix}-{stamp}"
    suffix = 1
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            suffix += 1
            path = root / f"{prefix}-{stamp}-{suffix}"
    run = RunDirectory(path)
    run.checkpoint_dir.mkdir()
    _write_yaml(run.config_file, to_dict(resolved))
    _write_yaml(run.scenario_file, scenario.to_dict())
    meta = {
        "seed": config.seed,
        "train_seed": config.seed + TRAIN_SEED_OFFSET,
        "scenario": scenario.name,
        "scenario_sha256": scenario.digest(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
    }
    _write_yaml(run.path / "meta.yaml", meta)
    logger.info("run directory %s", path)
    return run


def _write_yaml(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def make_env(config: TrainConfig, scenario: Scenario) -> VecEnv:
    """Return the SB3 vectorised training environment of ``config``.

    It is wrapped in ``VecMonitor`` so that SB3 logs episode returns under
    ``rollout/``.
    """
    action_space = action_space_for(scenario)
    env: VecEnv
    if config.env.kind == "single":
        make = functools.partial(MigrationEnv, scenario, action_space)
        env = DummyVecEnv([make] * config.env.n_envs)
    else:
        env = FleetVecEnv(
            config.env.n_services,
            scenario,
            coupled=config.env.coupled,
            action_space=action_space,
        )
    return VecMonitor(env)


def build_model(
    config: TrainConfig, env: VecEnv, tensorboard_dir: Path | None
) -> BaseAlgorithm:
    """Return a fresh SB3 model of ``config`` training on ``env``.

    Args:
        config: The training config.
        env: The training environment (see :func:`make_env`).
        tensorboard_dir: Where SB3 writes TensorBoard events; None for none.

    Raises:
        ConfigError: If SB3 rejects a hyperparameter's value.
    """
    policy_kwargs: dict[str, Any] = {"net_arch": list(config.policy.net_arch)}
    if config.policy.activation != "default":
        policy_kwargs["activation_fn"] = _ACTIVATIONS[config.policy.activation]
    cls = ALGORITHMS.get(config.algorithm).cls
    hyperparameters = dict(config.hyperparameters)
    if config.learning_rate_schedule == "linear":
        default = inspect.signature(cls.__init__).parameters["learning_rate"].default
        start = hyperparameters.get("learning_rate", default)
        hyperparameters["learning_rate"] = LinearSchedule(float(start))
    try:
        model = cls(
            CandidateScoringPolicy if config.policy.kind != "mlp" else "MlpPolicy",
            env,
            policy_kwargs=policy_kwargs,
            seed=config.seed,
            device="cpu",
            tensorboard_log=None if tensorboard_dir is None else str(tensorboard_dir),
            verbose=0,
            **hyperparameters,
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            "hyperparameters", f"{cls.__name__} rejects them: {exc}"
        ) from None
    if tensorboard_dir is None:
        # SB3's default logger makes an empty /tmp/SB3-<time> folder per run
        model.set_logger(Logger(folder=None, output_formats=[]))
    return model


@dataclass(frozen=True)
class LinearSchedule:
    """A value falling linearly from ``start`` to 0 over training.

    SB3 calls it with the fraction of training remaining, which counts from
    the run's first timestep also after a resume. A module-level class, so
    that checkpoints can pickle it.
    """

    start: float
    """Value at the first timestep."""

    def __call__(self, progress_remaining: float) -> float:
        """Return the value when ``progress_remaining`` of training is left."""
        return self.start * progress_remaining


@dataclass(frozen=True)
class TrainResult:
    """What a training session did."""

    run_dir: Path
    """The run directory."""
    timesteps: int
    """Timesteps trained in total, earlier sessions included."""
    interrupted: bool
    """Whether Ctrl-C stopped the session (a checkpoint was saved)."""
    session_steps_per_s: float
    """Timesteps per second of this session, evaluations included."""
    best: dict[str, float] | None
    """The evaluation row of the best model, if any."""


def train(config: TrainConfig, progress_bar: bool = False) -> TrainResult:
    """Start a run of ``config`` and train it to its budget."""
    return train_run(start_run(config), progress_bar=progress_bar)


def train_run(run: RunDirectory, progress_bar: bool = False) -> TrainResult:
    """Train the run to its budget, from its latest checkpoint if any.

    Ctrl-C (KeyboardInterrupt) saves a checkpoint and returns normally with
    ``interrupted`` set; calling this again continues from there, the step
    count going on (``reset_num_timesteps=False``). The training episodes of
    a resumed run differ from those of an uninterrupted one: the
    environments' random state is not checkpointed, so they are reseeded
    from the seed and the step count.

    Args:
        run: The run directory.
        progress_bar: Whether to show SB3's progress bar.
    """
    config = run.config()
    scenario = run.scenario()
    spec = ALGORITHMS.get(config.algorithm)
    torch.set_num_threads(config.torch_threads)
    env = make_env(config, scenario)

    # a fresh model, or the latest checkpoint with this session's env
    checkpoints = run.checkpoints()
    if checkpoints:
        steps, path = checkpoints[-1]
        logger.info("resuming %s from %d timesteps", run.name, steps)
        model = spec.cls.load(
            str(path), env=env, device="cpu", tensorboard_log=str(run.tensorboard_dir)
        )
        if spec.off_policy and run.replay_buffer_file.is_file():
            model.load_replay_buffer(run.replay_buffer_file)  # type: ignore[attr-defined]
    else:
        model = build_model(config, env, run.tensorboard_dir)
        if config.clone_planner.episodes:
            _clone_planner(model, run, config, scenario)
    env.seed(config.seed + TRAIN_SEED_OFFSET + model.num_timesteps)

    start_steps, start_s = model.num_timesteps, time.perf_counter()
    remaining = config.total_timesteps - model.num_timesteps
    interrupted = False
    if remaining > 0:
        interrupted = _learn(model, run, config, scenario, remaining, progress_bar)
    else:
        logger.info("run %s already has its %d timesteps", run.name, start_steps)
    env.close()
    elapsed_s = time.perf_counter() - start_s
    rows = run.evaluations()
    return TrainResult(
        run_dir=run.path,
        timesteps=model.num_timesteps,
        interrupted=interrupted,
        session_steps_per_s=(model.num_timesteps - start_steps) / max(elapsed_s, 1e-9),
        best=min(rows, key=lambda row: row["total_cost"]) if rows else None,
    )


def _clone_planner(
    model: BaseAlgorithm, run: RunDirectory, config: TrainConfig, scenario: Scenario
) -> None:
    """Fit a fresh model to the planner's choices; record the fit in the run."""
    settings = config.clone_planner
    first = config.seed + CLONE_SEED_OFFSET
    seeds = range(first, first + settings.episodes)
    gamma = float(config.hyperparameters["gamma"])
    logger.info("following the planner through %d episodes", settings.episodes)
    demonstrations = planner_demonstrations(scenario, settings.services, seeds, gamma)
    epochs = clone(
        model,  # type: ignore[arg-type]  # only maskable_ppo passes the config
        demonstrations,
        settings.epochs,
        settings.batch_size,
        settings.learning_rate,
        config.seed,
    )
    with run.clone_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "nll", "value_mse"])
        for i, epoch in enumerate(epochs):
            writer.writerow([i, epoch.nll, epoch.value_mse])


def _learn(
    model: BaseAlgorithm,
    run: RunDirectory,
    config: TrainConfig,
    scenario: Scenario,
    timesteps: int,
    progress_bar: bool,
) -> bool:
    """Train ``model`` for ``timesteps`` more; return whether Ctrl-C stopped it."""
    spec = ALGORITHMS.get(config.algorithm)
    callbacks: list[BaseCallback] = [
        EnvMetricsCallback(),
        EvaluationCallback(run, scenario, config.eval),
        CheckpointCallback(run, config.checkpoint_freq_steps, spec.off_policy),
    ]
    progress = ProgressBarCallback() if progress_bar else None
    if progress is not None:
        callbacks.append(progress)
    try:
        model.learn(
            timesteps,
            callback=CallbackList(callbacks),
            tb_log_name=TB_LOG_NAME,
            reset_num_timesteps=model.num_timesteps == 0,
        )
    except KeyboardInterrupt:
        # the bar's own end-of-training hook is skipped on an exception
        if progress is not None and hasattr(progress, "pbar"):
            progress.on_training_end()
        logger.warning("interrupted at %d timesteps", model.num_timesteps)
        run.save_checkpoint(model, spec.off_policy)
        return True
    finally:
        model.logger.close()
    run.save_checkpoint(model, spec.off_policy)
    return False


class EnvMetricsCallback(BaseCallback):
    """Logs the training environment's cost terms under ``env/``.

    Sums are taken over every service-slot of a rollout and recorded with
    ``record_mean``, so several rollouts between two dumps (DQN) average.
    """

    def _on_rollout_start(self) -> None:
        self._sums = dict.fromkeys(TERM_NAMES, 0.0)
        self._cost = self._moved = self._refused = 0.0
        self._slots = 0

    def _on_step(self) -> bool:
        env = self.training_env.unwrapped
        if isinstance(env, FleetVecEnv):
            info = env.last_infos
            for name in TERM_NAMES:
                self._sums[name] += float(info["terms"][name].sum())
            self._cost += float(info["cost"].sum())
            self._moved += float(info["moved"].sum())
            self._refused += float(info["refused"].sum())
            self._slots += env.num_envs
            return True
        for info in self.locals["infos"]:
            for name, value in info["terms"].items():
                self._sums[name] += value
            self._cost += info["cost"]
            self._moved += info["moved"]
            self._refused += info["refused"]
            self._slots += 1
        return True

    def _on_rollout_end(self) -> None:
        if self._slots == 0:
            return
        for name in TERM_NAMES:
            self.logger.record_mean(f"env/{name}", self._sums[name] / self._slots)
        self.logger.record_mean("env/cost", self._cost / self._slots)
        self.logger.record_mean("env/migrations_per_slot", self._moved / self._slots)
        # per move: a rollout without moves has none to average
        per_move = self._sums["downtime"] / self._moved if self._moved else None
        self.logger.record_mean("env/downtime_s", per_move)
        violations = self._sums["slo_violation"] / self._slots
        self.logger.record_mean("env/slo_violations", violations)
        self.logger.record_mean("env/refused", self._refused / self._slots)


class EvaluationCallback(BaseCallback):
    """Evaluates the deterministic policy; keeps the best model and the history.

    Evaluates at the start of a fresh run, at the first rollout that starts
    ``freq_steps`` timesteps or more past the last evaluation, and at the end.
    ``wall_s`` counts training time, earlier sessions included.

    Args:
        run: The run directory.
        scenario: The scenario trained on.
        config: What and how often to evaluate.
    """

    def __init__(
        self, run: RunDirectory, scenario: Scenario, config: EvalConfig
    ) -> None:
        super().__init__()
        self.run = run
        self.scenario = scenario
        self.config = config
        self.context = policy_context(scenario)
        history = run.evaluations()
        self.best_cost = min((r["total_cost"] for r in history), default=math.inf)
        self.last_steps = int(history[-1]["timesteps"]) if history else -1
        self._wall_offset_s = history[-1]["wall_s"] if history else 0.0
        self._start_s = time.perf_counter()
        self._reference()

    def _reference(self) -> None:
        """Run the baselines and the optimum on the evaluation episodes."""
        baselines = {
            name: make_policy(name, self.context) for name in self.config.baselines
        }
        report = evaluate_seeds(
            self.scenario, self.config.seeds, self.config.services, baselines
        )
        self.run.baselines_file.write_text(json.dumps(report.to_dict(), indent=1))
        self.hindsight = report.totals(HINDSIGHT)
        self.best_heuristic = min(
            self.config.baselines, key=lambda name: report.totals(name).mean()
        )
        self.best_heuristic_cost = float(report.totals(self.best_heuristic).mean())
        self.best_heuristic_ratio = Estimate.of(report.ratios(self.best_heuristic))

    def _on_training_start(self) -> None:
        self._start_s = time.perf_counter()
        if self.model.num_timesteps == 0 and self.last_steps < 0:
            self.evaluate()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        # after the update that used every timestep counted so far
        if self.model.num_timesteps >= self.last_steps + self.config.freq_steps:
            self.evaluate()

    def _on_training_end(self) -> None:
        if self.model.num_timesteps != self.last_steps:
            self.evaluate()

    def evaluate(self) -> dict[str, float]:
        """Evaluate the current model; log, record and keep it if best."""
        policy = LearnedPolicy(self.model, self.context)
        outcomes = [
            run_policy_object(self.scenario, seed, self.config.services, policy)
            for seed in self.config.seeds
        ]
        row = self._row(outcomes, policy.masked_choices)
        for key in ("ratio_to_hindsight", "best_heuristic_ratio"):
            self.logger.record(f"eval/{key}", row[key])
        self.logger.record("eval/cost", row["cost_per_service_slot"])
        self.logger.record(
            "eval/ratio_to_best_heuristic", row["ratio_to_best_heuristic"]
        )
        self.logger.record("eval/masked_choices", row["masked_choices"])
        self.logger.record("eval/migrations_per_slot", row["migrations_per_slot"])
        self.logger.dump(self.model.num_timesteps)
        # the best model first: once a row is in the history, its model is too
        if row["total_cost"] < self.best_cost:
            self.best_cost = row["total_cost"]
            self.model.save(self.run.best_model_file)
        self.run.append_evaluation(row)
        self.last_steps = self.model.num_timesteps
        logger.info(
            "evaluation at %d timesteps: ratio to hindsight %.4f (best heuristic "
            "%s %.4f)",
            self.model.num_timesteps,
            row["ratio_to_hindsight"],
            self.best_heuristic,
            row["best_heuristic_ratio"],
        )
        return row

    def _row(
        self, outcomes: list[PolicyOutcome], masked_choices: int
    ) -> dict[str, float]:
        totals = np.array([o.total_cost for o in outcomes])
        ratio = Estimate.of(totals / self.hindsight)
        service_slots = self.config.services * self.scenario.config.episode_slots
        total = float(totals.mean())
        row = {
            "timesteps": float(self.model.num_timesteps),
            "wall_s": self._wall_offset_s + time.perf_counter() - self._start_s,
            "total_cost": total,
            "cost_per_service_slot": total / service_slots,
            "ratio_to_hindsight": ratio.mean,
            "ratio_to_hindsight_ci95": ratio.half_width,
            "best_heuristic": self.best_heuristic_cost,
            "best_heuristic_ratio": self.best_heuristic_ratio.mean,
            "ratio_to_best_heuristic": total / self.best_heuristic_cost,
            "migrations_per_slot": float(
                np.mean([o.migrations for o in outcomes]) / service_slots
            ),
            "slo_violations": float(
                np.mean([o.terms["slo_violation"] for o in outcomes])
            ),
            "masked_choices": float(masked_choices) / len(outcomes),
        }
        for name in TERM_NAMES:
            row[f"weighted_{name}"] = float(
                np.mean([o.weighted[name] for o in outcomes])
            )
        return row


class CheckpointCallback(BaseCallback):
    """Saves a checkpoint every ``freq_steps`` timesteps.

    Args:
        run: The run directory.
        freq_steps: Timesteps between checkpoints.
        off_policy: Whether to save the replay buffer too.
    """

    def __init__(self, run: RunDirectory, freq_steps: int, off_policy: bool) -> None:
        super().__init__()
        self.run = run
        self.freq_steps = freq_steps
        self.off_policy = off_policy

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.freq_steps + 1) * self.freq_steps

    def _on_step(self) -> bool:
        if self.model.num_timesteps >= self._next:
            self.run.save_checkpoint(self.model, self.off_policy)
            self._next = (
                self.model.num_timesteps // self.freq_steps + 1
            ) * self.freq_steps
        return True
