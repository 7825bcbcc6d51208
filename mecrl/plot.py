"""Figures of training runs: learning curves, cost breakdowns, maps.

| file | what |
|---|---|
| ``learning_curve.png`` | evaluated cost over the hindsight optimum's against |
| | timesteps, one line per run, the baselines as horizontal lines |
| ``cost_breakdown.png`` | weighted cost terms per policy, stacked, per |
| | service-episode, on the evaluation episodes of the first run |
| ``site_map.png`` | the sites, and one service's user and service over |
| | an episode under the first run's policy, with its migrations |

Figures are drawn on matplotlib's Agg canvas without pyplot, so they need
no display and leave no global state behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from mecrl.agents.policy import Policy, make_policy
from mecrl.costs import TERM_NAMES
from mecrl.evaluate import HINDSIGHT, evaluate_seeds, policy_context, service_path
from mecrl.scenario import Scenario
from mecrl.train import RunDirectory

logger = logging.getLogger(__name__)

DPI = 120
"""Resolution of the PNG files."""

_TERM_COLOURS = dict(
    zip(
        TERM_NAMES,
        (
            "#4C72B0",
            "#C44E52",
            "#8172B2",
            "#64B5CD",
            "#DD8452",
            "#937860",
            "#DA8BC3",
            "#55A868",
        ),
        strict=True,
    )
)
_ZONE_COLOURS = ("#9ecae1", "#a1d99b", "#fdd0a2", "#dadaeb", "#fcbba1", "#d9d9d9")


def _new_figure(width_in: float, height_in: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    logger.info("wrote %s", path)
    return path


def run_labels(runs: Sequence[RunDirectory]) -> list[str]:
    """Return a label per run: algorithm and environment, else its name.

    Runs that share algorithm and environment are labelled by their names.
    """
    bases = []
    for run in runs:
        config = run.config()
        bases.append(f"{config.algorithm} ({config.env.kind})")
    return [
        base if bases.count(base) == 1 else run.name
        for base, run in zip(bases, runs, strict=True)
    ]


def learning_curve(runs: Sequence[RunDirectory], path: Path) -> Path:
    """Plot each run's evaluated ratio to the optimum against timesteps.

    The left panel shows everything, the baselines of the first run's
    evaluation as horizontal lines (its vertical range stops a little above
    the worst baseline; an untrained policy's evaluations above it sit on
    the top edge). The right panel zooms on the best baseline.
    """
    figure = Figure(figsize=(12.0, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    full, zoom = figure.subplots(1, 2)
    baselines = _baseline_ratios(runs[0])
    curves = _curves(runs)
    top = 1.08 * max([*baselines.values(), 1.0])
    best = min(baselines.values(), default=1.0)
    final = [ratios[-1] for _, ratios in curves.values()]
    near = [v for v in (*baselines.values(), *final) if v <= 1.1 * best]
    zoom_floor = 0.98 * min([*near, best]) - 0.02
    for axes, floor, ceiling, title in (
        (full, min([1.0, *near]) - 0.02, top, "all evaluations"),
        (zoom, zoom_floor, 1.03 * max([*near, best]), "near the best baseline"),
    ):
        _reference_lines(axes, baselines, floor, ceiling)
        for i, (label, (steps, ratios)) in enumerate(curves.items()):
            axes.plot(
                steps,
                np.minimum(ratios, ceiling),
                marker="o",
                markersize=3,
                color=f"C{i % 3}",
                label=f"{label} (last {ratios[-1]:.3f})",
            )
        axes.set_ylim(floor, ceiling)
        axes.set_xlabel("training timesteps")
        axes.xaxis.set_major_formatter(FuncFormatter(_steps_text))
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    full.set_ylabel("cost / hindsight optimum (mean over evaluation seeds)")
    zoom.legend(loc="upper right", fontsize=9)
    figure.suptitle(f"Learning curves on {runs[0].scenario().config.name}")
    return _save(figure, path)


def _curves(runs: Sequence[RunDirectory]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return (timesteps, ratio to the optimum) of each run's evaluations."""
    curves = {}
    for label, run in zip(run_labels(runs), runs, strict=True):
        rows = run.evaluations()
        if not rows:
            logger.warning("run %s has no evaluations yet", run.name)
            continue
        curves[label] = (
            np.array([row["timesteps"] for row in rows]),
            np.array([row["ratio_to_hindsight"] for row in rows]),
        )
    return curves


