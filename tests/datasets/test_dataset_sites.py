"""Site tables of real cities: counts, extents, projection, clustering, links."""

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from mecrl.datasets import LocalProjection, cluster_points, load_sites
from mecrl.datasets.topology import dataset_sites_topology, link_sites

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, computed here independently of the library."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


@pytest.mark.parametrize(
    ("dataset", "rows", "sites", "lat_range", "lon_range"),
    [
        ("sf-wang2019", 209, 209, (37.55, 37.93), (-122.51, -122.13)),
        ("melbourne-cbd", 125, 125, (-37.83, -37.80), (144.95, 144.98)),
        ("melbourne-metro", 1464, 1464, (-38.47, -37.47), (144.53, 145.72)),
    ],
)
def test_site_tables_match_the_data_readme(
    data_dir: Path,
    dataset: str,
    rows: int,
    sites: int,
    lat_range: tuple[float, float],
    lon_range: tuple[float, float],
) -> None:
    table = load_sites(dataset, data_dir)

    assert table.rows == rows
    assert sum(table.dropped.values()) == 0
    assert table.n_sites == sites
    assert (
        lat_range[0]
        <= table.latitude_deg.min()
        < table.latitude_deg.max()
        <= lat_range[1]
    )
    assert (
        lon_range[0]
        <= table.longitude_deg.min()
        < table.longitude_deg.max()
        <= lon_range[1]
    )


def test_sf_cells_keep_their_file_order(data_dir: Path) -> None:
    cells = load_sites("sf-wang2019", data_dir)

    assert cells.site_ids[:3] == ("1", "2", "3")
    assert cells.site_ids[-1] == "209"
    # first row of sf_cells.csv
    assert cells.latitude_deg[0] == pytest.approx(37.598611, abs=1e-9)
    assert cells.longitude_deg[0] == pytest.approx(-122.405861, abs=1e-9)
    np.testing.assert_array_equal(cells.sites_of(np.array([1, 209, 999])), [0, 208, -1])


def test_opencellid_cells_cluster_into_sites_within_twice_the_radius(
    data_dir: Path,
) -> None:
    cells = load_sites("sf-opencellid", data_dir, cluster_radius_m=0.0)
    sites = load_sites("sf-opencellid", data_dir)  # default 200 m

    assert cells.rows == 1999
    assert cells.n_sites == 1999  # no two cells at exactly one position
    assert sites.cluster_radius_m == 200.0
    assert 300 < sites.n_sites < 800
    assert np.bincount(sites.site_of_row).sum() == 1999
    assert sites.projection == cells.projection  # both about the rows' centroid
    rows_m = cells.positions_m[cells.site_of_row]
    for site in range(sites.n_sites):
        members = rows_m[sites.site_of_row == site]
        if len(members) > 1:
            assert pdist(members).max() <= 400.0 + 1e-6
        np.testing.assert_allclose(members.mean(axis=0), sites.positions_m[site])


def test_cluster_points_merges_only_close_points() -> None:
    points = np.array([[0.0, 0.0], [150.0, 0.0], [1000.0, 0.0], [1000.0, 0.0]])

    np.testing.assert_array_equal(cluster_points(points, 100.0), [0, 0, 1, 1])
    np.testing.assert_array_equal(cluster_points(points, 0.0), [0, 1, 2, 2])
    with pytest.raises(ValueError, match="cluster_radius_m"):
        cluster_points(points, -1.0)


@pytest.mark.parametrize(
    ("dataset", "tolerance"),
    [("sf-opencellid", 0.003), ("sf-wang2019", 0.004), ("melbourne-metro", 0.008)],
)
def test_projected_distances_match_haversine(
    data_dir: Path, dataset: str, tolerance: float
) -> None:
    sites = load_sites(dataset, data_dir, cluster_radius_m=0.0)
    rng = np.random.default_rng(1)
    pairs = rng.integers(0, sites.n_sites, size=(300, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]

    for i, j in pairs:
        expected = haversine_m(
            sites.latitude_deg[i],
            sites.longitude_deg[i],
            sites.latitude_deg[j],
            sites.longitude_deg[j],
        )
        got = float(np.linalg.norm(sites.positions_m[i] - sites.positions_m[j]))
        assert got == pytest.approx(expected, rel=tolerance)


def test_projection_round_trips() -> None:
    projection = LocalProjection(37.76, -122.43)
    lat, lon = np.array([37.7, 37.8]), np.array([-122.5, -122.4])

    back = projection.to_degrees(projection.to_metres(lat, lon))

    np.testing.assert_allclose(back[0], lat, atol=1e-12)
    np.testing.assert_allclose(back[1], lon, atol=1e-12)
    with pytest.raises(ValueError, match="origin_lat_deg"):
        LocalProjection(91.0, 0.0)


@pytest.mark.parametrize("dataset", ["sf-wang2019", "sf-opencellid", "melbourne-cbd"])
def test_topologies_are_connected_planar_meshes(data_dir: Path, dataset: str) -> None:
    topology = dataset_sites_topology(dataset=dataset, data_dir=str(data_dir))
    graph = topology.graph
    n_sites = topology.n_sites

    assert nx.is_connected(graph)
    assert graph.number_of_edges() <= 3 * n_sites - 6  # planar
    assert min(dict(graph.degree()).values()) >= 1
    for i, j, attrs in list(graph.edges(data=True))[:50]:
        distance = np.linalg.norm(topology.positions_m[i] - topology.positions_m[j])
        assert attrs["length_m"] == pytest.approx(distance)
    # every movement neighbour is a linked site, and every link is a move
    rows, cols = np.nonzero(topology.neighbours >= 0)
    moves = {
        (int(r), int(topology.neighbours[r, c]))
        for r, c in zip(rows, cols, strict=True)
    }
    assert moves == {(i, j) for i, j in graph.edges} | {(j, i) for i, j in graph.edges}


def test_long_links_go_but_the_graph_stays_connected() -> None:
    # two clusters 10 km apart; their only link is the spanning tree's
    points = np.array(
        [
            [0.0, 0.0],
            [100.0, 0.0],
            [0.0, 100.0],
            [1e4, 0.0],
            [1e4 + 100, 0.0],
            [1e4, 100.0],
        ]
    )

    graph = link_sites(points, 100.0, max_link_m=500.0)

    assert nx.is_connected(graph)
    long_links = [e for e in graph.edges(data=True) if e[2]["length_m"] > 500.0]
    assert len(long_links) == 1


def test_collinear_and_duplicate_sites_are_still_linked() -> None:
    line = np.column_stack((np.arange(5) * 100.0, np.zeros(5)))
    twins = np.array([[0.0, 0.0], [0.0, 0.0], [50.0, 80.0], [90.0, 10.0]])

    assert nx.is_connected(link_sites(line, 10.0))
    assert nx.is_connected(link_sites(twins, 10.0))


def test_bad_topology_parameters_are_named(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        dataset_sites_topology(dataset="sf-wang2019", bandwidth_mbps=0.0)
    with pytest.raises(ValueError, match="max_link_m"):
        dataset_sites_topology(dataset="sf-wang2019", max_link_m=-5.0)
