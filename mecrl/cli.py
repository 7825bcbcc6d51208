"""The ``mecrl`` command line: scenarios, evaluation and benchmarks."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mecrl import __version__
from mecrl.config import ConfigError
from mecrl.costs import TERM_NAMES, TERM_UNITS
from mecrl.scenario import SCENARIOS, Scenario, load_config

DEFAULT_POLICIES = "never,follow,threshold,myopic"


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
    evaluate.add_argument("--scenario", default="city-grid", help="name or file")
    _add_episode_args(evaluate)
    evaluate.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated policy names (default {DEFAULT_POLICIES})",
    )
    evaluate.add_argument("--json", type=Path, help="also write results as JSON")
    evaluate.set_defaults(run=_evaluate)

    bench = commands.add_parser("bench", help="measure environment throughput")
    bench.add_argument("--quick", action="store_true", help="small sizes, fast")
    bench.set_defaults(run=_bench)
    return parser


def _add_episode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="episode seed")
    parser.add_argument("--services", type=int, default=20, help="services (N)")


def _scenario_list(args: argparse.Namespace) -> int:
    for name in SCENARIOS.names():
        config = load_config(name)
        summary = _first_sentence(config.description)
        print(f"{name:<20} {summary}")
    return 0


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

    scenario = Scenario(load_config(args.scenario))
    names = [name.strip() for name in args.policies.split(",") if name.strip()]
    outcomes = evaluate(scenario, args.seed, args.services, names)
    best = outcomes[HINDSIGHT].total_cost
    print(
        f"scenario {scenario.config.name}, seed {args.seed}, "
        f"{args.services} services, {scenario.config.episode_slots} slots"
    )
    shown = [n for n in TERM_NAMES if any(o.weighted[n] for o in outcomes.values())]
    header = f"{'policy':<11}{'total':>10}{'ratio':>8}{'moves':>7}" + "".join(
        f"{n:>16}" for n in shown
    )
    print(header)
    for name, outcome in outcomes.items():
        ratio = outcome.total_cost / best if best > 0 else float("nan")
        row = (
            f"{name:<11}{outcome.total_cost:>10.2f}{ratio:>8.3f}{outcome.migrations:>7}"
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


def _bench(args: argparse.Namespace) -> int:
    from mecrl.bench import run

    for figure in run(quick=args.quick):
        print(f"{figure.name:<66} {figure.value:>14,.1f} {figure.unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