def _reference_lines(
    axes: Axes, baselines: dict[str, float], floor: float, ceiling: float
) -> None:
    """Draw the optimum and the baselines in the range as labelled lines.

    Baselines with the same ratio (``never`` and ``myopic`` often) share one
    line and one label.
    """
    grouped: dict[float, list[str]] = {}
    for name, ratio in sorted(baselines.items(), key=lambda item: item[1]):
        grouped.setdefault(round(ratio, 4), []).append(name)
    lines = [(1.0, "hindsight optimum", "black", "-")] + [
        (ratio, f"{' = '.join(names)} {ratio:.3f}", f"C{(i + 3) % 10}", "--")
        for i, (ratio, names) in enumerate(grouped.items())
    ]
    for ratio, text, colour, style in lines:
        if not floor <= ratio <= ceiling:
            continue
        axes.axhline(ratio, color=colour, linestyle=style, linewidth=1.2)
        axes.annotate(
            text,
            (0.0, ratio),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=9,
            color=colour,
        )


def _steps_text(value: float, _position: int) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _baseline_ratios(run: RunDirectory) -> dict[str, float]:
    """Return each baseline's mean ratio to the optimum from a run's record."""
    if not run.baselines_file.is_file():
        return {}
    report = json.loads(run.baselines_file.read_text())
    return {
        name: float(entry["ratio_to_hindsight"]["mean"])
        for name, entry in report["policies"].items()
        if name != HINDSIGHT
    }


