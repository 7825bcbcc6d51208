"""Runtime profiles and calibration files."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from mecrl.config import ConfigError
from mecrl.problem import move_terms
from mecrl.runtimes import (
    DEFAULT_PROFILES,
    RUNTIME_NAMES,
    RuntimeProfile,
    load_profiles,
)
from mecrl.scenario import Scenario, load_config


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_follow_the_design_table() -> None:
    runc, kata = DEFAULT_PROFILES["runc"], DEFAULT_PROFILES["kata"]

    assert RUNTIME_NAMES == ("runc", "kata")
    assert 0.2 <= runc.start_s <= 1.0
    assert 1.2 <= kata.start_s <= 2.5
    assert 130.0 <= kata.memory_overhead_mb <= 300.0
    assert runc.checkpoint
    assert not kata.checkpoint
    assert kata.exposure < runc.exposure


def test_without_calibration_the_table_holds_the_defaults() -> None:
    table = load_profiles(None)

    assert table.profiles == DEFAULT_PROFILES
    np.testing.assert_array_equal(
        table.column("start_s"),
        [DEFAULT_PROFILES["runc"].start_s, DEFAULT_PROFILES["kata"].start_s],
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("calibration.yaml", "source: lab hosts\nruntimes:\n  kata: {start_s: 1.4}\n"),
        ("calibration.toml", 'source = "lab hosts"\n[runtimes.kata]\nstart_s = 1.4\n'),
    ],
)
def test_calibration_overrides_only_the_fields_it_names(
    tmp_path: Path, name: str, text: str
) -> None:
    table = load_profiles(write(tmp_path, name, text))

    assert table.profiles["kata"] == dataclasses.replace(
        DEFAULT_PROFILES["kata"], start_s=1.4
    )
    assert table.profiles["runc"] == DEFAULT_PROFILES["runc"]
    np.testing.assert_array_equal(
        table.column("start_s"), [DEFAULT_PROFILES["runc"].start_s, 1.4]
    )
    for field in dataclasses.fields(RuntimeProfile):
        if field.name != "start_s":
            np.testing.assert_array_equal(
                table.column(field.name), load_profiles(None).column(field.name)
            )


def test_defaults_are_not_modified_by_a_calibration(tmp_path: Path) -> None:
    before = dataclasses.replace(DEFAULT_PROFILES["kata"])
    load_profiles(write(tmp_path, "c.yaml", "runtimes: {kata: {start_s: 9.0}}\n"))

    assert DEFAULT_PROFILES["kata"] == before
    assert load_profiles(None).profiles["kata"].start_s == before.start_s


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("runtimes: {gvisor: {start_s: 1.0}}\n", "runtimes.gvisor", "unknown runtime"),
        ("runtimes: {kata: {boot_s: 1.0}}\n", "runtimes.kata.boot_s", "unknown key"),
        (
            "runtimes: {kata: {start_s: -1.0}}\n",
            "runtimes.kata.start_s",
            "must be >= 0",
        ),
        (
            "runtimes: {runc: {checkpoint: maybe}}\n",
            "runtimes.runc.checkpoint",
            "expected true or false",
        ),
        ("runtimes: {kata: 1.4}\n", "runtimes.kata", "expected a mapping"),
        ("runtimes: [kata]\n", "runtimes", "expected a mapping"),
        ("kata: {start_s: 1.4}\n", "kata", "unknown key"),
    ],
)
def test_bad_calibration_names_the_field(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    path = write(tmp_path, "calibration.yaml", text)

    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: {message}") as info:
        load_profiles(path)

    assert info.value.field == field


def test_unknown_runtime_error_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "runtimes: {gvisor: {start_s: 1.0}}\n")

    with pytest.raises(ConfigError, match="known: runc, kata"):
        load_profiles(path)


def test_scenario_uses_its_calibration(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "runtimes:\n  kata: {start_s: 1.4, memory_overhead_mb: 200.0}\n",
    )
    config = load_config("city-grid")
    default = Scenario(config)

    calibrated = Scenario(dataclasses.replace(config, calibration=str(path)))

    assert calibrated.runtimes.profiles["kata"].start_s == 1.4
    # vehicle-assist (class 1) runs kata: 1024 MB plus the pod overhead
    assert calibrated.classes.memory_mb[1] == 1024.0 + 200.0
    kata_overhead_mb = DEFAULT_PROFILES["kata"].memory_overhead_mb
    assert default.classes.memory_mb[1] == 1024.0 + kata_overhead_mb
    # runc classes are untouched
    np.testing.assert_array_equal(
        calibrated.classes.memory_mb[[0, 2]], default.classes.memory_mb[[0, 2]]
    )


def test_calibrated_start_time_shifts_kata_cold_downtime(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "runtimes: {kata: {start_s: 1.4}}\n")
    config = load_config("city-grid")
    default = Scenario(config)
    calibrated = Scenario(dataclasses.replace(config, calibration=str(path)))
    cls = np.array([0, 1, 2])  # runc precopy, kata cold, runc postcopy
    source, target = np.zeros(3, np.int64), np.full(3, 5)

    before = move_terms(default, cls, source, target)["downtime"]
    after = move_terms(calibrated, cls, source, target)["downtime"]

    shift = 1.4 - DEFAULT_PROFILES["kata"].start_s
    np.testing.assert_allclose(after - before, [0.0, shift, 0.0], atol=1e-12)
