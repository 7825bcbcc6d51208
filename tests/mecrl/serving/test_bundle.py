"""Loading bundles: a bundle that differs from its manifest is refused."""

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mecrl.runtimes import RUNTIME_NAMES
from mecrl.scenario import load_config
from mecrl.serving.bundle import BundleError, load_bundle
from mecrl.serving.export import export_run

TinyRun = Callable[[Path, Path, str], Path]


@pytest.fixture
def copy(bundles: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundles["maskable_ppo"], target)
    return target


def test_an_intact_bundle_loads(copy: Path) -> None:
    bundle = load_bundle(copy)

    assert bundle.algorithm == "maskable_ppo"
    assert bundle.scenario.config.name == "city-short"


def test_a_changed_model_is_refused(copy: Path) -> None:
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(BundleError, match=r"model\.onnx has SHA-256 .* manifest says"):
        load_bundle(copy)


def test_a_changed_scenario_is_refused(copy: Path) -> None:
    text = (copy / "scenario.yaml").read_text()
    (copy / "scenario.yaml").write_text(
        text.replace("episode_slots: 30", "episode_slots: 31")
    )

    with pytest.raises(BundleError, match="config SHA-256"):
        load_bundle(copy)


def test_an_unknown_format_is_refused(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "something-else/9"
    (copy / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(BundleError, match="format 'something-else/9'"):
        load_bundle(copy)


def test_a_calibration_file_travels_with_the_bundle_and_is_checked(
    tmp_path: Path, train_tiny: TinyRun
) -> None:
    (tmp_path / "lab.yaml").write_text(
        "source: lab hosts\nruntimes:\n  kata: {start_s: 1.4}\n"
    )
    config = dataclasses.replace(
        load_config("wang-1d"),
        name="calibrated",
        episode_slots=20,
        calibration="lab.yaml",
    )
    scenario = tmp_path / "calibrated.yaml"
    scenario.write_text(yaml.safe_dump(config.to_dict()))
    run = train_tiny(tmp_path / "runs", scenario, "ppo")
    export_run(run, tmp_path / "bundle")

    bundle = load_bundle(tmp_path / "bundle")
    assert (
        bundle.scenario.runtimes.column("start_s")[RUNTIME_NAMES.index("kata")] == 1.4
    )

    (tmp_path / "bundle" / "calibration.yaml").write_text(
        "source: lab hosts\nruntimes:\n  kata: {start_s: 9.9}\n"
    )
    with pytest.raises(BundleError, match=r"calibration\.yaml has SHA-256"):
        load_bundle(tmp_path / "bundle")


def test_a_folder_without_manifest_is_no_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)


def test_mecrl_serve_refuses_a_tampered_bundle(copy: Path) -> None:
    with (copy / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    result = subprocess.run(
        [sys.executable, "-m", "mecrl.cli", "serve", str(copy), "--no-auth"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    assert "refusing to load it" in result.stderr
