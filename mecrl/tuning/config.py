"""The sweep config: a base training config and a search space over its fields.

A sweep is a YAML or TOML file (or :class:`SweepConfig` in Python):

| field | meaning |
|---|---|
| ``train`` | the base training config: a file (read relative to the sweep |
| | file) or the mapping itself (``mecrl.train.TrainConfig`` fields) |
| ``overrides`` | values replacing the base config's, as if written in it |
| ``search_space`` | ``{dotted.field: {grid: [...]}}``, or ``choice``, |
| | ``uniform: [low, high]``, ``loguniform: [low, high]`` |
| ``num_samples`` | repeats of the grid; draws of the random dimensions |
| ``resources.cpus`` | CPUs per trial, also its torch threads |
| ``metric``, ``mode`` | the evaluation column that ranks trials |
| ``early_stopping`` | ASHA: stop hopeless trials at rungs of timesteps |
| ``smoke`` | values replacing the sweep's own for a run of seconds (CI) |

Any training-config field is a dimension by its dotted path
(``hyperparameters.learning_rate``, ``env.n_envs``, ``policy.net_arch``,
``seed``); seeds are a dimension like any other. Everything here is checked
before a trial starts: every grid point's training config is built, and each
random dimension is built at its bounds or choices, so a value the training
config rejects fails at once, naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mecrl.config import (
    ConfigError,
    check,
    check_integer,
    from_dict,
    load_file,
    merged,
    to_dict,
)
from mecrl.scenario import load_config
from mecrl.train import EVALUATION_COLUMNS, TrainConfig, load_train_config

DISTRIBUTIONS = ("choice", "grid", "loguniform", "uniform")
"""How a dimension is searched: ``grid`` tries every value (in every
combination with the other grids), ``choice`` draws one value, ``uniform``
and ``loguniform`` draw a float between two bounds."""

SET_BY_SWEEP = {
    "run_root": "the trial directory",
    "torch_threads": "resources.cpus",
}
"""Training-config fields a sweep sets itself, and what sets them."""


@dataclass(frozen=True)
class Dimension:
    """One searched training-config field."""

    path: str
    """Dotted path of the field in the training config."""
    kind: Literal["choice", "grid", "loguniform", "uniform"]
    """How values are searched (see :data:`DISTRIBUTIONS`)."""
    values: tuple[Any, ...]
    """The values (grid, choice) or the two bounds (uniform, loguniform)."""


@dataclass(frozen=True)
class Resources:
    """What each trial holds while it runs."""

    cpus: int = 1
    """CPUs per trial; torch runs with as many threads. A trial runs on one
    node, so no node may have fewer CPUs than this for the sweep to run."""

    def __post_init__(self) -> None:
        check_integer("cpus", self.cpus, minimum=1)


@dataclass(frozen=True)
class EarlyStopping:
    """Asynchronous successive halving (ASHA) over training timesteps.

    At rungs of ``grace_period_steps * reduction_factor**k`` timesteps, a
    trial whose metric is not in the best ``1 / reduction_factor`` of the
    trials that reached that rung stops.
    """

    enabled: bool = True
    """Whether hopeless trials stop early."""
    grace_period_steps: int = 50_000
    """Timesteps every trial trains before it may be stopped."""
    reduction_factor: int = 3
    """Keep the best ``1 / reduction_factor`` of trials at each rung."""

    def __post_init__(self) -> None:
        check_integer("grace_period_steps", self.grace_period_steps, minimum=1)
        check_integer("reduction_factor", self.reduction_factor, minimum=2)


@dataclass(frozen=True)
class SweepConfig:
    """A Ray Tune sweep over training configs."""

    name: str = ""
    """Prefix of the experiment folder's name; the config file's stem if empty."""
    train: str | dict[str, Any] = field(default_factory=dict)
    """The base training config: a file, or its fields as a mapping (the
    built-in default config if empty)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Training-config values applied over the base (mappings merge)."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Dotted training-config field -> ``{grid | choice: [values]}`` or
    ``{uniform | loguniform: [low, high]}``."""
    num_samples: int = 1
    """Times the grid is repeated, each time with fresh random draws."""
    resources: Resources = field(default_factory=Resources)
    """What each trial holds."""
    metric: str = "ratio_to_hindsight"
    """Evaluation column (``mecrl.train.EVALUATION_COLUMNS``) ranking trials:
    by default the evaluated cost over the hindsight optimum's."""
    mode: Literal["min", "max"] = "min"
    """Whether a lower or a higher metric is better."""
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    """Stopping of hopeless trials."""
    max_concurrent_trials: int = 0
    """Trials running at once; 0 for as many as the CPUs allow."""
    checkpoints_to_keep: int = 1
    """Tune checkpoints kept per trial, the latest ones. Each holds the
    trial's run directory, best model included, so one is enough to resume
    and to export."""
    storage: str = "runs/tune"
    """Where experiments are written: a local folder, a folder every node
    mounts (NFS), or an object store URI (``s3://bucket/path``)."""
    top: int = 5
    """Rows of the summary table of the best trials."""

    def __post_init__(self) -> None:
        check(
            re.fullmatch(r"[\w.-]*", self.name) is not None,
            "name",
            f"may hold letters, digits, '.', '_' and '-' only, got {self.name!r}",
        )
        check_integer("num_samples", self.num_samples, minimum=1)
        check_integer("max_concurrent_trials", self.max_concurrent_trials, minimum=0)
        check_integer("checkpoints_to_keep", self.checkpoints_to_keep, minimum=1)
        check_integer("top", self.top, minimum=1)
        check(bool(self.storage), "storage", "must not be empty")
        check(
            self.metric in EVALUATION_COLUMNS,
            "metric",
            f"unknown evaluation column {self.metric!r}; known: "
            f"{', '.join(EVALUATION_COLUMNS)}",
        )
        for path, spec in self.search_space.items():
            parse_dimension(path, spec)

    def dimensions(self) -> list[Dimension]:
        """Return the searched fields, in the order the config lists them."""
        return [parse_dimension(p, s) for p, s in self.search_space.items()]


