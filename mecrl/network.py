"""Site topologies and the dense latency and bandwidth tables built from them.

A :class:`Topology` is the physical layout: where the sites are, which pairs
are linked and by what kind of link, and which neighbouring cells a user can
walk to. Generators for the usual layouts are registered in
:data:`TOPOLOGIES`. A :class:`Network` turns a topology into dense
``(M, M)`` arrays of round-trip time, bottleneck bandwidth and hop count
along minimum-delay paths. The graph algorithms run once, when the network is
built; everything that runs per slot reads the arrays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import networkx as nx
import numpy as np
import numpy.typing as npt
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from mecrl.config import check, check_integer, check_positive, is_number
from mecrl.registry import Registry

logger = logging.getLogger(__name__)

_Number = TypeVar("_Number", bound=np.number[Any])

TOPOLOGIES = Registry[Callable[..., "Topology"]]("topology")
"""Topology generators by name: ``line``, ``hex`` and ``random-geometric``."""

# Axial offsets (dq, dr) of the six neighbours of a hexagonal cell, in the
# order used by the ``hex`` topology's movement table.
HEX_DIRECTIONS: tuple[tuple[int, int], ...] = (
    (1, 0),
    (1, -1),
    (0, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
)


@dataclass(frozen=True, eq=False)
class Topology:
    """Positions, links and movement neighbours of ``M`` edge sites.

    Args:
        positions_m: ``(M, 2)`` site coordinates in metres.
        graph: Undirected graph over nodes ``0..M-1``. Every edge carries
            ``length_m`` (cable length) and ``bandwidth_mbps``, and may carry
            ``delay_ms``, a fixed one-way delay added to the edge.
        neighbours: ``(M, K)`` table of the sites a user can move to from
            each site, ``-1`` where a direction leaves the layout. Its column
            order is part of the topology (for the hexagonal grid, one column
            per direction of :data:`HEX_DIRECTIONS`).
        name: Short description used in logs and reports.

    Raises:
        ValueError: If the arrays have the wrong shape or range, the graph is
            not connected over ``0..M-1``, or an edge lacks a valid attribute.
    """

    positions_m: npt.NDArray[np.float64]
    graph: nx.Graph
    neighbours: npt.NDArray[np.int64]
    name: str

    def __post_init__(self) -> None:
        positions = np.asarray(self.positions_m, dtype=np.float64)
        neighbours = np.asarray(self.neighbours, dtype=np.int64)
        object.__setattr__(self, "positions_m", positions)
        object.__setattr__(self, "neighbours", neighbours)
        n_sites = len(positions)
        check(
            positions.ndim == 2 and positions.shape[1] == 2 and n_sites > 0,
            "positions_m",
            f"expected shape (M, 2) with M >= 1, got {positions.shape}",
        )
        check(bool(np.isfinite(positions).all()), "positions_m", "must be finite")
        check(
            neighbours.ndim == 2 and len(neighbours) == n_sites,
            "neighbours",
            f"expected shape ({n_sites}, K), got {neighbours.shape}",
        )
        check(
            bool(((neighbours >= -1) & (neighbours < n_sites)).all()),
            "neighbours",
            f"entries must be -1 or a site in [0, {n_sites})",
        )
        _check_graph(self.graph, n_sites)

    @property
    def n_sites(self) -> int:
        """Number of sites ``M``."""
        return len(self.positions_m)


@dataclass(frozen=True)
class CloudLink:
    """A remote cloud site reachable from every edge site.

    Args:
        rtt_ms: Round-trip time between any edge site and the cloud.
        bandwidth_mbps: Bandwidth of each site's link to the cloud.
    """

    rtt_ms: float
    """Round-trip time between any edge site and the cloud."""
    bandwidth_mbps: float
    """Bandwidth of each site's link to the cloud."""

    def __post_init__(self) -> None:
        check_positive("rtt_ms", self.rtt_ms)
        check_positive("bandwidth_mbps", self.bandwidth_mbps)


