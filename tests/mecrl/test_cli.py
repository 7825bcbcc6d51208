"""The ``mecrl`` command line (``bench`` is left to the benchmark job)."""

from pathlib import Path

import pytest
import yaml

from mecrl import __version__
from mecrl.cli import main
from mecrl.scenario import SCENARIOS, load_config


def test_scenario_list_prints_every_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["scenario", "list"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    rows = {line.split()[0]: line for line in lines}
    assert list(rows) == SCENARIOS.names()
    assert {"city-grid", "hex-2d", "wang-1d"} <= set(rows)
    # each line carries the first sentence of the description, whole
    assert "61 hexagonal cells" in rows["city-grid"]
    assert "Wang et al." in rows["wang-1d"]
    assert "ring of 21 cells" in rows["wang-1d"]


def test_scenario_show_prints_the_config_and_its_facts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["scenario", "show", "city-grid"])

    out = capsys.readouterr().out
    assert status == 0
    assert "edge_sites: 61" in out
    document = yaml.safe_load(out)
    config = load_config("city-grid")
    assert document["config"] == config.to_dict()
    facts = document["facts"]
    assert facts["cloud"] is True
    assert facts["zones"] == ["west", "central", "east", "cloud"]
    assert facts["config_sha256"] == config.digest()
    assert facts["max_rtt_ms"] >= 60.0  # the cloud is 60 ms away


def test_scenario_show_accepts_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_config("wang-1d").to_dict()
    data["name"] = "my-ring"
    path = tmp_path / "ring.yaml"
    path.write_text(yaml.safe_dump(data))

    status = main(["scenario", "show", str(path)])

    document = yaml.safe_load(capsys.readouterr().out)
    assert status == 0
    assert document["config"]["name"] == "my-ring"
    assert document["facts"]["edge_sites"] == 21


@pytest.mark.parametrize(
    "argv",
    [
        ["scenario", "show", "atlantis"],
        ["scenario", "export", "atlantis", "--out", "unused.json"],
        ["evaluate", "--scenario", "atlantis"],
    ],
)
def test_unknown_scenario_exits_2_and_names_the_known_ones(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(argv)

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert "unknown scenario 'atlantis'" in captured.err
    assert f"known: {', '.join(SCENARIOS.names())}" in captured.err
    assert "city-grid, hex-2d" in captured.err


def test_invalid_config_file_exits_2_and_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_config("wang-1d").to_dict()
    data["discount"] = 1.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    status = main(["scenario", "show", str(path)])

    assert status == 2
    assert "discount: must be within [0, 1)" in capsys.readouterr().err


def test_export_with_no_services_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.json"

    status = main(
        ["scenario", "export", "wang-1d", "--services", "0", "--out", str(path)]
    )

    assert status == 2
    assert "n_services must be >= 1" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.parametrize(
    "argv", [[], ["scenario"], ["scenario", "export", "wang-1d"], ["teleport"]]
)
def test_malformed_command_line_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)

    assert info.value.code == 2
    assert "usage: mecrl" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])

    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == __version__
