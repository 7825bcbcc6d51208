"""Figures of training runs."""

from pathlib import Path

import pytest
from matplotlib.image import imread

from mecrl.cli import main
from mecrl.plot import plot_runs, run_labels
from mecrl.train import RunDirectory

FIGURES = ["learning_curve.png", "cost_breakdown.png", "site_map.png"]


def test_plot_runs_writes_every_figure(tiny_run: Path, tmp_path: Path) -> None:
    written = plot_runs([tiny_run, tiny_run], tmp_path / "figures")

    assert [path.name for path in written] == FIGURES
    for path in written:
        image = imread(path)
        assert image.shape[0] > 400
        assert image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_runs_sharing_algorithm_and_env_are_labelled_by_name(tiny_run: Path) -> None:
    run = RunDirectory.open(tiny_run)

    assert run_labels([run]) == ["maskable_ppo (single)"]
    assert run_labels([run, run]) == [run.name, run.name]


def test_cli_plot_prints_the_files(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["plot", str(tiny_run), "--out", str(tmp_path), "--seeds", "3"])

    out = capsys.readouterr().out
    assert status == 0
    for name in FIGURES:
        assert f"wrote {tmp_path / name}" in out


def test_cli_plot_rejects_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["plot", str(tmp_path), "--out", str(tmp_path / "out")])

    assert status == 2
    assert "is not a run directory" in capsys.readouterr().err
