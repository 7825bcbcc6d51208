"""Run, resume and summarise a sweep on a local Ray or on a Ray cluster.

An experiment folder in storage holds Tune's state and one directory per
trial:

| in the experiment folder | what |
|---|---|
| ``mecrl-sweep.yaml`` | the checked sweep: base training config, search |
| | space, scenario files; what ``--resume`` rebuilds the trials from |
| ``tuner.pkl``, ``experiment_state-*.json`` | Tune's state |
| ``<trial>/params.json``, ``result.json``, | the trial's searched values and |
| ``progress.csv``, ``events.out.tfevents.*`` | every reported evaluation |
| ``<trial>/<run>/`` | the trial's ``mecrl.train`` run directory, with its |
| | TensorBoard events under ``tb/`` |
| ``<trial>/checkpoint_N/<run>/`` | the run directory at the trial's latest report |

``tensorboard --logdir <experiment folder>`` shows every trial's curves.
At the end the best trial's latest checkpoint (which holds the run's best
model) is copied out as an ordinary run directory for ``mecrl evaluate``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from mecrl.config import ConfigError, from_dict, to_dict
from mecrl.tuning.config import Dimension, Sweep, SweepConfig
from mecrl.tuning.trial import run_trial

logger = logging.getLogger(__name__)

SWEEP_FILE = "mecrl-sweep.yaml"
"""The checked sweep, in the experiment folder."""


@dataclass(frozen=True)
class TrialSummary:
    """What one trial reached."""

    trial_id: str
    """Tune's id of the trial."""
    values: dict[str, Any]
    """The searched fields' values."""
    best: float
    """The best value of the sweep's metric over the trial's evaluations."""
    best_timesteps: float
    """Timesteps at the best evaluation."""
    timesteps: float
    """Timesteps trained when the trial ended."""
    budget: int
    """The trial's training budget in timesteps."""
    time_total_s: float
    """Wall time the trial ran in Tune, in seconds, start-up included."""
    wall_s: float
    """Training time of the run at its last evaluation, in seconds
    (``mecrl.train``'s ``wall_s``: evaluations included, start-up not)."""
    node_id: str
    """Ray node of the trial's last report."""
    error: bool
    """Whether the trial failed."""

    @property
    def status(self) -> str:
        """``done``, ``stopped`` (early, by ASHA or an interruption) or ``error``."""
        if self.error:
            return "error"
        return "done" if self.timesteps >= self.budget else "stopped"


@dataclass(frozen=True)
class SweepResult:
    """The outcome of :func:`run_sweep` or :func:`resume_sweep`."""

    experiment_path: str
    """The experiment folder in storage."""
    metric: str
    """The metric ranking trials."""
    mode: str
    """``min`` or ``max``."""
    trials: list[TrialSummary]
    """Every trial that reported, best first."""
    interrupted: bool
    """Whether the sweep stopped before every trial ended (Ctrl-C)."""
    best_run: Path | None
    """The exported run directory of the best trial, if exported."""


def run_sweep(
    sweep: Sweep,
    address: str | None = None,
    storage: str | None = None,
    export_root: str | Path | None = None,
    verbose: int = 1,
) -> SweepResult:
    """Run every trial of ``sweep`` with Ray Tune.

    Args:
        sweep: The checked sweep (see :func:`mecrl.tuning.load_sweep_config`).
        address: ``HOST:PORT`` of a running Ray cluster; None to start a
            local Ray, shut down at the end (or use the one this process
            already holds).
        storage: Where the experiment folder goes; the sweep's ``storage``
            if None.
        export_root: Folder the best trial's run directory is copied into;
            the base training config's ``run_root`` if None; nothing is
            exported if ``""``.
        verbose: Tune's console output: 0 silent, 1 progress.

    Raises:
        ConfigError: If a trial needs more CPUs than any node has
            (``resources.cpus``), before any trial starts.
    """
    storage_uri = _storage_uri(storage or sweep.config.storage)
    with ray_session(address):
        check_resources(sweep.config.resources.cpus)
        name = _experiment_name(storage_uri, sweep.name)
        _write_sweep(sweep, _join(storage_uri, name))
        tuner = tune.Tuner(
            _trainable(sweep),
            param_space=param_space(sweep.config.dimensions()),
            tune_config=tune.TuneConfig(
                metric=sweep.config.metric,
                mode=sweep.config.mode,
                scheduler=_scheduler(sweep),
                num_samples=sweep.config.num_samples,
                max_concurrent_trials=sweep.config.max_concurrent_trials or None,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_uri,
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=sweep.config.checkpoints_to_keep
                ),
                # copies each trial's run directory into storage
                sync_config=tune.SyncConfig(sync_artifacts=True),
                verbose=verbose,
            ),
        )
        logger.info("experiment %s", _join(storage_uri, name))
        return _finish(tuner.fit(), sweep, export_root)


