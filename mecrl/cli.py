"""The ``mecrl`` command line: scenarios, evaluation, training, plots, benchmarks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from mecrl import __version__
from mecrl.config import ConfigError
from mecrl.costs import TERM_NAMES, TERM_UNITS
from mecrl.hosts import cli as hosts_cli
from mecrl.scenario import SCENARIOS, Scenario, load_config
from mecrl.serving.cli import add_parsers as add_serving_parsers
from mecrl.testbed import cli as testbed_cli

if TYPE_CHECKING:
    # imported when used: they load torch and SB3, slow for the other commands
    from mecrl.evaluate import Estimate, SeedsReport
    from mecrl.train import RunDirectory
    from mecrl.tuning.experiment import SweepResult

DEFAULT_POLICIES = "never,follow,threshold,myopic"
DEFAULT_SCENARIO = "city-grid"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.run(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"mecrl: error: {message}", file=sys.stderr)
        return 2
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mecrl", description="Learn when and where to migrate edge services."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    scenario = commands.add_parser("scenario", help="list, show or export scenarios")
    actions = scenario.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the registered scenarios")
    listing.set_defaults(run=_scenario_list)
    show = actions.add_parser("show", help="print a scenario's config and facts")
    show.add_argument("name", help="scenario name or config file")
    show.set_defaults(run=_scenario_show)
    export = actions.add_parser("export", help="write solver-ready service problems")
    export.add_argument("name", help="scenario name or config file")
    _add_episode_args(export)
    export.add_argument("--out", required=True, type=Path, help="output JSON file")
    export.set_defaults(run=_scenario_export)

    evaluate = commands.add_parser(
        "evaluate", help="compare policies with the hindsight optimum"
    )
    evaluate.add_argument(
        "--scenario",
        help="name or file (default city-grid, or the first run's scenario)",
    )
    _add_episode_args(evaluate)
    evaluate.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated policies, each a name or name:key=value, e.g. "
        f"threshold:hops=8 (default {DEFAULT_POLICIES})",
    )
    evaluate.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="also evaluate the best model of these training runs",
    )
    evaluate.add_argument(
        "--seeds",
        type=_int_list,
        help="comma-separated episode seeds: mean and 95%% interval over them",
    )
    evaluate.add_argument(
        "--lookahead",
        type=_int_list,
        metavar="W1,W2,...",
        help="also plan with exact foresight of W slots (a yardstick: what "
        "predicting the users W slots ahead would be worth)",
    )
    evaluate.add_argument(
        "--predictive",
        type=_int_list,
        metavar="W1,W2,...",
        help="also plan W slots ahead at the mean cost of futures drawn from the "
        "mobility model and each user's position and velocity (a yardstick: "
        "about what the best online policy costs; random-waypoint only)",
    )
    evaluate.add_argument(
        "--tune",
        metavar="NAME:PARAM=V1,V2,...",
        help="instead, sweep a heuristic's parameter (threshold:hops=1,2,3,4) "
        "over --seeds and print its best spec",
    )
    evaluate.add_argument("--json", type=Path, help="also write results as JSON")
    evaluate.set_defaults(run=_evaluate)

    train = commands.add_parser("train", help="train a policy with Stable-Baselines3")
    train.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="training config file (default: MaskablePPO on city-grid)",
    )
    train.add_argument(
        "--smoke", action="store_true", help="apply the config's smoke variant"
    )
    train.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run"
    )
    train.add_argument("--seed", type=int, help="override the config's seed")
    train.add_argument(
        "--total-timesteps", type=int, help="override the config's budget"
    )
    train.add_argument("--run-root", help="override the folder of run directories")
    train.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )
    train.set_defaults(run=_train)

    plot = commands.add_parser("plot", help="draw figures of training runs")
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    plot.add_argument("--out", required=True, type=Path, help="output folder")
    plot.add_argument(
        "--seeds",
        type=_int_list,
        help="episode seeds of the cost breakdown (default: the first run's)",
    )
    plot.add_argument(
        "--services", type=int, help="services of the cost breakdown episodes"
    )
    plot.add_argument("--service", type=int, default=0, help="service the map follows")
    plot.set_defaults(run=_plot)

    _add_tune_parser(commands)
    hosts_cli.add_parsers(commands)
    testbed_cli.add_parsers(commands)
    add_serving_parsers(commands)

    bench = commands.add_parser("bench", help="measure environment throughput")
    bench.add_argument("--quick", action="store_true", help="small sizes, fast")
    bench.set_defaults(run=_bench)
    return parser


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _add_episode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="episode seed")
    parser.add_argument("--services", type=int, default=20, help="services (N)")


def _scenario_list(args: argparse.Namespace) -> int:
    for name in SCENARIOS.names():
        config = load_config(name)
        summary = _first_sentence(config.description)
        print(f"{name:<20} {summary}")
    return 0


def _refuse_with_resume(what: str, *options: tuple[str, Any]) -> None:
    """Reject options that ``--resume`` takes from the resumed config instead."""
    given = [flag for flag, value in options if value]
    if given:
        raise ValueError(
            f"--resume continues {what} with its own config; drop {given[0]}"
        )


def _first_sentence(text: str) -> str:
    # "et al." and "e.g." end no sentence
    match = re.search(r"(?<!\bal)(?<!\be\.g)\.(\s|$)", text)
    return (text[: match.start() + 1] if match else text).strip()


def _scenario_show(args: argparse.Namespace) -> int:
    config = load_config(args.name)
    scenario = Scenario(config)
    sites = scenario.sites
    facts = {
        "edge_sites": sites.n_edge,
        "cloud": sites.has_cloud,
        "kata_sites": int(sites.runtimes[: sites.n_edge, 1].sum()),
        "zones": list(sites.zone_names),
        "max_rtt_ms": float(scenario.network.rtt_ms.max()),
        "config_sha256": config.digest(),
    }
    print(yaml.safe_dump({"config": config.to_dict(), "facts": facts}, sort_keys=False))
    return 0


def _scenario_export(args: argparse.Namespace) -> int:
    from mecrl.evaluate import episode_problems

    scenario = Scenario(load_config(args.name))
    problems = episode_problems(scenario, args.seed, args.services)
    services = [
        {
            "service": n,
            "class": scenario.classes.names[problems.cls[n]],
            "initial_site": int(problems.initial_site[n]),
            "access_site": problems.access[n].tolist(),
            "slot_cost": _json_costs(problems.slot_cost[n]),
            "migration_cost": _json_costs(problems.migration_cost[problems.cls[n]]),
        }
        for n in range(args.services)
    ]
    document = {
        "scenario": scenario.config.name,
        "config_sha256": scenario.config.digest(),
        "seed": args.seed,
        "slots": scenario.config.episode_slots,
        "sites": scenario.n_sites,
        "convention": (
            "reward at slot t = -(slot_cost[t][s_t] + migration_cost[s_(t-1)][s_t]),"
            " s_(-1) = initial_site; null marks an infeasible site or move"
        ),
        "services": services,
    }
    args.out.write_text(json.dumps(document))
    print(f"wrote {args.services} service problems to {args.out}")
    return 0


def _json_costs(table: np.ndarray) -> list[Any]:
    return [
        [value if math.isfinite(value) else None for value in row]
        for row in table.tolist()
    ]


def _evaluate(args: argparse.Namespace) -> int:
    from mecrl.evaluate import HINDSIGHT, evaluate

    if args.tune:
        return _tune_heuristic(args)
    if args.runs or args.seeds:
        return _evaluate_seeds(args)
    scenario = Scenario(load_config(args.scenario or DEFAULT_SCENARIO))
    names = [name.strip() for name in args.policies.split(",") if name.strip()]
    outcomes = evaluate(
        scenario,
        args.seed,
        args.services,
        names,
        args.lookahead or (),
        args.predictive or (),
    )
    best = outcomes[HINDSIGHT].total_cost
    print(
        f"scenario {scenario.config.name}, seed {args.seed}, "
        f"{args.services} services, {scenario.config.episode_slots} slots"
    )
    shown = [n for n in TERM_NAMES if any(o.weighted[n] for o in outcomes.values())]
    width = max(11, *(len(name) + 2 for name in outcomes))
    header = f"{'policy':<{width}}{'total':>10}{'ratio':>8}{'moves':>7}" + "".join(
        f"{n:>16}" for n in shown
    )
    print(header)
    for name, outcome in outcomes.items():
        ratio = outcome.total_cost / best if best > 0 else float("nan")
        row = (
            f"{name:<{width}}{outcome.total_cost:>10.2f}{ratio:>8.3f}"
            f"{outcome.migrations:>7}"
        )
        print(row + "".join(f"{outcome.weighted[n]:>16.2f}" for n in shown))
    print(
        "term columns are weighted costs; raw units: "
        + ", ".join(f"{n} {TERM_UNITS[n]}" for n in shown)
    )
    if args.json:
        document = {
            "scenario": scenario.config.name,
            "seed": args.seed,
            "services": args.services,
            "policies": {
                name: {
                    **outcome.to_dict(),
                    "ratio_to_hindsight": outcome.total_cost / best
                    if best > 0
                    else None,
                }
                for name, outcome in outcomes.items()
            },
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0


def _refuse_planners(args: argparse.Namespace) -> None:
    for flag, given in (
        ("--lookahead", args.lookahead),
        ("--predictive", args.predictive),
    ):
        if given:
            raise ValueError(f"{flag} adds a yardstick, not a heuristic to tune")


def _tune_heuristic(args: argparse.Namespace) -> int:
    from mecrl.evaluate import tune_policy

    if args.runs:
        raise ValueError("--tune sweeps a heuristic, not trained runs; drop --runs")
    _refuse_planners(args)
    scenario = Scenario(load_config(args.scenario or DEFAULT_SCENARIO))
    seeds = args.seeds or [args.seed]
    tuning = tune_policy(scenario, seeds, args.services, args.tune)
    print(
        f"scenario {scenario.config.name}, seeds "
        f"{','.join(map(str, seeds))}, {args.services} services: "
        f"mean total cost over seeds"
    )
    print(f"{tuning.param:>10}{'cost':>12}{'ratio':>8}")
    for value, cost in zip(tuning.values, tuning.mean_cost, strict=True):
        print(f"{value:>10g}{cost:>12.2f}{cost / tuning.hindsight_cost:>8.3f}")
    print(f"best: {tuning.best_spec}")
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(tuning), indent=1))
    return 0


def _evaluate_seeds(args: argparse.Namespace) -> int:
    from mecrl.agents.policy import Policy, make_policy
    from mecrl.evaluate import evaluate_seeds, policy_context, yardsticks

    planners = yardsticks(args.lookahead or (), args.predictive or ())
    runs = _open_runs(args.runs or [])
    if args.scenario is not None:
        scenario = Scenario(load_config(args.scenario))
    elif runs:
        scenario = runs[0].scenario()
    else:
        scenario = Scenario(load_config(DEFAULT_SCENARIO))
    seeds = args.seeds or [args.seed]
    context = policy_context(scenario)
    policies: dict[str, Policy] = {}
    for name in (n.strip() for n in args.policies.split(",")):
        if name and name != "hindsight":
            policies[name] = make_policy(name, context)
    labels = _run_labels(runs)
    for label, run in zip(labels, runs, strict=True):
        policies[label] = run.load_policy(scenario)
    report = evaluate_seeds(scenario, seeds, args.services, policies, planners)
    _print_seeds_report(report, scenario, learned=set(labels))
    if args.json:
        document = report.to_dict()
        document["runs"] = {
            label: str(run.model_file())
            for label, run in zip(labels, runs, strict=True)
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0


def _open_runs(paths: list[Path]) -> list[RunDirectory]:
    if not paths:
        return []
    from mecrl.train import RunDirectory

    return [RunDirectory.open(path) for path in paths]


def _run_labels(runs: list[RunDirectory]) -> list[str]:
    """Return a unique label per run: its directory name."""
    labels: list[str] = []
    for run in runs:
        label, n = run.name, 2
        while label in labels:
            label, n = f"{run.name}#{n}", n + 1
        labels.append(label)
    return labels


def _print_seeds_report(
    report: SeedsReport, scenario: Scenario, learned: set[str]
) -> None:
    from mecrl.evaluate import Estimate

    seeds = ",".join(str(seed) for seed in report.seeds)
    print(
        f"scenario {scenario.config.name}, seeds {seeds}, {report.n_services} "
        f"services, {scenario.config.episode_slots} slots; mean over seeds "
        "+- half-width of the 95% interval (Student t)"
    )
    names = list(report.outcomes)
    shown = [
        term
        for term in TERM_NAMES
        if any(report.weighted(name, term).any() for name in names)
    ]
    width = max(11, *(len(name) + 2 for name in names))
    header = (
        f"{'policy':<{width}}{'total':>22}{'ratio':>18}{'moves':>9}"
        + "".join(f"{term:>16}" for term in shown)
        + (f"{'masked':>8}" if learned else "")
    )
    print(header)
    for name in names:
        total = _plus_minus(Estimate.of(report.totals(name)), 2, 10)
        ratio = _plus_minus(Estimate.of(report.ratios(name)), 3, 7)
        moves = report.migrations(name).mean()
        row = f"{name:<{width}}{total:>22}{ratio:>18}{moves:>9.1f}" + "".join(
            f"{report.weighted(name, term).mean():>16.2f}" for term in shown
        )
        if learned:
            masked = sum(report.masked_choices.get(name, [0]))
            row += f"{masked:>8}"
        print(row)
    print(
        "term columns are weighted costs (means over seeds); raw units: "
        + ", ".join(f"{n} {TERM_UNITS[n]}" for n in shown)
    )
    if learned:
        print(
            "masked: actions a learned policy proposed that the mask forbids "
            "(it stayed instead), summed over seeds"
        )


def _plus_minus(estimate: Estimate, digits: int, width: int) -> str:
    mean = f"{estimate.mean:>{width}.{digits}f}"
    if math.isnan(estimate.half_width):
        return mean + " " * (digits + 6)
    return f"{mean} +- {estimate.half_width:.{digits}f}"


def _train(args: argparse.Namespace) -> int:
    from mecrl.train import (
        RunDirectory,
        load_train_config,
        start_run,
        train_run,
    )

    if args.resume is not None:
        _refuse_with_resume(
            "a run",
            ("CONFIG", args.config),
            ("--smoke", args.smoke),
            ("--seed", args.seed),
            ("--total-timesteps", args.total_timesteps),
            ("--run-root", args.run_root),
        )
        run = RunDirectory.open(args.resume)
    else:
        overrides: dict[str, Any] = {}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.total_timesteps is not None:
            overrides["total_timesteps"] = args.total_timesteps
        if args.run_root is not None:
            overrides["run_root"] = args.run_root
        config = load_train_config(args.config, smoke=args.smoke, overrides=overrides)
        run = start_run(config)
    config = run.config()
    print(
        f"training {config.algorithm} on {config.scenario} ({config.env.kind} env) "
        f"for {config.total_timesteps:,} timesteps; run directory {run.path}"
    )
    try:
        result = train_run(run, progress_bar=not args.no_progress)
    except KeyboardInterrupt:
        print(
            "interrupted before training began; start again with: "
            f"mecrl train --resume {run.path}"
        )
        return 130
    if result.interrupted:
        print(
            f"interrupted at {result.timesteps:,} timesteps; checkpoint saved; "
            f"resume with: mecrl train --resume {run.path}"
        )
        return 130
    print(
        f"trained {result.timesteps:,} timesteps "
        f"({result.session_steps_per_s:,.0f} timesteps/s this session)"
    )
    if result.best is not None:
        best = result.best
        print(
            f"best model at {best['timesteps']:,.0f} timesteps: ratio to hindsight "
            f"{best['ratio_to_hindsight']:.4f}, best heuristic "
            f"{best['best_heuristic_ratio']:.4f}, ratio to it "
            f"{best['ratio_to_best_heuristic']:.4f}; saved as {run.best_model_file}"
        )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from mecrl.plot import plot_runs

    for path in plot_runs(args.runs, args.out, args.seeds, args.services, args.service):
        print(f"wrote {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mecrl.bench import run

    for figure in run(quick=args.quick):
        print(f"{figure.name:<66} {figure.value:>14,.1f} {figure.unit}")
    return 0


def _add_tune_parser(commands: Any) -> None:
    tune = commands.add_parser(
        "tune", help="sweep training configs with Ray Tune, locally or on a cluster"
    )
    tune.add_argument("config", nargs="?", type=Path, help="sweep config file")
    tune.add_argument(
        "--smoke", action="store_true", help="apply the config's smoke variants"
    )
    tune.add_argument(
        "--address",
        type=_host_port,
        metavar="HOST:PORT",
        help="run on the Ray cluster there (default: start a local Ray)",
    )
    tune.add_argument(
        "--storage",
        metavar="PATH",
        help="experiment storage: folder (shared by all nodes) or URI",
    )
    tune.add_argument(
        "--resume",
        metavar="EXPERIMENT",
        help="continue an interrupted sweep from its experiment folder",
    )
    tune.add_argument(
        "--export-root",
        type=Path,
        metavar="DIR",
        help="where the best trial's run directory is copied "
        "(default: the training config's run_root)",
    )
    tune.add_argument(
        "--bench",
        action="store_true",
        help="measure trials/hour and timesteps/s per trial at 1 and 2 CPUs",
    )
    tune.add_argument("--quick", action="store_true", help="with --bench: small")
    tune.set_defaults(run=_tune)


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _tune(args: argparse.Namespace) -> int:
    from mecrl.tuning import load_sweep_config

    # the config is checked first: its mistakes are reported without Ray
    sweep = None
    if args.resume is not None:
        _refuse_with_resume(
            "a sweep",
            ("CONFIG", args.config),
            ("--smoke", args.smoke),
            ("--storage", args.storage),
        )
    elif not args.bench:
        if args.config is None:
            raise ValueError("give a sweep CONFIG, --resume or --bench")
        sweep = load_sweep_config(args.config, smoke=args.smoke)
    try:
        from mecrl.tuning import experiment
        from mecrl.tuning.bench import tune_figures
    except ImportError as exc:
        raise ValueError(
            f"mecrl tune needs Ray ({exc}); install it: pip install 'mecrl[train,ray]'"
        ) from None

    try:
        if args.bench:
            for figure in tune_figures(quick=args.quick, address=args.address):
                print(f"{figure.name:<66} {figure.value:>14,.1f} {figure.unit}")
            return 0
        if sweep is None:
            print(f"resuming sweep {args.resume}")
            result = experiment.resume_sweep(
                args.resume, args.address, args.export_root
            )
            top = experiment.read_sweep(result.experiment_path).config.top
        else:
            where = args.address or "a local Ray"
            print(
                f"sweep {sweep.name}: {sweep.n_trials} trials of "
                f"{sweep.config.resources.cpus} CPU(s) each on {where}"
            )
            result = experiment.run_sweep(
                sweep, args.address, args.storage, args.export_root
            )
            top = sweep.config.top
    except ConnectionError as exc:
        raise ValueError(f"cannot reach the Ray cluster: {exc}") from None
    return _print_sweep(result, top)


def _print_sweep(result: SweepResult, top: int) -> int:
    from mecrl.tuning.experiment import summary_lines

    print(f"experiment {result.experiment_path}")
    for line in summary_lines(result, top):
        print(line)
    print(f"TensorBoard: tensorboard --logdir {result.experiment_path}")
    if result.interrupted:
        print(
            "interrupted; the finished trials are kept; continue with: "
            f"mecrl tune --resume {result.experiment_path}"
        )
        return 130
    if result.best_run is not None:
        print(f"best trial's run directory: {result.best_run}")
        print(f"evaluate it: mecrl evaluate --runs {result.best_run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