def parse_dimension(path: str, spec: Any) -> Dimension:
    """Return the dimension of the training-config field ``path``.

    Raises:
        ConfigError: If ``path`` names no training-config field (the message
            lists the valid ones at the level that went wrong), or the spec
            is not one distribution with well-formed values.
    """
    where = f"search_space.{path}"
    check_field_path(path, where)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            where,
            "expected a mapping with one key of: " + ", ".join(DISTRIBUTIONS),
        )
    [(kind, values)] = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}.{kind}",
            "unknown distribution; valid: " + ", ".join(DISTRIBUTIONS),
        )
    where = f"{where}.{kind}"
    check(
        isinstance(values, list | tuple) and len(values) > 0,
        where,
        f"expected a non-empty list, got {values!r}",
    )
    if kind in ("uniform", "loguniform"):
        values = [_number(v) for v in values]
        check(
            len(values) == 2 and all(isinstance(v, float) for v in values),
            where,
            f"expected [low, high], two numbers, got {values!r}",
        )
        low, high = values
        check(low < high, where, f"low must be below high, got {values!r}")
        if kind == "loguniform":
            check(low > 0, where, f"low must be > 0 on a log scale, got {low!r}")
    return Dimension(path, kind, tuple(values))


def _number(value: Any) -> Any:
    """Return a finite number (YAML 1.1 may give ``3e-4`` as text) as a float."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return value


def check_field_path(path: str, where: str) -> None:
    """Raise unless ``path`` is a training-config field a sweep may search.

    A mapping field (``hyperparameters``) takes any one key below it: the
    training config checks the key when it is built.

    Raises:
        ConfigError: Naming ``where`` and, for an unknown part, the valid
            fields at that level.
    """
    parts = path.split(".")
    if parts[0] in SET_BY_SWEEP:
        raise ConfigError(where, f"set by mecrl tune from {SET_BY_SWEEP[parts[0]]}")
    cls: Any = TrainConfig
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            level = ".".join(parts[:depth]) or "the training config"
            raise ConfigError(
                where,
                f"{part!r} is not a field of {level}; valid: {', '.join(names)}",
            )
        hint = hints[part]
        rest = parts[depth + 1 :]
        if typing.get_origin(hint) is dict:
            check(len(rest) <= 1, where, f"{part} holds one level of keys")
            return
        if not dataclasses.is_dataclass(hint):
            check(not rest, where, f"{part} has no fields below it")
            return
        if not rest:
            raise ConfigError(where, f"{part} is a group of fields; search one of them")
        cls = hint


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of nested ``data`` with the dotted ``path`` set to ``value``."""
    result = copy.deepcopy(data)
    node = result
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
    return result


@dataclass(frozen=True)
class Sweep:
    """A sweep config with its base training config resolved and checked."""

    config: SweepConfig
    """The sweep config."""
    name: str
    """Prefix of the experiment folder's name."""
    base: dict[str, Any]
    """The base training config as plain data (overrides applied,
    ``torch_threads`` set from the resources)."""
    scenarios: dict[str, dict[str, Any]]
    """Scenario files the trials train on -> their config as plain data, so
    that trials need no copy of the files on other nodes."""
    max_timesteps: int
    """The largest training budget of any trial."""

    @property
    def n_trials(self) -> int:
        """Trials the sweep runs: grid points times ``num_samples``."""
        points = math.prod(
            len(d.values) for d in self.config.dimensions() if d.kind == "grid"
        )
        return points * self.config.num_samples

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        """Return the training config of one point of the search space.

        Raises:
            ConfigError: If the training config rejects a value; the message
                names the searched fields and values of the point.
        """
        data = self.base
        for path, value in values.items():
            data = set_path(data, path, value)
        try:
            return from_dict(TrainConfig, data)
        except ConfigError as exc:
            point = ", ".join(f"{p}={v!r}" for p, v in values.items())
            raise ConfigError(
                _searched_field(exc.field, values),
                f"rejected by the training config at {{{point}}}: {exc}",
            ) from None