@dataclass(frozen=True, eq=False)
class Network:
    """Dense all-pairs path metrics of a topology, plus an optional cloud.

    Entry ``[i, j]`` of each array describes the minimum-delay path from site
    ``i`` to site ``j``. With a cloud the arrays have one more row and column,
    at index :attr:`cloud_site`.

    Args:
        rtt_ms: Round-trip time, twice the one-way path delay; 0 on the
            diagonal.
        bandwidth_mbps: Bandwidth of the slowest link on the path; ``inf`` on
            the diagonal.
        hops: Number of links on the path; 0 on the diagonal.
        cloud_site: Index of the cloud node, or ``None`` without a cloud.
    """

    rtt_ms: npt.NDArray[np.float64]
    bandwidth_mbps: npt.NDArray[np.float64]
    hops: npt.NDArray[np.int64]
    cloud_site: int | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.rtt_ms)
        check(
            len(shape) == 2 and shape[0] == shape[1],
            "rtt_ms",
            f"expected a square array, got shape {shape}",
        )
        for name in ("bandwidth_mbps", "hops"):
            got = np.shape(getattr(self, name))
            check(got == shape, name, f"expected shape {shape}, got {got}")
        if self.cloud_site is not None:
            check(
                0 <= self.cloud_site < shape[0],
                "cloud_site",
                f"must index a node in [0, {shape[0]}), got {self.cloud_site}",
            )

    @property
    def n_nodes(self) -> int:
        """Number of nodes, edge sites plus the cloud if there is one."""
        return len(self.rtt_ms)

    @classmethod
    def from_topology(
        cls,
        topology: Topology,
        *,
        per_hop_ms: float = 0.5,
        propagation_m_per_s: float = 2.0e8,
        cloud: CloudLink | None = None,
    ) -> Network:
        """Build the dense tables of ``topology`` along minimum-delay paths.

        The one-way delay of an edge is its propagation time
        ``length_m / propagation_m_per_s``, plus ``per_hop_ms`` of switching
        and queueing, plus the edge's own ``delay_ms``. A cloud is one extra
        node joined to every site by a link of one-way delay
        ``cloud.rtt_ms / 2``; paths between sites may cross it when that is
        faster, as traffic between far sites would go through the core.

        Args:
            topology: The sites and their links.
            per_hop_ms: Fixed one-way delay of each link.
            propagation_m_per_s: Signal speed in the links (about two thirds
                of the speed of light in fibre).
            cloud: Optional cloud reachable from every site.

        Raises:
            ValueError: If ``per_hop_ms`` is negative or
                ``propagation_m_per_s`` is not positive.
        """
        check(
            (is_number(per_hop_ms) and per_hop_ms >= 0),
            "per_hop_ms",
            f"must be >= 0, got {per_hop_ms}",
        )
        check(
            (is_number(propagation_m_per_s) and propagation_m_per_s > 0),
            "propagation_m_per_s",
            f"must be > 0, got {propagation_m_per_s}",
        )
        delay_ms, link_mbps = _link_tables(
            topology, per_hop_ms, propagation_m_per_s, cloud
        )
        one_way_ms, parents = csgraph.dijkstra(
            csgraph.csgraph_from_dense(delay_ms, null_value=np.inf),
            directed=False,
            return_predecessors=True,
        )
        bottleneck_mbps, hops = _path_bottleneck_and_hops(parents, link_mbps)
        return cls(
            rtt_ms=_mirror_upper(2.0 * one_way_ms),
            bandwidth_mbps=_mirror_upper(bottleneck_mbps),
            hops=_mirror_upper(hops),
            cloud_site=topology.n_sites if cloud is not None else None,
        )


def line_topology(
    *,
    n_sites: int,
    spacing_m: float = 1000.0,
    bandwidth_mbps: float = 1000.0,
    ring: bool = False,
) -> Topology:
    """Sites in a row, or around a ring, ``spacing_m`` apart.

    This is the one-dimensional mobility model: a user moves left (column 0
    of the movement table) or right (column 1). A ring places the sites on a
    circle whose circumference is ``n_sites * spacing_m``, links the last
    site to the first, and lets walks wrap around.

    Args:
        n_sites: Number of sites; at least 1, or at least 3 for a ring.
        spacing_m: Link length between consecutive sites.
        bandwidth_mbps: Bandwidth of every link.
        ring: Whether to close the line into a ring.

    Raises:
        ValueError: If an argument is out of range.
    """
    check_integer("n_sites", n_sites, minimum=3 if ring else 1)
    check_positive("spacing_m", spacing_m)
    check_positive("bandwidth_mbps", bandwidth_mbps)

    sites = np.arange(n_sites, dtype=np.int64)
    left, right = sites - 1, sites + 1
    if ring:
        left %= n_sites
        right %= n_sites
        angle = 2.0 * math.pi * sites / n_sites
        radius_m = n_sites * spacing_m / (2.0 * math.pi)
        positions = radius_m * np.column_stack((np.cos(angle), np.sin(angle)))
    else:
        right[-1] = -1
        positions = np.column_stack((sites * spacing_m, np.zeros(n_sites)))

    graph = _empty_graph(n_sites)
    pairs = zip(sites.tolist(), right.tolist(), strict=True)
    _add_links(graph, ((i, j) for i, j in pairs if j >= 0), spacing_m, bandwidth_mbps)
    kind = "ring" if ring else "line"
    return Topology(
        positions_m=positions,
        graph=graph,
        neighbours=np.column_stack((left, right)),
        name=f"{kind}({n_sites} sites, {spacing_m:g} m)",
    )


