"""The Wang et al. reproduction script runs both documented ways."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mecrl.datasets import DATA_DIR_ENV

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "entry",
    [["-m", "experiments.wang2019.run"], ["experiments/wang2019/run.py"]],
    ids=["module", "script"],
)
def test_the_script_writes_its_table_and_plot(
    data_dir: Path, tmp_path: Path, entry: list[str]
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    command = [
        sys.executable,
        *entry,
        "--data-dir",
        str(data_dir),
        "--services",
        "3",
        "--slots",
        "30",
        "--out",
        str(tmp_path),
    ]

    result = subprocess.run(
        command,
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| hindsight",
        "| never migrate",
        "| always migrate (follow)",
        "| myopic",
        "| MDP threshold (mdp)",
    ]
    ratios = [float(row.split(" | ")[2]) for row in rows[1:]]
    assert ratios[0] == 1.0
    assert min(ratios) >= 1.0
    assert (tmp_path / "ratios.png").read_bytes().startswith(b"\x89PNG")


def test_the_script_says_where_to_find_the_data(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}

    result = subprocess.run(
        [sys.executable, "-m", "experiments.wang2019.run", "--out", str(tmp_path)],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2
    assert DATA_DIR_ENV in result.stderr