def _searched_field(field_path: str, values: dict[str, Any]) -> str:
    """Return the search-space entry a training-config error is about."""
    for path in values:
        if field_path == path or field_path.startswith(f"{path}."):
            return f"search_space.{path}"
    return f"search_space ({field_path})"


def load_sweep_config(path: str | Path, smoke: bool = False) -> Sweep:
    """Load and check a sweep config file.

    Args:
        path: YAML or TOML file.
        smoke: Whether to apply the sweep's ``smoke`` mapping and the base
            training config's own smoke variant.

    Raises:
        ConfigError: On an unknown key or a bad value, naming the field; on
            a search-space value the training config rejects, naming the
            searched field.
    """
    path = Path(path)
    data = load_file(path)
    variant = data.pop("smoke", None)
    if variant is not None and not isinstance(variant, dict):
        raise ConfigError("smoke", f"expected a mapping, got {type(variant).__name__}")
    if variant is not None:
        from_dict(SweepConfig, merged(data, variant), "smoke")
    elif smoke:
        raise ConfigError("smoke", f"{path} has no smoke section")
    config = from_dict(
        SweepConfig, merged(data, variant) if variant and smoke else data
    )
    return resolve_sweep(config, path.parent, smoke, config.name or path.stem)


def resolve_sweep(
    config: SweepConfig,
    folder: Path = Path(),
    smoke: bool = False,
    name: str = "",
) -> Sweep:
    """Resolve the base training config of ``config`` and check every trial.

    Args:
        config: The sweep config.
        folder: Folder that relative file names in ``config`` are read from.
        smoke: Whether to use the base training config's smoke variant.
        name: Experiment name; ``config.name`` or ``sweep`` if empty.

    Raises:
        ConfigError: As :func:`load_sweep_config`.
    """
    base = _base_train_data(config, folder, smoke)
    base = merged(base, {"torch_threads": config.resources.cpus})
    scenarios = _scenario_files(base, config.dimensions(), folder)
    sweep = Sweep(config, name or config.name or "sweep", base, scenarios, 0)
    budgets = [c.total_timesteps for c in _check_points(sweep)]
    return dataclasses.replace(sweep, max_timesteps=max(budgets))


def _base_train_data(config: SweepConfig, folder: Path, smoke: bool) -> dict[str, Any]:
    """Return the base training config, overrides applied, as plain data."""
    try:
        if isinstance(config.train, str):
            train_path = Path(config.train)
            if not train_path.is_absolute():
                train_path = folder / train_path
            if not train_path.is_file():
                raise ConfigError(
                    "train", f"no training config file {str(train_path)!r}"
                )
            train = load_train_config(
                train_path, smoke=smoke, overrides=config.overrides
            )
        else:
            data = merged(config.train, config.overrides)
            train = from_dict(TrainConfig, _absolute_scenario(data, folder))
    except ConfigError as exc:
        if exc.field.startswith(("train", "smoke")):
            raise
        raise ConfigError(f"train.{exc.field}", str(exc).split(": ", 1)[1]) from None
    data = to_dict(train)
    return _absolute_scenario(data, Path())


def _absolute_scenario(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Return ``data`` with a scenario file path made absolute."""
    scenario = data.get("scenario")
    if isinstance(scenario, str) and scenario.endswith((".yaml", ".yml", ".toml")):
        candidate = Path(scenario)
        if not candidate.is_absolute():
            candidate = folder / candidate
        if candidate.exists():
            return {**data, "scenario": str(candidate.resolve())}
    return data


def _scenario_files(
    base: dict[str, Any], dimensions: list[Dimension], folder: Path
) -> dict[str, dict[str, Any]]:
    """Return every scenario file a trial may train on, read into plain data."""
    names = [base.get("scenario")]
    for dimension in dimensions:
        if dimension.path == "scenario":
            names.extend(dimension.values)
    files = {}
    for name in names:
        if isinstance(name, str) and name.endswith((".yaml", ".yml", ".toml")):
            files[name] = load_config(name).to_dict()
    return files


def _check_points(sweep: Sweep) -> list[TrainConfig]:
    """Build the training config of every grid point and random bound.

    Random dimensions take their first value at every grid point; then each
    of their values (bounds or choices) is tried at the first grid point.
    """
    dimensions = sweep.config.dimensions()
    grids = [d for d in dimensions if d.kind == "grid"]
    randoms = [d for d in dimensions if d.kind != "grid"]
    first = {d.path: d.values[0] for d in randoms}
    configs = []
    for combination in itertools.product(*(d.values for d in grids)):
        point = dict(zip((d.path for d in grids), combination, strict=True))
        configs.append(sweep.trial_config({**point, **first}))
    first_grid = {d.path: d.values[0] for d in grids}
    for dimension in randoms:
        for value in dimension.values[1:]:
            point = {**first_grid, **first, dimension.path: value}
            configs.append(sweep.trial_config(point))
    return configs