def hex_topology(
    *, rings: int, spacing_m: float = 1000.0, bandwidth_mbps: float = 1000.0
) -> Topology:
    """A hexagonal grid of cells: a centre cell and ``rings`` rings around it.

    The grid has ``1 + 3 * rings * (rings + 1)`` cells. Cell 0 is the centre,
    then come the cells of ring 1, ring 2 and so on, each ring in walking
    order from its corner in direction 4 of :data:`HEX_DIRECTIONS`, so
    consecutive cells of a ring are adjacent. Adjacent cells are
    ``spacing_m`` apart and linked. The movement table has one column per
    direction of :data:`HEX_DIRECTIONS`, ``-1`` where the grid ends, as in
    the two-dimensional model of Wang et al. (IEEE/ACM ToN, 2019).

    Args:
        rings: Number of rings around the centre cell, at least 0.
        spacing_m: Distance between the centres of adjacent cells.
        bandwidth_mbps: Bandwidth of every link.

    Raises:
        ValueError: If an argument is out of range.
    """
    check_integer("rings", rings, minimum=0)
    check_positive("spacing_m", spacing_m)
    check_positive("bandwidth_mbps", bandwidth_mbps)

    cells = list(_hex_cells(rings))
    index = {cell: i for i, cell in enumerate(cells)}
    neighbours = np.array(
        [
            [index.get((q + dq, r + dr), -1) for dq, dr in HEX_DIRECTIONS]
            for q, r in cells
        ],
        dtype=np.int64,
    )
    axial = np.array(cells, dtype=np.float64)
    positions = spacing_m * np.column_stack(
        (axial[:, 0] + axial[:, 1] / 2.0, axial[:, 1] * math.sqrt(3.0) / 2.0)
    )

    graph = _empty_graph(len(cells))
    links = ((i, int(j)) for i, row in enumerate(neighbours) for j in row if j > i)
    _add_links(graph, links, spacing_m, bandwidth_mbps)
    return Topology(
        positions_m=positions,
        graph=graph,
        neighbours=neighbours,
        name=f"hex({rings} rings, {len(cells)} cells, {spacing_m:g} m)",
    )


def random_geometric_topology(
    *,
    n_sites: int,
    area_m: float = 10_000.0,
    radius_m: float = 2_000.0,
    bandwidth_mbps: float = 1000.0,
    seed: int = 0,
) -> Topology:
    """Sites dropped uniformly in a square, linked when close enough.

    Two sites are linked when they are at most ``radius_m`` apart; the link
    length is their distance. If that leaves the graph in pieces, the pieces
    are joined one at a time, each through the closest pair of sites between
    it and the part already joined, so the result is always connected. The
    movement table lists each site's graph neighbours in increasing order,
    padded with ``-1`` to the largest degree.

    Args:
        n_sites: Number of sites, at least 1.
        area_m: Side of the square.
        radius_m: Largest distance of a link before joining the pieces.
        bandwidth_mbps: Bandwidth of every link.
        seed: Seed of the site positions; the same seed gives the same
            topology.

    Raises:
        ValueError: If an argument is out of range.
    """
    check_integer("n_sites", n_sites, minimum=1)
    check_positive("area_m", area_m)
    check_positive("radius_m", radius_m)
    check_positive("bandwidth_mbps", bandwidth_mbps)
    check_integer("seed", seed, minimum=0)

    positions = np.random.default_rng(seed).uniform(0.0, area_m, size=(n_sites, 2))
    graph = _empty_graph(n_sites)
    close_pairs = cKDTree(positions).query_pairs(radius_m, output_type="ndarray")
    _add_distance_links(graph, positions, close_pairs, bandwidth_mbps)
    _join_components(graph, positions, bandwidth_mbps)
    return Topology(
        positions_m=positions,
        graph=graph,
        neighbours=_padded_neighbours(graph),
        name=f"random-geometric({n_sites} sites, seed {seed})",
    )