def cost_breakdown(
    runs: Sequence[RunDirectory],
    path: Path,
    seeds: Sequence[int] | None = None,
    services: int | None = None,
) -> Path:
    """Plot stacked weighted cost terms of the optimum, baselines and runs.

    All policies run on the first run's scenario and evaluation episodes
    (or ``seeds`` and ``services``); bars are means over seeds, per service.
    Learned policies' bars have a black outline.
    """
    first = runs[0]
    config = first.config().eval
    scenario = first.scenario()
    seeds = tuple(seeds) if seeds else config.seeds
    services = services or config.services
    context = policy_context(scenario)
    policies: dict[str, Policy] = {
        name: make_policy(name, context) for name in config.baselines
    }
    learned = run_labels(runs)
    for label, run in zip(learned, runs, strict=True):
        policies[label] = run.load_policy(scenario)
    report = evaluate_seeds(scenario, seeds, services, policies)

    names = list(report.outcomes)
    terms = [
        term
        for term in TERM_NAMES
        if any(report.weighted(name, term).any() for name in names)
    ]
    figure, axes = _new_figure(max(6.0, 1.1 * len(names) + 3.0), 5.0)
    positions = np.arange(len(names))
    bottom = np.zeros(len(names))
    outline = ["black" if name in learned else "none" for name in names]
    for term in terms:
        height = np.array([report.weighted(n, term).mean() for n in names]) / services
        axes.bar(
            positions,
            height,
            bottom=bottom,
            color=_TERM_COLOURS[term],
            edgecolor=outline,
            linewidth=1.2,
            label=term,
            width=0.7,
        )
        bottom += height
    for x, name in zip(positions, names, strict=True):
        axes.annotate(
            f"{report.ratios(name).mean():.3f}",
            (x, bottom[x]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    axes.set_xticks(positions, names, rotation=20, ha="right")
    axes.set_ylabel("weighted cost per service-episode")
    axes.set_ylim(0, bottom.max() * 1.12)
    axes.set_title(
        f"Cost by term on {scenario.config.name} ({len(seeds)} seeds x "
        f"{services} services); ratio to the optimum on top"
    )
    axes.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def site_map(run: RunDirectory, path: Path, seed: int = 0, service: int = 0) -> Path:
    """Plot the sites and one service's episode under the run's policy.

    Top: the map. The user's access sites are dots coloured by slot; each
    migration of the service is an arrow in the colour of its slot, curved
    so that moves back and forth stay apart. The cloud, if any, is drawn
    beside the map. Bottom: the user-service distance in hops, slot by
    slot, as the policy saw it before deciding, with the migrations marked.
    """
    scenario = run.scenario()
    trace = service_path(scenario, seed, service, run.load_policy(scenario))
    positions_km = _drawn_positions_km(scenario)
    slots = scenario.config.episode_slots
    colours = colormaps["viridis"]

    figure = Figure(figsize=(9.0, 10.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes, timeline = figure.subplots(2, 1, height_ratios=(3.0, 1.0))
    _draw_sites(axes, scenario, positions_km)

    # the user's access sites, slot by slot
    user = positions_km[trace.access]
    axes.plot(user[:, 0], user[:, 1], color="#6baed6", linewidth=0.8, zorder=3)
    dots = axes.scatter(
        user[:, 0],
        user[:, 1],
        c=np.arange(slots),
        cmap=colours,
        vmin=0,
        vmax=slots - 1,
        s=14,
        zorder=3,
        label="user's access site",
    )
    figure.colorbar(dots, ax=axes, label="slot", shrink=0.7)

    # the service: start, end, and an arrow per migration
    moves = np.flatnonzero(trace.moves)
    previous = trace.initial_site
    for slot in moves:
        site = int(trace.sites[slot])
        axes.annotate(
            "",
            xy=positions_km[site],
            xytext=positions_km[previous],
            arrowprops={
                "arrowstyle": "-|>",
                "color": colours(slot / max(slots - 1, 1)),
                "linewidth": 1.8,
                "connectionstyle": "arc3,rad=0.25",
                "shrinkA": 4,
                "shrinkB": 4,
            },
            zorder=4,
        )
        previous = site
    start, end = positions_km[trace.initial_site], positions_km[trace.sites[-1]]
    axes.scatter(
        start[0],
        start[1],
        marker="s",
        s=110,
        color="#d94801",
        zorder=5,
        label="service at start",
    )
    axes.scatter(
        end[0],
        end[1],
        marker="*",
        s=260,
        color="#d94801",
        zorder=5,
        label="service at end",
    )
    axes.plot([], [], color="grey", linewidth=1.8, label="migration (slot colour)")
    axes.set_aspect("equal")
    axes.set_xlabel("x (km)")
    axes.set_ylabel("y (km)")
    axes.set_title(
        f"{run_labels([run])[0]} on {scenario.config.name}: service {service} "
        f"of seed {seed}, {len(moves)} migrations in {slots} slots"
    )
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.08), ncol=3)

    # the distance the policy saw at each decision: how far it lets it grow
    before = np.concatenate([[trace.initial_site], trace.sites[:-1]])
    hops = scenario.network.hops[trace.access, before]
    timeline.step(np.arange(slots), hops, where="post", color="#2171b5")
    timeline.scatter(
        moves, hops[moves], marker="v", color="#d94801", zorder=3, label="migration"
    )
    timeline.yaxis.set_major_locator(MaxNLocator(integer=True))
    timeline.set_xlabel("slot")
    timeline.set_ylabel("user-service hops\nbefore the decision")
    timeline.set_xlim(0, slots)
    timeline.grid(alpha=0.3)
    timeline.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return _save(figure, path)


def _drawn_positions_km(scenario: Scenario) -> np.ndarray:
    """Site positions in km; the cloud goes beside the map's top-right corner."""
    positions = scenario.sites.positions_m / 1000.0
    if scenario.sites.has_cloud:
        edge = positions[: scenario.sites.n_edge]
        span = edge.max(axis=0) - edge.min(axis=0)
        positions = positions.copy()
        positions[scenario.sites.n_edge :] = edge.max(axis=0) + 0.12 * span
    return np.asarray(positions)


def _draw_sites(axes: Axes, scenario: Scenario, positions_km: np.ndarray) -> None:
    """Draw the links and the sites, coloured by trust zone."""
    for a, b in scenario.topology.graph.edges:
        axes.plot(
            positions_km[[a, b], 0],
            positions_km[[a, b], 1],
            color="#cccccc",
            linewidth=0.8,
            zorder=1,
        )
    sites = scenario.sites
    names = sites.zone_names
    for z, name in enumerate(names):
        members = np.flatnonzero(sites.zone[: sites.n_edge] == z)
        if members.size == 0:
            continue
        axes.scatter(
            positions_km[members, 0],
            positions_km[members, 1],
            s=70,
            color=_ZONE_COLOURS[z % len(_ZONE_COLOURS)],
            edgecolors="#636363",
            linewidths=0.6,
            zorder=2,
            label=f"site, zone {name}" if len(names) > 1 else "site",
        )
    if sites.has_cloud:
        cloud = positions_km[sites.n_edge]
        axes.scatter(
            cloud[0],
            cloud[1],
            s=260,
            marker="h",
            color="#bdbdbd",
            edgecolors="#636363",
            zorder=2,
        )
        axes.annotate(
            "cloud", cloud, xytext=(0, 12), textcoords="offset points", ha="center"
        )


def plot_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    seeds: Sequence[int] | None = None,
    services: int | None = None,
    service: int = 0,
) -> list[Path]:
    """Write every figure of ``run_dirs`` into ``out_dir``; return the files.

    Args:
        run_dirs: Run directories; the first gives the scenario, the
            evaluation episodes and the baselines.
        out_dir: Folder for the PNG files (created if missing).
        seeds: Evaluation seeds of the cost breakdown; the first run's
            evaluation seeds by default. The map uses the first of them.
        services: Services per episode of the cost breakdown; the first
            run's evaluation services by default.
        service: Which service of the episode the map follows.

    Raises:
        ValueError: If no run directory is given.
        FileNotFoundError: If a path is not a run directory.
    """
    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    runs = [RunDirectory.open(path) for path in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    map_seed = seeds[0] if seeds else runs[0].config().eval.seeds[0]
    return [
        learning_curve(runs, out / "learning_curve.png"),
        cost_breakdown(runs, out / "cost_breakdown.png", seeds, services),
        site_map(runs[0], out / "site_map.png", map_seed, service),
    ]