def resume_sweep(
    path: str,
    address: str | None = None,
    export_root: str | Path | None = None,
) -> SweepResult:
    """Continue an interrupted sweep; finished trials are not run again.

    Unfinished trials continue from their latest checkpoint, failed ones
    too; trials that never started start.

    Args:
        path: The experiment folder (local path or storage URI).
        address: As for :func:`run_sweep`.
        export_root: As for :func:`run_sweep`.

    Raises:
        FileNotFoundError: If ``path`` holds no experiment of ``mecrl tune``.
    """
    uri = _storage_uri(path)
    sweep = read_sweep(uri)
    with ray_session(address):
        check_resources(sweep.config.resources.cpus)
        if not tune.Tuner.can_restore(uri):
            raise FileNotFoundError(f"{path!r} holds no Tune experiment to resume")
        tuner = tune.Tuner.restore(
            uri, trainable=_trainable(sweep), resume_errored=True
        )
        return _finish(tuner.fit(), sweep, export_root)


def param_space(dimensions: list[Dimension]) -> dict[str, Any]:
    """Return Tune's search space: dotted field -> grid or distribution."""
    space: dict[str, Any] = {}
    for dimension in dimensions:
        values = list(dimension.values)
        if dimension.kind == "grid":
            space[dimension.path] = tune.grid_search(values)
        elif dimension.kind == "choice":
            space[dimension.path] = tune.choice(values)
        elif dimension.kind == "uniform":
            space[dimension.path] = tune.uniform(*values)
        else:
            space[dimension.path] = tune.loguniform(*values)
    return space


def check_resources(cpus: int) -> None:
    """Raise unless some node of the connected cluster has ``cpus`` CPUs.

    A trial runs on one node, so the largest node bounds a trial's CPUs.

    Raises:
        ConfigError: Naming ``resources.cpus``.
    """
    nodes = [node for node in ray.nodes() if node["Alive"]]
    sizes = [float(node["Resources"].get("CPU", 0.0)) for node in nodes]
    largest = max(sizes, default=0.0)
    if cpus > largest:
        raise ConfigError(
            "resources.cpus",
            f"{cpus} CPUs per trial, but the largest of the cluster's "
            f"{len(nodes)} nodes has {largest:g} (all together {sum(sizes):g})",
        )


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect to ``address``, or start a local Ray; shut down what was started.

    Inside a Ray this process already holds, nothing is started or stopped.
    """
    if ray.is_initialized():
        yield
        return
    # no usage reports to Ray's servers: these machines reach no network
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        ray.init(address=address, log_to_driver=True)
    else:
        with _loopback_node():
            ray.init(include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Make the local Ray that ``ray.init`` starts use 127.0.0.1 as its address.

    Ray gives a node the machine's outward address even when told 127.0.0.1
    (``ray._private.services.resolve_ip_for_localhost``), so a local Ray
    would listen for its own workers on the network. Ray reads this switch,
    made for Windows and macOS where clusters are off, when it picks the
    address; a local Ray that serves one process needs nothing else.
    """
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def _trainable(sweep: Sweep) -> Any:
    """Return the Tune trainable of ``sweep``'s trials, with their resources."""
    trainable = tune.with_parameters(run_trial, sweep=sweep)
    return tune.with_resources(trainable, {"cpu": sweep.config.resources.cpus})


