"""The ``dataset-sites`` topology: a real site table, linked into a network.

Sites come from :func:`mecrl.datasets.sitesets.load_sites`, projected to
metres. Two sites are linked when they are neighbours in the Delaunay
triangulation of their positions: every site links to the sites around it in
each direction, never across another site, which is how a planned backhaul
mesh looks and gives a planar, connected graph of about ``3 M`` links.
Optionally, triangulation links longer than ``max_link_m`` (the long, thin
triangles along the hull) are removed, except those of the Euclidean minimum
spanning tree, so the graph stays connected. Each link is as long as the
distance between its sites. A user can move from a site to any linked site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import Delaunay, QhullError
from scipy.spatial.distance import cdist

from mecrl.config import check
from mecrl.datasets.geo import FloatArray, IntArray
from mecrl.datasets.sitesets import GeoSites, load_sites
from mecrl.network import TOPOLOGIES, Topology

# Zero-length links (two sites at one position) are kept in the spanning
# tree by giving them this length; SciPy reads a zero as "no link".
_TINY_M = 1e-6


@dataclass(frozen=True, eq=False)
class DatasetTopology(Topology):
    """A topology over the sites of a real dataset, keeping their geography.

    Besides the fields of :class:`~mecrl.network.Topology`, ``geo`` holds the
    sites' coordinates and projection, so that GPS fixes can be mapped to
    the same sites (:class:`mecrl.datasets.replay.GpsReplay`).
    """

    geo: GeoSites
    """The site table, with its projection to ``positions_m``."""


def dataset_sites_topology(
    *,
    dataset: str,
    cluster_radius_m: float | None = None,
    bandwidth_mbps: float = 1000.0,
    max_link_m: float | None = None,
    data_dir: str | None = None,
) -> DatasetTopology:
    """Sites of a real dataset, linked by Delaunay triangulation.

    Args:
        dataset: ``sf-wang2019``, ``sf-opencellid``, ``melbourne-cbd`` or
            ``melbourne-metro`` (see :mod:`mecrl.datasets.sitesets`).
        cluster_radius_m: Radius for merging cells into sites; None for the
            dataset's default (200 m for ``sf-opencellid``, else none).
        bandwidth_mbps: Bandwidth of every link.
        max_link_m: Longest triangulation link kept (spanning-tree links are
            always kept); None keeps every link.
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.

    Raises:
        ValueError: If a parameter is out of range or the file is unusable.
        DatasetNotFoundError: If the data folder or the file is missing.
    """
    check(
        _is_positive(bandwidth_mbps),
        "bandwidth_mbps",
        f"must be a finite number > 0, got {bandwidth_mbps!r}",
    )
    check(
        max_link_m is None or _is_positive(max_link_m),
        "max_link_m",
        f"must be a finite number > 0 or null, got {max_link_m!r}",
    )
    sites = load_sites(dataset, data_dir, cluster_radius_m)
    graph = link_sites(sites.positions_m, float(bandwidth_mbps), max_link_m)
    return DatasetTopology(
        positions_m=sites.positions_m,
        graph=graph,
        neighbours=_padded_neighbours(graph),
        name=f"dataset-sites({dataset}, {sites.n_sites} sites, "
        f"{graph.number_of_edges()} Delaunay links)",
        geo=sites,
    )


def link_sites(
    positions_m: FloatArray, bandwidth_mbps: float, max_link_m: float | None = None
) -> nx.Graph:
    """Link sites by Delaunay triangulation, keeping the graph connected.

    Args:
        positions_m: ``(M, 2)`` site positions.
        bandwidth_mbps: Bandwidth of every link.
        max_link_m: Longest triangulation link kept, or None for all; links
            of the Euclidean minimum spanning tree are kept whatever their
            length.

    Returns:
        A connected graph over ``0..M-1`` whose edges carry ``length_m`` and
        ``bandwidth_mbps``.
    """
    pairs = _delaunay_pairs(positions_m)
    lengths = np.linalg.norm(
        positions_m[pairs[:, 0]] - positions_m[pairs[:, 1]], axis=1
    )
    if max_link_m is not None:
        pairs = pairs[lengths <= max_link_m]
    tree = _spanning_tree_pairs(positions_m)
    pairs = np.unique(np.vstack([pairs, tree]), axis=0)
    lengths = np.linalg.norm(
        positions_m[pairs[:, 0]] - positions_m[pairs[:, 1]], axis=1
    )

    graph = nx.Graph()
    graph.add_nodes_from(range(len(positions_m)))
    for (i, j), length in zip(pairs.tolist(), lengths.tolist(), strict=True):
        graph.add_edge(i, j, length_m=length, bandwidth_mbps=bandwidth_mbps)
    return graph


def _delaunay_pairs(positions_m: FloatArray) -> IntArray:
    """Return the sorted ``(i, j)``, ``i < j``, edges of the triangulation."""
    if len(positions_m) < 3:
        return np.empty((0, 2), dtype=np.int64)
    try:
        triangles = Delaunay(positions_m).simplices
    except QhullError:
        # all sites on one line: the spanning tree alone links them
        return np.empty((0, 2), dtype=np.int64)
    edges = np.vstack(
        [triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [0, 2]]]
    )
    return np.unique(np.sort(edges, axis=1), axis=0).astype(np.int64)


def _spanning_tree_pairs(positions_m: FloatArray) -> IntArray:
    """Return the edges of the Euclidean minimum spanning tree, ``i < j``.

    Uses the dense distance matrix: ``M`` = 2,000 sites take 32 MB.
    """
    distance_m = cdist(positions_m, positions_m)
    distance_m[distance_m == 0.0] = _TINY_M
    np.fill_diagonal(distance_m, 0.0)
    tree = minimum_spanning_tree(distance_m).tocoo()
    pairs = np.column_stack((tree.row, tree.col)).astype(np.int64)
    return np.sort(pairs, axis=1).reshape(-1, 2)


def _padded_neighbours(graph: nx.Graph) -> IntArray:
    """Each site's linked sites in increasing order, padded with -1."""
    rows = [sorted(graph.adj[node]) for node in range(graph.number_of_nodes())]
    width = max(1, max(len(row) for row in rows))
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for node, row in enumerate(rows):
        table[node, : len(row)] = row
    return table


def _is_positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


TOPOLOGIES.add("dataset-sites", dataset_sites_topology)
