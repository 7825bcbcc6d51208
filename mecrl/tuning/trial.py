"""One Ray Tune trial: a ``mecrl.train`` run inside the trial's directory.

The trial trains with :func:`mecrl.train.train_run`, the code path of
``mecrl train``, in a run directory under the trial's working directory;
Ray copies that folder into the trial directory in storage (artifact sync),
so each trial's run directory, TensorBoard events included, ends up beside
Tune's own files.

Each evaluation of the run is reported to Tune with a checkpoint: a copy of
the run directory as of that evaluation (with the latest SB3 checkpoint
saved at or before it). A resumed trial copies it back and
:func:`~mecrl.train.train_run` continues from that SB3 checkpoint; the best
trial's latest checkpoint is exported as a run directory.

Tune's early-stopping scheduler sees each evaluation as it is made. When it
stops a trial, Tune ends it after a report; the run directory in storage
is then as of that report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from mecrl.train import RunDirectory, start_run, train_run
from mecrl.tuning.config import Sweep

logger = logging.getLogger(__name__)


class ReportingRun(RunDirectory):
    """A run directory that reports each evaluation to Tune, with a checkpoint.

    ``mecrl.train`` saves a new best model before it appends the evaluation
    to the history, so when a row arrives here the run directory holds
    everything that evaluation decided, and its snapshot is consistent.

    Args:
        path: The run directory.
    """

    def append_evaluation(self, row: dict[str, float]) -> None:
        """Record an evaluation, then report it with a checkpoint of the run."""
        super().append_evaluation(row)
        metrics: dict[str, Any] = {
            **row,
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }
        with tempfile.TemporaryDirectory(prefix="mecrl-checkpoint-") as folder:
            self.snapshot(Path(folder) / self.name, int(row["timesteps"]))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def snapshot(self, target: Path, timesteps: int) -> None:
        """Copy the run directory, as of its evaluation at ``timesteps``, to ``target``.

        Of the SB3 checkpoints, only the latest one at or before that
        evaluation goes along: a resume needs no other, and one saved after
        it would skip training that the evaluations still miss (a run
        resumed at its full budget trains and evaluates no more).
        """
        checkpoints = self.checkpoints()
        earlier = [path.name for steps, path in checkpoints if steps <= timesteps]
        left_out = {path.name for _, path in checkpoints} - set(earlier[-1:])

        def ignore(folder: str, names: list[str]) -> set[str]:
            if Path(folder) == self.checkpoint_dir:
                return left_out & set(names)
            return set()

        shutil.copytree(self.path, target, ignore=ignore)


def run_trial(values: dict[str, Any], *, sweep: Sweep) -> None:
    """Train the point ``values`` of the search space (a Tune trainable).

    Args:
        values: Dotted training-config field -> value, as Tune drew them.
        sweep: The checked sweep.
    """
    workdir = Path.cwd()
    config = sweep.trial_config(values)
    config = dataclasses.replace(config, run_root=str(workdir))
    if config.scenario in sweep.scenarios:
        config = dataclasses.replace(
            config, scenario=_write_scenario(config.scenario, sweep, workdir)
        )

    # a fresh run, or the run directory of the trial's latest checkpoint
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run = ReportingRun(start_run(config).path)
    else:
        run = ReportingRun(_restore(checkpoint, workdir))
        logger.info("trial resumes run %s", run.name)

    result = train_run(run)
    logger.info(
        "trial trained %d timesteps at %.0f timesteps/s in %s",
        result.timesteps,
        result.session_steps_per_s,
        run.path,
    )


def _write_scenario(name: str, sweep: Sweep, workdir: Path) -> str:
    """Write a scenario file's config into the trial's folder; return its path.

    Trials on other nodes then need no copy of the file.
    """
    path = workdir / "scenarios" / f"{Path(name).stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep.scenarios[name], sort_keys=False))
    return str(path)


def _restore(checkpoint: tune.Checkpoint, workdir: Path) -> Path:
    """Copy the run directory held by ``checkpoint`` into ``workdir``."""
    with tempfile.TemporaryDirectory(prefix="mecrl-restore-") as folder:
        checkpoint.to_directory(folder)
        (run_dir,) = Path(folder).iterdir()
        target = workdir / run_dir.name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(run_dir, target)
    return target
