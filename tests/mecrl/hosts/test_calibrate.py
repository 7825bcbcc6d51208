"""Calibration: the fit, the file the simulator loads, and the command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from agentkit import criu_works, missing_tools

from mecrl.cli import main
from mecrl.config import from_dict, to_dict
from mecrl.hosts.backend import HostsConfig
from mecrl.hosts.calibrate import FITTED, Sample, fit, predict_s, wire_s, write
from mecrl.hosts.journal import Journal
from mecrl.problem import move_terms
from mecrl.runtimes import DEFAULT_PROFILES, RuntimeProfile, load_profiles
from mecrl.scenario import Scenario, ScenarioConfig
from mecrl.testbed import Testbed, TestbedSpec

TRUE = dataclasses.replace(
    DEFAULT_PROFILES["runc"],
    start_s=0.15,
    stop_s=0.05,
    checkpoint_s=0.2,
    checkpoint_s_per_mb=0.01,
    restore_s=0.25,
    restore_s_per_mb=0.02,
    transfer_overhead_s=0.3,
    transfer_s_per_mb=0.004,
)
BANDWIDTH_MBPS = 200.0


def synthetic(profile: RuntimeProfile, mode: str, state_mb: float) -> Sample:
    if mode == "cold":
        freeze, start = profile.stop_s, profile.start_s
    else:
        freeze = profile.checkpoint_s + profile.checkpoint_s_per_mb * state_mb
        start = profile.restore_s + profile.restore_s_per_mb * state_mb
    copy = (
        profile.transfer_overhead_s
        + profile.transfer_s_per_mb * state_mb
        + wire_s(state_mb, BANDWIDTH_MBPS)
    )
    return Sample(mode, state_mb, freeze + copy + start, freeze, copy, start, 0)


def test_the_fit_recovers_the_profile_that_made_the_samples() -> None:
    samples = [
        synthetic(TRUE, mode, size)
        for size in (1.0, 8.0, 32.0)
        for mode in ("cold", "live")
    ]
    fitted = fit(samples, BANDWIDTH_MBPS)
    for field in FITTED:
        assert getattr(fitted, field) == pytest.approx(getattr(TRUE, field), abs=1e-9)
    for sample in samples:
        predicted = predict_s(fitted, sample.mode, sample.state_mb, BANDWIDTH_MBPS)
        assert predicted == pytest.approx(sample.downtime_s)


def test_the_fit_never_gives_negative_times() -> None:
    # a restore that gets faster with size is noise: no negative rate
    samples = [
        Sample("live", 1.0, 1.0, 0.2, 0.3, 0.5, 0),
        Sample("live", 8.0, 1.1, 0.2, 0.5, 0.4, 0),
    ]
    fitted = fit(samples, BANDWIDTH_MBPS)
    assert fitted.restore_s_per_mb == 0.0
    assert fitted.restore_s == pytest.approx(0.45)
    assert min(dataclasses.astuple(fitted)[:-1]) >= 0.0


def test_the_simulator_loads_the_calibration_file(tmp_path: Path) -> None:
    path = tmp_path / "calibration.yaml"
    write(path, TRUE, "synthetic")
    assert load_profiles(path).profiles["runc"] == TRUE
    config = {
        "name": "calibrated",
        "calibration": str(path),
        "topology": {
            "kind": "line",
            "params": {"n_sites": 2, "bandwidth_mbps": BANDWIDTH_MBPS},
        },
        "mobility": {"kind": "random-walk", "params": {"move_prob": 0.5}},
        "sites": {"layer_cache_prob": 1.0},
        "services": [
            {"name": "cold", "state_mb": 8.0},
            {
                "name": "live",
                "migration": "precopy",
                "state_mb": 8.0,
                "dirty_mb_per_s": 1e9,
            },
        ],
    }
    scenario = Scenario(from_dict(ScenarioConfig, config))
    terms = move_terms(scenario, np.array([0, 1]), np.array([0, 0]), np.array([1, 1]))
    bandwidth = float(scenario.network.bandwidth_mbps[0, 1])
    assert terms["downtime"].tolist() == pytest.approx(
        [predict_s(TRUE, m, 8.0, bandwidth) for m in ("cold", "live")]
    )


@pytest.mark.slow
def test_mecrl_calibrate_measures_a_testbed_and_writes_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    modes = "cold,live" if criu_works() else "cold"
    out = tmp_path / "calibration.yaml"
    argv = [
        "calibrate",
        "--out",
        str(out),
        "--sizes",
        "1,4",
        "--held-out",
        "2",
        "--repeats",
        "1",
        "--modes",
        modes,
        "--workdir",
        str(tmp_path / "testbed"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for mode in modes.split(","):
        assert f"| {mode} | 1 | 1 |" in printed
        assert f"| {mode} | 4 | 1 |" in printed
        held_out = next(
            line for line in printed.splitlines() if f"| {mode} | 2 |" in line
        )
        assert held_out.endswith("| held out |")
    profile = load_profiles(out).profiles["runc"]
    assert profile.start_s > 0.0
    assert profile != DEFAULT_PROFILES["runc"]


@pytest.mark.slow
def test_mecrl_calibrate_measures_the_hosts_of_a_hosts_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    spec = from_dict(
        TestbedSpec,
        {
            "hosts": [{"name": "x1"}, {"name": "x2"}, {"name": "x3"}],
            "links": [
                {"hosts": ["x1", "x2"], "delay_ms": 1.0, "bandwidth_mbps": 100},
                {"hosts": ["x2", "x3"], "delay_ms": 1.0, "bandwidth_mbps": 100},
            ],
            "user": {"access_host": "x1"},
        },
    )
    with Testbed.up(spec, tmp_path / "testbed") as testbed:
        hosts = HostsConfig.from_testbed(testbed, tmp_path / "journal", ())
        path = tmp_path / "hosts.yaml"
        path.write_text(yaml.safe_dump(to_dict(hosts)))
        out = tmp_path / "calibration.yaml"
        argv = [
            "calibrate",
            "--hosts",
            str(path),
            "--pair",
            "x3,x1",
            "--out",
            str(out),
            "--sizes",
            "1",
            "--repeats",
            "2",
            "--modes",
            "cold",
            "--bandwidth-mbps",
            "100",
        ]
        assert main(argv) == 0
        # both moves went over the two links between x3 and x1
        journal = Journal(tmp_path / "journal").migrations()
        assert [(m.begin["source"], m.begin["target"]) for m in journal] == [
            ("x3", "x1"),
            ("x1", "x3"),
        ]
        assert all(m.finished for m in journal)
    assert load_profiles(out).profiles["runc"].start_s > 0.0
    wrong = ["calibrate", "--hosts", str(path), "--pair", "x1,nope", "--out", str(out)]
    assert main(wrong) == 2
    assert "--pair must name two hosts" in capsys.readouterr().err
