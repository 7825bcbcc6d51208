"""Sweeps with Ray Tune: config checks, and a real two-node cluster.

The cluster runs in a private network and PID namespace that holds only the
loopback interface, so that Ray, which otherwise hands its nodes the
machine's outward address, cannot listen or connect anywhere but
127.0.0.1; killing the namespace's first process ends every process in it.
"""

import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mecrl.cli import main
from mecrl.config import ConfigError
from mecrl.evaluate import evaluate_seeds
from mecrl.train import RunDirectory
from mecrl.tuning import load_sweep_config
from mecrl.tuning.config import SweepConfig, resolve_sweep

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "tune"
BIN = Path(sys.executable).parent
RAY_PORT = 6379  # the namespace is private: nothing else can hold the port

# The namespace's first process must reap the processes it inherits, as an
# init does: `ray stop` waits for killed processes until they are reaped.
REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""
OUTWARD_ADDRESS = "10.99.0.1"  # on a veth pair inside a private namespace

TinyConfig = Callable[..., dict[str, Any]]


def write_sweep(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_sweep(tiny_config: TinyConfig, root: Path, **changes: Any) -> dict[str, Any]:
    """A sweep of 4 seeds of the tiny training run, evaluated every 256 steps."""
    train = tiny_config(
        root / "runs",
        total_timesteps=512,
        eval={
            "freq_steps": 256,
            "services": 4,
            "seeds": [0],
            "baselines": ["never", "follow"],
        },
        checkpoint_freq_steps=256,
    )
    data: dict[str, Any] = {
        "name": "tiny",
        "train": train,
        "search_space": {"seed": {"grid": [0, 1, 2, 3]}},
        "early_stopping": {"enabled": False},
        "storage": str(root / "storage"),
    }
    data.update(changes)
    return data


# --- config checks: no Ray needed ---------------------------------------------


@pytest.mark.parametrize(
    ("search_space", "message"),
    [
        (
            {"env.n_env": {"grid": [1]}},
            r"search_space\.env\.n_env: 'n_env' is not a field of env; "
            r"valid: kind, n_envs, n_services, coupled",
        ),
        (
            {"learning_rate": {"grid": [1e-3]}},
            r"search_space\.learning_rate: 'learning_rate' is not a field of "
            r"the training config; valid: name, algorithm",
        ),
        ({"env": {"grid": [1]}}, r"search_space\.env: env is a group of fields"),
        (
            {"seed.x": {"grid": [1]}},
            r"search_space\.seed\.x: seed has no fields below it",
        ),
        (
            {"torch_threads": {"grid": [2]}},
            r"search_space\.torch_threads: set by mecrl tune from resources\.cpus",
        ),
        (
            {"seed": {"normal": [0, 1]}},
            r"search_space\.seed\.normal: unknown distribution; valid: choice, grid",
        ),
        ({"seed": [0, 1]}, r"search_space\.seed: expected a mapping with one key"),
        ({"seed": {"grid": []}}, r"search_space\.seed\.grid: expected a non-empty"),
        (
            {"hyperparameters.learning_rate": {"uniform": [1e-3]}},
            r"uniform: expected \[low, high\]",
        ),
        (
            {"hyperparameters.learning_rate": {"loguniform": [0, 1e-3]}},
            r"loguniform: low must be > 0 on a log scale",
        ),
        (
            {"hyperparameters.learning_rate": {"uniform": [1e-3, 1e-4]}},
            r"uniform: low must be below high",
        ),
    ],
)
def test_bad_search_space_fails_naming_the_field(
    search_space: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SweepConfig(search_space=search_space)


@pytest.mark.parametrize(
    ("search_space", "message"),
    [
        (
            {"total_timesteps": {"grid": [512, 0]}},
            r"search_space\.total_timesteps: rejected by the training config at "
            r"\{total_timesteps=0\}: total_timesteps: must be at least 1",
        ),
        (
            {"hyperparameters.n_step": {"grid": [64]}},
            r"search_space\.hyperparameters\.n_step: rejected .* not a parameter "
            r"of MaskablePPO",
        ),
        (
            # a random dimension is built at its bounds: a float seed fails
            {"seed": {"uniform": [0, 3]}},
            r"search_space\.seed: rejected .*seed: expected an integer, got 0\.0",
        ),
        (
            {"env.kind": {"choice": ["single", "swarm"]}},
            r"search_space\.env\.kind: rejected .*\{env\.kind='swarm'\}",
        ),
    ],
)
def test_value_the_training_config_rejects_fails_before_any_trial(
    search_space: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_sweep(SweepConfig(search_space=search_space))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resources": {"cpus": 0}}, r"resources\.cpus: must be at least 1"),
        ({"metric": "reward"}, r"metric: unknown evaluation column 'reward'"),
        ({"early_stopping": {"reduction_factor": 1}}, r"reduction_factor: must be"),
        ({"num_sample": 2}, r"num_sample: unknown key; valid keys are"),
        ({"train": {"algorithm": "sac"}}, r"train\.algorithm: must be one of"),
        ({"train": "nowhere.yaml"}, r"train: no training config file"),
    ],
)
def test_bad_sweep_file_fails_naming_the_field(
    changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = write_sweep(tmp_path / "sweep.yaml", changes)

    with pytest.raises(ConfigError, match=message):
        load_sweep_config(path)


def test_cli_unknown_search_field_exits_2_before_starting_anything(
    tmp_path: Path, tiny_config: TinyConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_sweep(tiny_config, tmp_path, search_space={"env.n_env": {"grid": [2]}})
    path = write_sweep(tmp_path / "sweep.yaml", data)

    status = main(["tune", str(path)])

    assert status == 2
    assert "search_space.env.n_env: 'n_env' is not a field of env" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "storage").exists()


def test_cli_resume_refuses_a_new_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["tune", str(tmp_path / "s.yaml"), "--resume", str(tmp_path)])

    assert status == 2
    assert "drop CONFIG" in capsys.readouterr().err


def test_example_sweep_and_its_smoke_variant_load() -> None:
    path = EXPERIMENTS / "wang-1d-sweep.yaml"

    full, smoke = load_sweep_config(path), load_sweep_config(path, smoke=True)

    assert full.n_trials == 12
    assert full.max_timesteps == 400_000
    assert full.base["scenario"] == "wang-1d"
    assert smoke.n_trials == 4
    assert smoke.max_timesteps <= 4096, "the smoke sweep must take a minute"


def test_cluster_launcher_config_passes_rays_own_checks() -> None:
    pytest.importorskip("ray", reason="needs the ray extra: pip install '.[ray]'")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((EXPERIMENTS / "cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)

    assert prepared["provider"]["type"] == "local"
    assert any("[train,ray]" in line for line in prepared["setup_commands"])


def test_sweep_resolves_the_base_config_and_scenario_files(
    tmp_path: Path, tiny_config: TinyConfig, toy_scenario: Path
) -> None:
    data = tiny_sweep(
        tiny_config,
        tmp_path,
        resources={"cpus": 2},
        overrides={"total_timesteps": 768},
        search_space={
            "seed": {"grid": [0, 1]},
            "hyperparameters.learning_rate": {"loguniform": [1e-4, 1e-3]},
        },
        num_samples=3,
    )
    sweep = load_sweep_config(write_sweep(tmp_path / "sweep.yaml", data))

    assert sweep.n_trials == 6
    assert sweep.base["torch_threads"] == 2
    assert sweep.max_timesteps == 768
    # trials on other nodes get the scenario file's content, not its path
    assert sweep.scenarios[str(toy_scenario)]["episode_slots"] == 20
    config = sweep.trial_config({"seed": 1, "hyperparameters.learning_rate": 3e-4})
    assert config.seed == 1
    assert config.hyperparameters["learning_rate"] == 3e-4
    assert config.hyperparameters["n_steps"] == 64


# --- a real cluster --------------------------------------------------------------


class Namespace:
    """A private network and PID namespace with only the loopback interface.

    Every command runs inside it through ``nsenter``. :meth:`close` kills
    ``unshare``; its child, the namespace's first process, dies with it
    (``--kill-child``), and the kernel then ends every process inside.
    """

    def __init__(self, outward: bool = False) -> None:
        self.holder = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                sys.executable,
                "-c",
                REAPER,
            ],
            start_new_session=True,
        )
        self.pid = self._first_process()
        # Ray's files (sessions, sockets, locks) stay in a folder of this
        # namespace; socket paths must stay under 108 bytes: a short name
        self.temp_dir = tempfile.mkdtemp(prefix="mecrl-ray-")
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TMPDIR": self.temp_dir,
            # every node and driver shares one token, whatever ~/.ray holds
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONUNBUFFERED": "1",
        }
        checked(self.run(["ip", "link", "set", "lo", "up"]))
        if outward:
            self._add_outward_interface()

    def _add_outward_interface(self) -> None:
        """Give the namespace a routed address, as a machine on a network has.

        A veth pair whose two ends both stay in the namespace: nothing
        leaves it, but Ray sees an address other than 127.0.0.1 to pick.
        """
        for command in (
            "ip link add mecrl0 type veth peer name mecrl1",
            "ip link set mecrl1 up",
            f"ip addr add {OUTWARD_ADDRESS}/24 dev mecrl0",
            "ip link set mecrl0 up",
            "ip route add default dev mecrl0",
        ):
            checked(self.run(command.split()))

    def _first_process(self) -> int:
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
            time.sleep(0.05)
        raise RuntimeError("unshare started no process")

    def command(self, args: list[str], cwd: Path) -> list[str]:
        return [
            "nsenter",
            f"--target={self.pid}",
            "--net",
            "--pid",
            "--mount",
            f"--wd={cwd}",
            "--",
            *args,
        ]

    def run(
        self, args: list[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args, Path.cwd()),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def popen(self, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(args, Path.cwd()),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class Cluster:
    """Two Ray nodes of one CPU each, head and worker, in a namespace."""

    namespace: Namespace
    address: str

    def mecrl(
        self, *args: str, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return self.namespace.run(
            [str(BIN / "mecrl"), *args, "--address", self.address], timeout=timeout
        )


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def need_namespaces() -> None:
    """Skip unless Ray and private namespaces (root, util-linux) are here."""
    pytest.importorskip("ray", reason="needs the ray extra: pip install '.[ray]'")
    missing = [tool for tool in ("unshare", "nsenter", "ip") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        pytest.skip("a private network namespace needs root and util-linux/iproute2")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    need_namespaces()
    namespace = Namespace()
    ray = str(BIN / "ray")
    address = f"127.0.0.1:{RAY_PORT}"
    try:
        checked(
            namespace.run(
                [
                    ray,
                    "start",
                    "--head",
                    "--node-ip-address=127.0.0.1",
                    f"--port={RAY_PORT}",
                    "--num-cpus=1",
                    "--disable-usage-stats",
                    "--include-dashboard=false",
                    f"--temp-dir={namespace.temp_dir}",
                ]
            )
        )
        checked(
            namespace.run(
                [
                    ray,
                    "start",
                    f"--address={address}",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=1",
                    "--disable-usage-stats",
                ]
            )
        )
        yield Cluster(namespace, address)
    finally:
        namespace.run([ray, "stop", "--force"])
        namespace.close()


def experiment_path(stdout: str) -> Path:
    match = re.search(r"^experiment (\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(
        path for path in experiment.iterdir() if (path / "params.json").is_file()
    )


def results(trial: Path) -> list[dict[str, Any]]:
    lines = (trial / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def trial_id(trial: Path) -> str:
    """Return Tune's id of a trial from its folder's name."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})_", trial.name)
    assert match, trial.name
    return match.group(1)


def run_dir(trial: Path) -> Path:
    (path,) = [p for p in trial.iterdir() if (p / "config.yaml").is_file()]
    return path


def statuses(experiment: Path) -> dict[str, str]:
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}


@pytest.mark.slow
def test_cluster_has_two_alive_nodes_on_loopback(cluster: Cluster) -> None:
    script = (
        f"import json, ray; ray.init(address={cluster.address!r}); "
        "print(json.dumps([(n['Alive'], n['NodeManagerAddress']) for n in "
        "ray.nodes()]))"
    )

    output = checked(cluster.namespace.run([sys.executable, "-c", script]))

    nodes = json.loads(output.strip().splitlines()[-1])
    assert nodes == [[True, "127.0.0.1"], [True, "127.0.0.1"]]


@dataclass
class SweepRun:
    stdout: str
    experiment: Path
    best_run: Path


@pytest.fixture(scope="module")
def swept(
    cluster: Cluster, tiny_config: TinyConfig, tmp_path_factory: pytest.TempPathFactory
) -> SweepRun:
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root / "tiny.yaml", tiny_sweep(tiny_config, root))

    stdout = checked(cluster.mecrl("tune", str(path)))

    match = re.search(r"^best trial's run directory: (\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    return SweepRun(stdout, experiment_path(stdout), Path(match.group(1)))


@pytest.mark.slow
def test_sweep_runs_every_trial_spread_over_both_nodes(swept: SweepRun) -> None:
    trials = trial_dirs(swept.experiment)
    nodes = {row["node_id"] for trial in trials for row in results(trial)}

    assert len(trials) == 4
    assert set(statuses(swept.experiment).values()) == {"TERMINATED"}
    assert len(nodes) == 2
    for trial in trials:
        assert [row["timesteps"] for row in results(trial)] == [0, 256, 512]


@pytest.mark.slow
def test_each_trial_holds_its_run_directory_and_tensorboard_events(
    swept: SweepRun,
) -> None:
    for trial in trial_dirs(swept.experiment):
        run = RunDirectory.open(run_dir(trial))
        assert list(trial.glob("events.out.tfevents.*")), trial
        assert list((run.tensorboard_dir / "run_1").glob("events.out.tfevents.*"))
        assert [row["timesteps"] for row in run.evaluations()] == [0, 256, 512]
        assert run.best_model_file.is_file()


@pytest.mark.slow
def test_summary_table_lists_the_trials_best_first(swept: SweepRun) -> None:
    lines = swept.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    bests = [float(row[3]) for row in rows]

    assert "ratio_to_hindsight" in swept.stdout
    assert len(bests) == 4
    assert bests == sorted(bests)


@pytest.mark.slow
def test_best_trial_is_exported_as_a_run_directory_that_evaluates(
    swept: SweepRun, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDirectory.open(swept.best_run)
    config = run.config()
    best_of_all = min(
        row["ratio_to_hindsight"]
        for trial in trial_dirs(swept.experiment)
        for row in results(trial)
    )

    # the exported model is the run's best model, which scores as recorded
    best = min(run.evaluations(), key=lambda row: row["total_cost"])
    report = evaluate_seeds(
        run.scenario(),
        config.eval.seeds,
        config.eval.services,
        {"run": run.load_policy()},
    )
    status = main(
        ["evaluate", "--runs", str(swept.best_run), "--services", "4", "--seeds", "0"]
    )

    assert min(r["ratio_to_hindsight"] for r in run.evaluations()) == best_of_all
    assert report.totals("run").mean() == pytest.approx(best["total_cost"], rel=1e-9)
    assert status == 0
    assert swept.best_run.name in capsys.readouterr().out


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the process's output until a line matches; return all read."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1):
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if re.search(pattern, line):
                return "".join(seen)
    raise AssertionError(f"no line matched {pattern!r}:\n{''.join(seen)}")


def child_pid(process: subprocess.Popen[str]) -> int:
    """Return the pid of the command nsenter runs (its only child)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    return int(children.read_text().split()[0])


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
    cluster: Cluster, tiny_config: TinyConfig, tmp_path: Path
) -> None:
    data = tiny_sweep(tiny_config, tmp_path, overrides={"total_timesteps": 1536})
    path = write_sweep(tmp_path / "tiny.yaml", data)
    process = cluster.namespace.popen(
        [str(BIN / "mecrl"), "tune", str(path), "--address", cluster.address]
    )

    # Ctrl-C once a trial has finished: Tune saves its state and stops
    try:
        seen = wait_for_line(process, r"Trial \S+ completed after", timeout=150)
        os.kill(child_pid(process), signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    experiment = experiment_path(seen + output)
    before = statuses(experiment)
    finished = {trial for trial, status in before.items() if status == "TERMINATED"}
    kept = {
        trial: (trial / "result.json").read_bytes()
        for trial in trial_dirs(experiment)
        if trial_id(trial) in finished
    }

    resumed = cluster.mecrl("tune", "--resume", str(experiment))

    assert process.returncode == 130, seen + output
    assert "mecrl tune --resume" in output
    assert 0 < len(finished) < 4
    assert len(kept) == len(finished)
    assert "best trial's run directory" in checked(resumed)
    assert set(statuses(experiment).values()) == {"TERMINATED"}
    for trial, result_file in kept.items():
        assert (trial / "result.json").read_bytes() == result_file
    for trial in trial_dirs(experiment):
        assert results(trial)[-1]["timesteps"] == 1536
        steps = [row["timesteps"] for row in RunDirectory(run_dir(trial)).evaluations()]
        assert steps == sorted(set(steps)), "an evaluation was repeated"


@pytest.mark.slow
def test_more_cpus_per_trial_than_any_node_has_fails_before_any_trial(
    cluster: Cluster, tiny_config: TinyConfig, tmp_path: Path
) -> None:
    data = tiny_sweep(tiny_config, tmp_path, resources={"cpus": 2})
    path = write_sweep(tmp_path / "tiny.yaml", data)

    result = cluster.mecrl("tune", str(path))

    assert result.returncode == 2
    assert (
        "resources.cpus: 2 CPUs per trial, but the largest of the cluster's 2 "
        "nodes has 1 (all together 2)"
    ) in result.stderr
    assert not list((tmp_path / "storage").glob("tiny-*"))


@pytest.mark.slow
def test_bench_reports_trials_per_hour_and_steps_per_second(cluster: Cluster) -> None:
    output = checked(cluster.mecrl("tune", "--bench", "--quick"))

    figures = {
        line.rsplit(None, 2)[0]: float(line.rsplit(None, 2)[1].replace(",", ""))
        for line in output.splitlines()
        if line.startswith("tune, ")
    }
    # the nodes have one CPU each: the 2-CPU setting is skipped
    assert len(figures) == 2
    assert all(value > 0 for value in figures.values())
    assert all("1 CPU(s) per trial" in name for name in figures)


LOOPBACK_CHECK = """
import json, subprocess, ray
from mecrl.tuning.experiment import ray_session
with ray_session(None):
    address = ray.nodes()[0]["NodeManagerAddress"]
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True)
print(json.dumps({"address": address, "listening": listening.stdout.split("\\n")}))
"""


@pytest.mark.slow
def test_local_ray_listens_and_connects_on_loopback_only() -> None:
    need_namespaces()
    namespace = Namespace(outward=True)
    try:
        output = checked(namespace.run([sys.executable, "-c", LOOPBACK_CHECK]))
    finally:
        namespace.close()

    found = json.loads(output.strip().splitlines()[-1])
    local = [line.split()[3] for line in found["listening"] if line.strip()]
    # Ray alone would take the routed address and listen on every interface
    assert found["address"] == "127.0.0.1"
    assert local
    assert all(re.match(r"(\[::ffff:)?127\.0\.0\.1\]?:\d+$", a) for a in local), local


@pytest.mark.slow
def test_rllib_example_trains_with_masks_on_the_cluster(cluster: Cluster) -> None:
    pytest.importorskip("ray.rllib", reason="needs the rllib extra: '.[rllib]'")
    example = EXPERIMENTS / "rllib_masked.py"

    result = cluster.namespace.run(
        [
            sys.executable,
            str(example),
            "--iterations",
            "1",
            "--address",
            cluster.address,
        ],
        timeout=300,
    )

    assert "greedy episode: 0 masked sites picked" in checked(result)
