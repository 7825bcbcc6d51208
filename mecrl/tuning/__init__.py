"""Ray Tune sweeps over training configs: ``mecrl tune``.

A sweep trains many ``mecrl.train`` runs (seeds, hyperparameters, any
training-config field) as Ray Tune trials, on a local Ray or on a cluster,
stops hopeless ones early (ASHA), resumes after an interruption, and
exports the best trial as a run directory. See ``experiments/tune/README.md``.

| module | what |
|---|---|
| :mod:`mecrl.tuning.config` | the sweep config and its checks (no Ray needed) |
| :mod:`mecrl.tuning.trial` | one trial: a training run that reports to Tune |
| :mod:`mecrl.tuning.experiment` | run, resume, summarise, export |
| :mod:`mecrl.tuning.bench` | trials per hour and timesteps/s per trial |

Ray is an optional extra (``pip install 'mecrl[train,ray]'``); only
:mod:`mecrl.tuning.config` imports without it.
"""

from mecrl.tuning.config import (
    Dimension,
    Sweep,
    SweepConfig,
    load_sweep_config,
    resolve_sweep,
)

__all__ = ["Dimension", "Sweep", "SweepConfig", "load_sweep_config", "resolve_sweep"]
