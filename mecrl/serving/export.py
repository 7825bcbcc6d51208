"""Export of a trained run to a bundle: ONNX graph, scenario and manifest.

The graph reproduces :class:`mecrl.agents.learned.LearnedPolicy` in
deterministic mode, the mask included, so that the server needs neither
torch nor Stable-Baselines3:

| algorithm | ``action`` output |
|---|---|
| ``maskable_ppo`` | argmax of the action probabilities, masked logits set |
| | to -1e8 as sb3-contrib does |
| ``ppo``, ``a2c`` | argmax of the probabilities; where the mask forbids it, |
| | the candidate that keeps the service where it runs |
| ``dqn`` | argmax of the Q-values; the same fallback |

The fallback is :class:`mecrl.agents.baselines.NeverMigrate`'s rule: the
first allowed candidate zero hops from the current site, which is candidate
0 with K candidates and the current site's index when every site is a
candidate. The second output, ``proposed``, is the model's own choice
before the mask, so a server can count refused proposals.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor

from mecrl import __version__
from mecrl.agents.learned import ALGORITHMS
from mecrl.config import from_dict
from mecrl.datasets.paths import file_sha256
from mecrl.envs.observation import FEATURES, ObservationLayout
from mecrl.evaluate import action_space_for, policy_context
from mecrl.scenario import ScenarioConfig
from mecrl.serving.bundle import (
    BUNDLE_FORMAT,
    MANIFEST_FILE,
    MODEL_FILE,
    SCENARIO_FILE,
)
from mecrl.train import RunDirectory

logger = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graph; onnxruntime 1.18 and later run it."""

MASKED_LOGIT = -1e8
"""What sb3-contrib puts in place of a masked logit."""

_HOPS_FROM_CURRENT = FEATURES.index("hops_from_current_10")


