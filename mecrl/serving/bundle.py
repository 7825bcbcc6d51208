"""Reading a policy bundle: manifest, scenario and ONNX model, checked.

Loading needs onnxruntime, not torch. A bundle is refused, with the reason,
when its model file's SHA-256 or its scenario's config hash differ from
the manifest's, when its format is unknown, or when its observation layout
is not the one this mecrl builds for the scenario.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mecrl.config import from_dict, load_file
from mecrl.datasets.paths import file_sha256
from mecrl.envs.observation import CandidateView
from mecrl.scenario import Scenario, ScenarioConfig

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "mecrl-policy-bundle/1"
"""Format name and version written in every manifest."""

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SCENARIO_FILE = "scenario.yaml"


class BundleError(ValueError):
    """A bundle is missing, damaged or does not match its manifest."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle, ready to act."""

    path: Path
    """The bundle folder."""
    manifest: dict[str, Any]
    """The manifest as written by the export."""
    scenario: Scenario
    """The scenario the policy was trained on, built."""
    view: CandidateView
    """Candidates, masks and observations of the scenario's services."""
    session: ort.InferenceSession
    """The ONNX model."""

    @property
    def name(self) -> str:
        """The model's name in the inference protocol: the run's name."""
        return str(self.manifest["run"])

    @property
    def algorithm(self) -> str:
        """The training algorithm."""
        return str(self.manifest["algorithm"])

    def act(
        self, observation: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the allowed action and the model's proposal, (N,) each.

        Args:
            observation: (N, size) float32 observations.
            mask: (N, K) bool masks; candidate 0 (stay) must be allowed.
        """
        action, proposed = self.session.run(
            None, {"observation": observation, "mask": mask}
        )
        return action, proposed


def load_bundle(path: str | Path) -> Bundle:
    """Read and check the bundle at ``path``.

    Raises:
        BundleError: If a file is missing, a hash differs from the manifest,
            or the layout does not match the scenario (the message says which).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    model_file = path / str(manifest["model"]["file"])
    if not model_file.is_file():
        raise BundleError(f"bundle {str(path)!r} has no model file {model_file.name}")
    actual = file_sha256(model_file)
    if actual != manifest["model"]["sha256"]:
        raise BundleError(
            f"bundle {str(path)!r}: {model_file.name} has SHA-256 {actual}, the "
            f"manifest says {manifest['model']['sha256']}: the model was changed "
            "after export; refusing to load it"
        )
    scenario = _read_scenario(path, manifest)
    view = _check_layout(manifest, scenario)
    options = ort.SessionOptions()
    # one small network per request: threads cost more than they give
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BundleError(f"onnxruntime cannot load {model_file}: {exc}") from None
    logger.info("loaded bundle %s (%s)", path, manifest["algorithm"])
    return Bundle(path, manifest, scenario, view, session)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise BundleError(f"{str(path)!r} is not a bundle: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(
            f"{file}: format {found!r} is not {BUNDLE_FORMAT!r}, the one this "
            "mecrl reads"
        )
    return manifest


def _read_scenario(path: Path, manifest: dict[str, Any]) -> Scenario:
    recorded = manifest["scenario"]
    file = path / str(recorded["file"])
    if not file.is_file():
        raise BundleError(f"bundle {str(path)!r} has no scenario file {file.name}")
    # hashed as written: reading the file makes a calibration path absolute
    written = from_dict(ScenarioConfig, load_file(file))
    digest = written.digest()
    if digest != recorded["config_sha256"]:
        raise BundleError(
            f"bundle {str(path)!r}: {file.name} has config SHA-256 {digest}, the "
            f"manifest says {recorded['config_sha256']}; refusing to load it"
        )
    if written.calibration is not None:
        calibration = path / written.calibration
        if not calibration.is_file():
            raise BundleError(f"bundle {str(path)!r} has no {written.calibration}")
        actual = file_sha256(calibration)
        if actual != recorded.get("calibration_sha256"):
            raise BundleError(
                f"bundle {str(path)!r}: {written.calibration} has SHA-256 "
                f"{actual}, the manifest says {recorded.get('calibration_sha256')}; "
                "refusing to load it"
            )
    return Scenario(ScenarioConfig.from_file(file))


def _check_layout(manifest: dict[str, Any], scenario: Scenario) -> CandidateView:
    observation = manifest["observation"]
    global_sites = manifest["actions"]["space"] == "sites"
    view = CandidateView(
        scenario, None if global_sites else observation["n_candidates"]
    )
    if tuple(observation["features"]) != view.layout.features:
        raise BundleError(
            f"the bundle's features {observation['features']} are not what this "
            f"mecrl builds for its scenario, {list(view.layout.features)}"
        )
    if view.layout.size != observation["size"]:
        raise BundleError(
            f"the bundle's observations have {observation['size']} entries; "
            f"this mecrl builds {view.layout.size} for its scenario"
        )
    return view
