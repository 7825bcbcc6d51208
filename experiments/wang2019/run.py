"""Reproduce Wang et al.'s real-trace comparison on the ``sf-wang2019`` scenario.

Runs never, follow (Wang et al.'s "always migrate"), myopic and the MDP
threshold policy (``mdp``) on the first N taxis of the scenario, and reports
each policy's total cost as a ratio to the hindsight optimum of the same
services (:func:`mecrl.evaluate.evaluate`). Writes a markdown table and a
PNG plot, and prints the table.

Run from the repository root, either way::

    python -m experiments.wang2019.run --data-dir ../shared/data
    .venv/bin/python experiments/wang2019/run.py --data-dir ../shared/data

Without ``--data-dir`` the data folder comes from ``MECRL_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mecrl.datasets import DatasetNotFoundError, with_data_dir
from mecrl.evaluate import HINDSIGHT, PolicyOutcome, evaluate
from mecrl.scenario import Scenario, load_config

SCENARIO = "sf-wang2019"
POLICIES = ("never", "follow", "myopic", "mdp")
LABELS = {
    "never": "never migrate",
    "follow": "always migrate (follow)",
    "myopic": "myopic",
    "mdp": "MDP threshold (mdp)",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; return the exit status."""
    args = _parser().parse_args(argv)
    config = load_config(SCENARIO)
    if args.data_dir is not None:
        config = with_data_dir(config, args.data_dir)
    if args.slots is not None:
        config = dataclasses.replace(config, episode_slots=args.slots)
    try:
        scenario = Scenario(config)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    outcomes = evaluate(scenario, args.seed, args.services, list(POLICIES))
    elapsed_s = time.perf_counter() - started

    table = markdown_table(outcomes)
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"Scenario `{SCENARIO}`, seed {args.seed}, services 0..{args.services - 1} "
        f"(the first {args.services} taxis by `taxi_idx`), "
        f"{config.episode_slots} slots of {config.slot_s:g} s; "
        f"evaluated in {elapsed_s:.1f} s.\n\n"
    )
    (args.out / "results.md").write_text(header + table + "\n", encoding="utf-8")
    plot(outcomes, args.out / "ratios.png", args.services, config.episode_slots)
    print(header + table)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'ratios.png'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Wang et al. (ToN 2019) on the real SF trace, against "
        "the hindsight optimum."
    )
    parser.add_argument(
        "--data-dir", type=Path, help="data folder (default: $MECRL_DATA_DIR)"
    )
    parser.add_argument(
        "--services",
        type=int,
        default=100,
        help="taxis evaluated, the first N by taxi_idx (at most 485; default 100)",
    )
    parser.add_argument(
        "--slots", type=int, help="episode length in slots (default: the scenario's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="episode seed")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for results.md and the plot",
    )
    return parser


def markdown_table(outcomes: dict[str, PolicyOutcome]) -> str:
    """Return the comparison as a markdown table, hindsight first.

    The median per-service ratio leaves out services whose optimum is 0.
    """
    best = outcomes[HINDSIGHT]
    rows = [
        "| policy | total cost | ratio to hindsight | median per-service ratio "
        "| migrations | distance part | migration part |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, outcome in outcomes.items():
        ratio = outcome.total_cost / best.total_cost
        per_service = np.median(per_service_ratios(outcome, best))
        rows.append(
            f"| {LABELS.get(name, name)} | {outcome.total_cost:.1f} | {ratio:.3f} "
            f"| {per_service:.3f} | {outcome.migrations} "
            f"| {outcome.weighted['distance']:.1f} "
            f"| {outcome.weighted['migration']:.1f} |"
        )
    return "\n".join(rows)


def plot(
    outcomes: dict[str, PolicyOutcome], path: Path, services: int, slots: int
) -> None:
    """Draw total ratios (bars) and per-service ratios (box plot) to ``path``."""
    best = outcomes[HINDSIGHT]
    names = [name for name in outcomes if name != HINDSIGHT]
    ratios = [outcomes[name].total_cost / best.total_cost for name in names]
    per_service = [per_service_ratios(outcomes[name], best) for name in names]
    labels = [LABELS.get(name, name) for name in names]

    # the Agg canvas renders to files without any display or pyplot state
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    bars, boxes = figure.subplots(1, 2)
    bars.bar(range(len(names)), ratios, color="tab:blue")
    bars.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    bars.set_ylim(0.0, 1.12 * max(ratios))
    for x, ratio in enumerate(ratios):
        bars.text(x, ratio, f"{ratio:.2f}", ha="center", va="bottom")
    bars.set_xticks(range(len(names)), labels, rotation=15)
    bars.set_ylabel("total cost / hindsight optimum")
    bars.set_title("All services")

    boxes.boxplot(per_service, showfliers=False)
    boxes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    boxes.set_xticks(range(1, len(names) + 1), labels, rotation=15)
    boxes.set_ylabel("cost / hindsight optimum, per service")
    boxes.set_title("Per service (whiskers 1.5 IQR)")

    figure.suptitle(
        f"sf-wang2019: {services} taxis, {slots} slots of 60 s, "
        "Wang et al.'s hop-distance costs"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def per_service_ratios(outcome: PolicyOutcome, best: PolicyOutcome) -> np.ndarray:
    """Return each service's cost over its hindsight optimum.

    Services whose optimum costs nothing (a taxi that never leaves a hosting
    cell) have no ratio and are left out.
    """
    positive = best.per_service > 0
    return outcome.per_service[positive] / best.per_service[positive]


if __name__ == "__main__":
    sys.exit(main())