def _scheduler(sweep: Sweep) -> ASHAScheduler | None:
    """Return ASHA over training timesteps, or None if it could stop nothing."""
    early = sweep.config.early_stopping
    if not early.enabled:
        return None
    if early.grace_period_steps >= sweep.max_timesteps:
        logger.warning(
            "early_stopping.grace_period_steps (%d) is not below the largest "
            "budget (%d timesteps): no trial can be stopped early",
            early.grace_period_steps,
            sweep.max_timesteps,
        )
        return None
    return ASHAScheduler(
        time_attr="timesteps",
        max_t=sweep.max_timesteps,
        grace_period=early.grace_period_steps,
        reduction_factor=early.reduction_factor,
    )


def _storage_uri(text: str) -> str:
    """Return an object store URI as is, a local folder as an absolute path."""
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def _experiment_name(storage_uri: str, prefix: str) -> str:
    """Return ``<prefix>-<time stamp>``, unused in storage."""
    fs, root = pyarrow.fs.FileSystem.from_uri(storage_uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, suffix = f"{prefix}-{stamp}", 1
    while fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.NotFound:
        suffix += 1
        name = f"{prefix}-{stamp}-{suffix}"
    return name


def _write_sweep(sweep: Sweep, experiment_uri: str) -> None:
    """Record the checked sweep in the experiment folder, for ``--resume``."""
    document = {
        "name": sweep.name,
        "config": to_dict(sweep.config),
        "base": sweep.base,
        "scenarios": sweep.scenarios,
        "max_timesteps": sweep.max_timesteps,
    }
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_uri)
    fs.create_dir(path)
    with fs.open_output_stream(f"{path}/{SWEEP_FILE}") as stream:
        stream.write(yaml.safe_dump(document, sort_keys=False).encode())


def read_sweep(experiment_uri: str) -> Sweep:
    """Return the sweep recorded in an experiment folder.

    Raises:
        FileNotFoundError: If the folder holds no ``mecrl-sweep.yaml``.
    """
    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_uri)
    file = f"{path}/{SWEEP_FILE}"
    if fs.get_file_info(file).type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(
            f"{experiment_uri!r} is not an experiment of mecrl tune: "
            f"it has no {SWEEP_FILE}"
        )
    with fs.open_input_stream(file) as stream:
        document = yaml.safe_load(stream.read().decode())
    return Sweep(
        config=from_dict(SweepConfig, document["config"]),
        name=document["name"],
        base=document["base"],
        scenarios=document["scenarios"],
        max_timesteps=document["max_timesteps"],
    )


def _finish(
    results: tune.ResultGrid, sweep: Sweep, export_root: str | Path | None
) -> SweepResult:
    """Summarise the trials and export the best one, unless interrupted."""
    trials = summarise(results, sweep)
    interrupted = unfinished_trials(results.experiment_path) > 0
    best_run = None
    if trials and not interrupted and export_root != "":
        root = Path(export_root or sweep.base["run_root"])
        name = Path(results.experiment_path).name
        best_run = export_best(results, sweep, root / f"{name}-best")
    return SweepResult(
        experiment_path=results.experiment_path,
        metric=sweep.config.metric,
        mode=sweep.config.mode,
        trials=trials,
        interrupted=interrupted,
        best_run=best_run,
    )


def unfinished_trials(experiment_uri: str) -> int:
    """Return how many trials of the experiment's saved state have not ended.

    Tune saves its state before it stops the trials of an interrupted sweep,
    and marks them ended in memory afterwards: only the saved state tells
    which ones ``--resume`` will run.
    """
    # trials that never reported have no result files; Tune warns of each
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        trials = tune.ExperimentAnalysis(experiment_uri).trials
    finally:
        quiet.setLevel(level)
    return sum(trial.status not in ("TERMINATED", "ERROR") for trial in trials)