class MaskedPolicyGraph(torch.nn.Module):
    """The deterministic action of a trained model, as one torch module.

    Args:
        model: The trained SB3 model.
        layout: Where each feature sits in an observation.
        masked: Whether the model reads the mask (MaskablePPO).
    """

    policy: Any
    """The SB3 policy: its submodules are reached by name, untyped."""

    def __init__(
        self, model: BaseAlgorithm, layout: ObservationLayout, masked: bool
    ) -> None:
        super().__init__()
        self.policy = model.policy
        self.q_values = isinstance(model, DQN)
        self.masked = masked
        self.n_candidates = layout.n_candidates
        self.n_features = len(layout.features)

    def scores(self, observation: torch.Tensor) -> torch.Tensor:
        """Return the logits (actor-critics) or Q-values (DQN) of each action."""
        if self.q_values:
            q_net = self.policy.q_net
            features = q_net.extract_features(observation, q_net.features_extractor)
            return q_net.q_net(features)
        policy = self.policy
        features = policy.extract_features(observation, policy.pi_features_extractor)
        latent = policy.mlp_extractor.forward_actor(features)
        return policy.action_net(latent)

    def forward(
        self, observation: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the allowed action and the model's own proposal, (N,) each."""
        scores = self.scores(observation)
        if self.masked:
            scores = torch.where(mask, scores, torch.full_like(scores, MASKED_LOGIT))
        proposed = self._mode(scores)
        if self.masked:
            return proposed, proposed
        allowed = torch.gather(mask, 1, proposed[:, None])[:, 0]
        return torch.where(allowed, proposed, self._stay(observation, mask)), proposed

    def _mode(self, scores: torch.Tensor) -> torch.Tensor:
        if self.q_values:
            return torch.argmax(scores, dim=1)
        # as torch's Categorical: normalised logits, then probabilities
        logits = scores - torch.logsumexp(scores, dim=1, keepdim=True)
        return torch.argmax(torch.softmax(logits, dim=1), dim=1)

    def _stay(self, observation: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        table = observation[:, :-1].reshape(-1, self.n_candidates, self.n_features)
        here = mask & (table[:, :, _HOPS_FROM_CURRENT] == 0)
        return torch.argmax(here.to(torch.int32), dim=1)


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the bundle of a run's best model (or latest checkpoint) to ``out``.

    Args:
        run_dir: The training run directory.
        out: The bundle folder to create; it must not exist or be empty.

    Returns:
        The manifest file.

    Raises:
        FileNotFoundError: If ``run_dir`` is no run directory or holds no model.
        ValueError: If ``out`` is a non-empty folder, or the model is not one
            the graph can reproduce (an image or non-flat observation).
    """
    run = RunDirectory.open(run_dir)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"bundle folder {str(out)!r} exists and is not empty")
    config = run.config()
    scenario = run.scenario()
    context = policy_context(scenario)
    spec = ALGORITHMS.get(config.algorithm)
    model_file = run.model_file()
    model = spec.load(model_file)
    _check_model(model, context.layout)

    out.mkdir(parents=True, exist_ok=True)
    graph = MaskedPolicyGraph(model, context.layout, spec.masked).eval()
    _write_onnx(graph, context.layout, out / MODEL_FILE)
    scenario_config = _copy_scenario(scenario.config, out)
    manifest = _manifest(
        run,
        config.algorithm,
        scenario_config,
        context.layout,
        action_space_for(scenario),
    )
    if scenario_config.calibration is not None:
        calibration = out / scenario_config.calibration
        manifest["scenario"]["calibration_sha256"] = file_sha256(calibration)
    manifest["model"]["source"] = model_file.name
    manifest["model"]["sha256"] = file_sha256(out / MODEL_FILE)
    path = out / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s (%s) to %s", run.name, config.algorithm, out)
    return path


def _check_model(model: BaseAlgorithm, layout: ObservationLayout) -> None:
    observation, action = model.observation_space, model.action_space
    if not isinstance(observation, spaces.Box) or is_image_space(observation):
        raise ValueError(f"cannot export a model observing {observation}")
    if observation.shape != (layout.size,) or not (
        isinstance(action, spaces.Discrete) and action.n == layout.n_candidates
    ):
        raise ValueError(
            f"the model sees {observation.shape} and acts over {action}; its "
            f"scenario needs ({layout.size},) and Discrete({layout.n_candidates})"
        )
    policy: Any = model.policy
    extractor = (
        policy.q_net.features_extractor
        if isinstance(model, DQN)
        else policy.pi_features_extractor
    )
    if not isinstance(extractor, FlattenExtractor):
        raise ValueError(
            f"cannot export a features extractor {type(extractor).__name__}; "
            "only SB3's default FlattenExtractor is reproduced"
        )


def _write_onnx(
    graph: MaskedPolicyGraph, layout: ObservationLayout, path: Path
) -> None:
    observation = torch.zeros((2, layout.size), dtype=torch.float32)
    mask = torch.ones((2, layout.n_candidates), dtype=torch.bool)
    # torch 2.13's default (dynamo) exporter needs the onnxscript package; the
    # TorchScript one needs nothing more. torch has marked it deprecated, so a
    # later torch may need dynamo=True (and onnxscript) here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (observation, mask),
            str(path),
            input_names=["observation", "mask"],
            output_names=["action", "proposed"],
            dynamic_axes={
                name: {0: "batch"}
                for name in ("observation", "mask", "action", "proposed")
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _copy_scenario(config: ScenarioConfig, out: Path) -> ScenarioConfig:
    """Write the scenario config into the bundle, with its calibration file."""
    data = config.to_dict()
    if config.calibration is not None:
        source = Path(config.calibration)
        target = out / f"calibration{source.suffix}"
        shutil.copyfile(source, target)
        data["calibration"] = target.name
    (out / SCENARIO_FILE).write_text(
        yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
    )
    return from_dict(ScenarioConfig, data)


def _manifest(
    run: RunDirectory,
    algorithm: str,
    scenario: ScenarioConfig,
    layout: ObservationLayout,
    action_space: str,
) -> dict[str, Any]:
    stay = (
        "candidate 0 keeps the service where it runs"
        if action_space == "candidates"
        else "the index of the current site keeps the service there"
    )
    meaning = (
        "action i > 0 moves to the i-th candidate site: the K - 1 statically "
        "feasible sites nearest the user, by access latency"
        if action_space == "candidates"
        else "action i moves to site i"
    )
    return {
        "format": BUNDLE_FORMAT,
        "mecrl_version": __version__,
        "run": run.name,
        "algorithm": algorithm,
        "reads_mask": ALGORITHMS.get(algorithm).masked,
        "scenario": {
            "name": scenario.name,
            "file": SCENARIO_FILE,
            "config_sha256": scenario.digest(),
        },
        "observation": {
            "features": list(layout.features),
            "n_candidates": layout.n_candidates,
            "size": layout.size,
            "dtype": "float32",
            "order": "candidate-major: feature f of candidate k at k * F + f; "
            "the last entry is the fraction of the episode elapsed",
            "normalisation": {
                "kind": "none",
                "note": "features are scaled where they are built "
                "(mecrl.envs.observation) and the SB3 policy applies no "
                "further normalisation to a flat Box observation",
            },
        },
        "actions": {
            "space": action_space,
            "n": layout.n_candidates,
            "stay": stay,
            "meaning": meaning,
        },
        "model": {
            "file": MODEL_FILE,
            "opset": OPSET,
            "inputs": {
                "observation": {"dtype": "float32", "shape": ["batch", layout.size]},
                "mask": {"dtype": "bool", "shape": ["batch", layout.n_candidates]},
            },
            "outputs": {
                "action": {"dtype": "int64", "shape": ["batch"]},
                "proposed": {"dtype": "int64", "shape": ["batch"]},
            },
        },
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = ("torch", "stable-baselines3", "sb3-contrib", "onnx")
    return {name: metadata.version(name) for name in names} | {"numpy": np.__version__}