def _link_tables(
    topology: Topology,
    per_hop_ms: float,
    propagation_m_per_s: float,
    cloud: CloudLink | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return dense one-way delay and bandwidth per link, ``inf`` off links."""
    n_sites = topology.n_sites
    n_nodes = n_sites + (cloud is not None)
    delay_ms = np.full((n_nodes, n_nodes), np.inf)
    link_mbps = np.full((n_nodes, n_nodes), np.inf)
    for i, j, attrs in topology.graph.edges(data=True):
        propagation_ms = attrs["length_m"] / propagation_m_per_s * 1000.0
        delay = propagation_ms + per_hop_ms + attrs.get("delay_ms", 0.0)
        delay_ms[i, j] = delay_ms[j, i] = delay
        link_mbps[i, j] = link_mbps[j, i] = attrs["bandwidth_mbps"]
    if cloud is not None:
        # Halving is exact in floating point, so the cloud's RTT is exactly
        # cloud.rtt_ms: no detour through other sites can be shorter.
        delay_ms[n_sites, :n_sites] = delay_ms[:n_sites, n_sites] = cloud.rtt_ms / 2
        link_mbps[n_sites, :n_sites] = cloud.bandwidth_mbps
        link_mbps[:n_sites, n_sites] = cloud.bandwidth_mbps
    return delay_ms, link_mbps


def _path_bottleneck_and_hops(
    parents: npt.NDArray[np.int32], link_mbps: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Fold link bandwidth and hop count along every shortest-path tree.

    Row ``s`` of ``parents`` is the shortest-path tree rooted at ``s``. Each
    round of pointer doubling replaces a node's ancestor by the ancestor's
    ancestor, combining the two path segments, so at most ``log2(M)``
    whole-array rounds cover paths of any length without a loop over nodes;
    they stop early once every ancestor is the root.
    """
    n_nodes = len(parents)
    nodes = np.arange(n_nodes)
    roots = parents < 0
    ancestor = np.where(roots, nodes[None, :], parents)
    bottleneck = np.where(roots, np.inf, link_mbps[ancestor, nodes[None, :]])
    hops = np.where(roots, 0, 1).astype(np.int64)
    root = np.broadcast_to(nodes[:, None], ancestor.shape)
    for _ in range(max(1, math.ceil(math.log2(n_nodes)))):
        if np.array_equal(ancestor, root):
            break
        bottleneck = np.minimum(bottleneck, np.take_along_axis(bottleneck, ancestor, 1))
        hops = hops + np.take_along_axis(hops, ancestor, 1)
        ancestor = np.take_along_axis(ancestor, ancestor, 1)
    return bottleneck, hops


def _mirror_upper(table: npt.NDArray[_Number]) -> npt.NDArray[_Number]:
    """Copy the upper triangle onto the lower one, in place.

    Dijkstra from ``i`` and from ``j`` may sum the same delays in another
    order, or pick another of several equally fast paths; keeping one
    direction makes the tables exactly symmetric and describes both
    directions by the same path.
    """
    upper = np.triu_indices(len(table), 1)
    table[upper[1], upper[0]] = table[upper]
    return table


def _hex_cells(rings: int) -> Iterator[tuple[int, int]]:
    """Yield axial coordinates of the centre cell, then ring after ring."""
    yield (0, 0)
    for radius in range(1, rings + 1):
        # Start at the corner reached by going ``radius`` steps in direction
        # 4, then walk ``radius`` steps along each direction in turn.
        q, r = HEX_DIRECTIONS[4][0] * radius, HEX_DIRECTIONS[4][1] * radius
        for dq, dr in HEX_DIRECTIONS:
            for _ in range(radius):
                yield (q, r)
                q, r = q + dq, r + dr


def _empty_graph(n_sites: int) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(n_sites))
    return graph