def summarise(results: tune.ResultGrid, sweep: Sweep) -> list[TrialSummary]:
    """Return a summary of every trial that reported, best first."""
    metric, sign = sweep.config.metric, 1.0 if sweep.config.mode == "min" else -1.0
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or frame.empty or metric not in frame:
            continue
        best_at = (sign * frame[metric]).idxmin()
        values = dict(result.config or {})
        last = result.metrics or {}
        trials.append(
            TrialSummary(
                trial_id=str(last.get("trial_id", "")),
                values=values,
                best=float(frame[metric][best_at]),
                best_timesteps=float(frame["timesteps"][best_at]),
                timesteps=float(frame["timesteps"].max()),
                budget=sweep.trial_config(values).total_timesteps,
                time_total_s=float(last.get("time_total_s", math.nan)),
                wall_s=float(frame["wall_s"].max()),
                node_id=str(last.get("node_id", "")),
                error=result.error is not None,
            )
        )
    return sorted(trials, key=lambda trial: sign * trial.best)


def export_best(results: tune.ResultGrid, sweep: Sweep, target: Path) -> Path | None:
    """Copy the best trial's run directory out of its latest checkpoint.

    The copy is an ordinary run directory (``mecrl evaluate --runs``); its
    ``best_model.zip`` is the run's best evaluated model. A ``-2``, ``-3``
    ... suffix keeps an existing folder.

    Returns:
        The run directory, or None if the best trial saved no checkpoint.
    """
    best = results.get_best_result(scope="all")
    if best.checkpoint is None:
        logger.warning("the best trial saved no checkpoint: nothing exported")
        return None
    path, suffix = target, 1
    while path.exists():
        suffix += 1
        path = target.with_name(f"{target.name}-{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mecrl-export-") as folder:
        best.checkpoint.to_directory(folder)
        (run_dir,) = Path(folder).iterdir()
        shutil.move(run_dir, path)
    logger.info("best trial's run directory exported to %s", path)
    return path


def summary_lines(result: SweepResult, top: int) -> list[str]:
    """Return a table of the ``top`` best trials, and means over seeds.

    The second table appears when ``seed`` and another field are searched:
    trials that differ only in their seed are averaged, which ranks
    settings rather than lucky seeds.
    """
    if not result.trials:
        return ["no trial reported an evaluation"]
    paths = list(result.trials[0].values)
    shown = result.trials[:top]
    widths = {
        path: 2 + max(len(path), *(len(_text(t.values.get(path))) for t in shown))
        for path in paths
    }
    lines = [
        f"{'trial':<14}{'status':<9}"
        + "".join(f"{path:>{widths[path]}}" for path in paths)
        + f"{result.metric:>22}{'at steps':>11}{'steps':>11}{'node':>10}"
    ]
    for trial in shown:
        lines.append(
            f"{trial.trial_id:<14}{trial.status:<9}"
            + "".join(f"{_text(trial.values.get(p)):>{widths[p]}}" for p in paths)
            + f"{trial.best:>22.4f}{trial.best_timesteps:>11,.0f}"
            + f"{trial.timesteps:>11,.0f}{trial.node_id[:8]:>10}"
        )
    if "seed" in paths and len(paths) > 1:
        lines.append("")
        lines.extend(_seed_means(result, [p for p in paths if p != "seed"]))
    return lines


def _seed_means(result: SweepResult, paths: list[str]) -> list[str]:
    """Return a table of the metric's mean over seeds, per setting, best first."""
    groups: dict[tuple[str, ...], list[float]] = {}
    for trial in result.trials:
        key = tuple(_text(trial.values.get(path)) for path in paths)
        groups.setdefault(key, []).append(trial.best)
    sign = 1.0 if result.mode == "min" else -1.0
    ranked = sorted(groups.items(), key=lambda item: sign * sum(item[1]) / len(item[1]))
    widths = [
        2 + max(len(path), *(len(key[i]) for key in groups))
        for i, path in enumerate(paths)
    ]
    label = f"mean {result.metric}"
    lines = [
        "".join(f"{path:>{w}}" for path, w in zip(paths, widths, strict=True))
        + f"{label:>{len(label) + 2}}{'seeds':>7}"
    ]
    for key, bests in ranked:
        lines.append(
            "".join(f"{value:>{w}}" for value, w in zip(key, widths, strict=True))
            + f"{sum(bests) / len(bests):>{len(label) + 2}.4f}{len(bests):>7}"
        )
    return lines


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "x".join(str(item) for item in value)
    return str(value)