def _add_links(
    graph: nx.Graph,
    pairs: Iterable[tuple[int, int]],
    length_m: float,
    bandwidth_mbps: float,
) -> None:
    graph.add_edges_from(
        pairs, length_m=float(length_m), bandwidth_mbps=float(bandwidth_mbps)
    )


def _add_distance_links(
    graph: nx.Graph,
    positions_m: npt.NDArray[np.float64],
    pairs: npt.NDArray[np.int64],
    bandwidth_mbps: float,
) -> None:
    """Link each pair of sites with a link as long as their distance."""
    lengths = np.linalg.norm(
        positions_m[pairs[:, 0]] - positions_m[pairs[:, 1]], axis=1
    )
    for (i, j), length in zip(pairs.tolist(), lengths.tolist(), strict=True):
        graph.add_edge(i, j, length_m=length, bandwidth_mbps=float(bandwidth_mbps))


def _join_components(
    graph: nx.Graph, positions_m: npt.NDArray[np.float64], bandwidth_mbps: float
) -> None:
    """Connect the graph by adding, one piece at a time, the shortest bridge.

    This is Prim's algorithm over pieces: the joined part grows from the
    piece of site 0, and ``gap_m`` keeps the distance from the joined part
    to each outside site (``closest`` the joined site at that distance), so
    the whole join costs ``O(M^2)``.
    """
    pieces = list(nx.connected_components(graph))
    if len(pieces) == 1:
        return
    n_sites = len(positions_m)
    piece_of = np.empty(n_sites, dtype=np.int64)
    for label, piece in enumerate(pieces):
        piece_of[list(piece)] = label
    distance_m = cdist(positions_m, positions_m)
    joined = np.zeros(n_sites, dtype=bool)
    gap_m = np.full(n_sites, np.inf)
    closest = np.zeros(n_sites, dtype=np.int64)
    newcomers = np.flatnonzero(piece_of == piece_of[0])
    bridges = []
    while True:
        # Sites of the piece just joined may be closer to some outside sites.
        joined[newcomers] = True
        nearest = distance_m[newcomers].argmin(axis=0)
        candidate_m = distance_m[newcomers[nearest], np.arange(n_sites)]
        better = candidate_m < gap_m
        gap_m = np.where(better, candidate_m, gap_m)
        closest = np.where(better, newcomers[nearest], closest)
        gap_m[joined] = np.inf
        if joined.all():
            break
        outside = int(np.argmin(gap_m))
        bridges.append((int(closest[outside]), outside))
        newcomers = np.flatnonzero(piece_of == piece_of[outside])
    logger.debug("joined %d pieces of a random geometric graph", len(pieces))
    _add_distance_links(graph, positions_m, np.array(bridges), bandwidth_mbps)


def _padded_neighbours(graph: nx.Graph) -> npt.NDArray[np.int64]:
    """Return each node's sorted neighbours, padded with -1 to equal length."""
    rows = [sorted(graph.adj[node]) for node in range(graph.number_of_nodes())]
    width = max(1, max(len(row) for row in rows))
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for node, row in enumerate(rows):
        table[node, : len(row)] = row
    return table


def _check_graph(graph: nx.Graph, n_sites: int) -> None:
    check(
        set(graph.nodes) == set(range(n_sites)),
        "graph",
        f"nodes must be exactly 0..{n_sites - 1}",
    )
    check(nx.is_connected(graph), "graph", "must be connected")
    for i, j, attrs in graph.edges(data=True):
        for name in ("length_m", "bandwidth_mbps"):
            check(name in attrs, "graph", f"edge ({i}, {j}) has no {name!r}")
        check(
            (is_number(attrs["length_m"]) and attrs["length_m"] >= 0),
            "graph",
            f"edge ({i}, {j}) length_m must be >= 0, got {attrs['length_m']}",
        )
        check(
            (is_number(attrs["bandwidth_mbps"]) and attrs["bandwidth_mbps"] > 0),
            "graph",
            f"edge ({i}, {j}) bandwidth_mbps must be > 0, "
            f"got {attrs['bandwidth_mbps']}",
        )
        delay = attrs.get("delay_ms", 0.0)
        check(
            (is_number(delay) and delay >= 0),
            "graph",
            f"edge ({i}, {j}) delay_ms must be >= 0, got {delay}",
        )


TOPOLOGIES.add("line", line_topology)
TOPOLOGIES.add("hex", hex_topology)
TOPOLOGIES.add("random-geometric", random_geometric_topology)
