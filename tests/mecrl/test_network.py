import itertools

import networkx as nx
import numpy as np
import pytest

from mecrl.network import (
    HEX_DIRECTIONS,
    TOPOLOGIES,
    CloudLink,
    Network,
    Topology,
    hex_topology,
    line_topology,
    random_geometric_topology,
)


def _hop_ms(spacing_m: float, per_hop_ms: float = 0.5) -> float:
    return spacing_m / 2.0e8 * 1000.0 + per_hop_ms


def _path_topology(bandwidths_mbps: list[float]) -> Topology:
    """Sites 0..n in a row, 100 m apart, with the given link bandwidths."""
    n_sites = len(bandwidths_mbps) + 1
    graph = nx.Graph()
    for i, bandwidth in enumerate(bandwidths_mbps):
        graph.add_edge(i, i + 1, length_m=100.0, bandwidth_mbps=bandwidth)
    return Topology(
        positions_m=np.column_stack((np.arange(n_sites) * 100.0, np.zeros(n_sites))),
        graph=graph,
        neighbours=np.zeros((n_sites, 0), dtype=np.int64),
        name="path",
    )


def _assert_metric(network: Network) -> None:
    rtt = network.rtt_ms
    np.testing.assert_array_equal(rtt, rtt.T)
    np.testing.assert_array_equal(np.diag(rtt), 0.0)
    assert np.all(rtt[~np.eye(len(rtt), dtype=bool)] > 0)
    through = rtt[:, :, None] + rtt[None, :, :]
    assert np.all(rtt[:, None, :] <= through + 1e-9)
    np.testing.assert_array_equal(np.diag(network.hops), 0)
    assert np.all(np.isinf(np.diag(network.bandwidth_mbps)))
    np.testing.assert_array_equal(network.bandwidth_mbps, network.bandwidth_mbps.T)


@pytest.mark.parametrize(
    "topology",
    [
        line_topology(n_sites=7),
        line_topology(n_sites=9, ring=True),
        hex_topology(rings=2),
        random_geometric_topology(n_sites=30, radius_m=2500.0, seed=4),
    ],
    ids=["line", "ring", "hex", "random-geometric"],
)
def test_rtt_is_a_metric(topology: Topology) -> None:
    _assert_metric(Network.from_topology(topology))
    cloud = CloudLink(rtt_ms=3.0, bandwidth_mbps=50.0)
    _assert_metric(Network.from_topology(topology, cloud=cloud))


def test_line_rtt_matches_the_formula() -> None:
    network = Network.from_topology(
        line_topology(n_sites=6, spacing_m=2000.0), per_hop_ms=0.25
    )
    sites = np.arange(6)
    distance = np.abs(sites[:, None] - sites[None, :])
    np.testing.assert_allclose(network.rtt_ms, 2 * distance * _hop_ms(2000.0, 0.25))
    np.testing.assert_array_equal(network.hops, distance)
    assert network.cloud_site is None
    assert network.n_nodes == 6


def test_ring_rtt_takes_the_shorter_way_round() -> None:
    topology = line_topology(n_sites=10, ring=True, spacing_m=500.0)
    network = Network.from_topology(topology)
    sites = np.arange(10)
    gap = np.abs(sites[:, None] - sites[None, :])
    hops = np.minimum(gap, 10 - gap)
    np.testing.assert_allclose(network.rtt_ms, 2 * hops * _hop_ms(500.0))
    np.testing.assert_array_equal(topology.neighbours[0], [9, 1])
    np.testing.assert_array_equal(topology.neighbours[9], [8, 0])


def test_line_neighbours_stop_at_the_ends() -> None:
    topology = line_topology(n_sites=4)
    np.testing.assert_array_equal(
        topology.neighbours, [[-1, 1], [0, 2], [1, 3], [2, -1]]
    )
    np.testing.assert_allclose(topology.positions_m[:, 0], [0, 1000, 2000, 3000])


def test_propagation_and_extra_delay_add_up() -> None:
    topology = _path_topology([1000.0, 1000.0])
    topology.graph.edges[1, 2]["delay_ms"] = 4.0
    network = Network.from_topology(topology, per_hop_ms=1.0, propagation_m_per_s=1.0e5)
    # 100 m at 1e5 m/s is 1 ms; each link adds 1 ms per hop.
    assert network.rtt_ms[0, 1] == pytest.approx(4.0)
    assert network.rtt_ms[0, 2] == pytest.approx(2 * (2.0 + 6.0))


@pytest.mark.parametrize("rings", [0, 1, 2, 3, 5])
def test_hex_has_one_plus_three_r_r_plus_one_cells(rings: int) -> None:
    topology = hex_topology(rings=rings)
    assert topology.n_sites == 1 + 3 * rings * (rings + 1)
    assert topology.neighbours.shape == (topology.n_sites, 6)
    assert topology.graph.number_of_nodes() == topology.n_sites


def test_hex_cells_are_ordered_ring_by_ring() -> None:
    rings = 4
    network = Network.from_topology(hex_topology(rings=rings))
    expected = np.concatenate([[0]] + [[r] * (6 * r) for r in range(1, rings + 1)])
    np.testing.assert_array_equal(network.hops[0], expected)


def test_hex_neighbours_are_adjacent_and_consistent() -> None:
    rings, spacing_m = 3, 750.0
    topology = hex_topology(rings=rings, spacing_m=spacing_m)
    table, positions = topology.neighbours, topology.positions_m
    np.testing.assert_allclose(positions[0], [0.0, 0.0])
    interior = 1 + 3 * (rings - 1) * rings
    assert np.all(table[:interior] >= 0)
    assert np.all((table[interior:] == -1).any(axis=1))
    for cell in range(topology.n_sites):
        for direction, other in enumerate(table[cell]):
            if other < 0:
                continue
            # Opposite directions are three apart in HEX_DIRECTIONS.
            assert table[other, (direction + 3) % 6] == cell
            gap_m = np.linalg.norm(positions[other] - positions[cell])
            assert gap_m == pytest.approx(spacing_m)
            assert topology.graph.has_edge(cell, other)
    assert topology.graph.number_of_edges() == (table >= 0).sum() // 2
    assert len(HEX_DIRECTIONS) == 6


def test_bandwidth_is_the_bottleneck_of_the_path() -> None:
    network = Network.from_topology(_path_topology([1000.0, 10.0, 400.0]))
    assert network.bandwidth_mbps[0, 1] == 1000.0
    assert network.bandwidth_mbps[0, 2] == 10.0
    assert network.bandwidth_mbps[0, 3] == 10.0
    assert network.bandwidth_mbps[2, 3] == 400.0
    assert network.bandwidth_mbps[3, 1] == 10.0


def test_bandwidth_follows_the_fastest_path_not_the_widest() -> None:
    topology = _path_topology([1000.0, 1000.0])
    topology.graph.add_edge(0, 2, length_m=100.0, bandwidth_mbps=5.0)
    network = Network.from_topology(topology)
    assert network.hops[0, 2] == 1
    assert network.bandwidth_mbps[0, 2] == 5.0


def test_tables_match_networkx_paths_on_a_random_graph() -> None:
    topology = random_geometric_topology(n_sites=25, radius_m=3000.0, seed=3)
    generator = np.random.default_rng(0)
    for _, _, attrs in topology.graph.edges(data=True):
        attrs["bandwidth_mbps"] = generator.uniform(10.0, 1000.0)
        attrs["delay"] = _hop_ms(attrs["length_m"])
    network = Network.from_topology(topology)
    for source in range(topology.n_sites):
        lengths, paths = nx.single_source_dijkstra(
            topology.graph, source, weight="delay"
        )
        for target, path in paths.items():
            assert network.rtt_ms[source, target] == pytest.approx(2 * lengths[target])
            assert network.hops[source, target] == len(path) - 1
            links = itertools.pairwise(path)
            slowest = min(
                (topology.graph.edges[a, b]["bandwidth_mbps"] for a, b in links),
                default=np.inf,
            )
            assert network.bandwidth_mbps[source, target] == slowest


def test_cloud_rtt_is_exact_and_bottleneck_applies() -> None:
    topology = hex_topology(rings=2)
    cloud = CloudLink(rtt_ms=37.3, bandwidth_mbps=80.0)
    network = Network.from_topology(topology, cloud=cloud)
    n_sites = topology.n_sites
    assert network.rtt_ms.shape == (n_sites + 1, n_sites + 1)
    assert network.cloud_site == n_sites
    assert np.all(network.rtt_ms[:n_sites, n_sites] == 37.3)
    assert np.all(network.rtt_ms[n_sites, :n_sites] == 37.3)
    assert np.all(network.bandwidth_mbps[:n_sites, n_sites] == 80.0)
    assert np.all(network.hops[:n_sites, n_sites] == 1)
    plain = Network.from_topology(topology)
    np.testing.assert_array_equal(network.rtt_ms[:n_sites, :n_sites], plain.rtt_ms)


def test_far_sites_may_talk_through_the_cloud() -> None:
    topology = line_topology(n_sites=40)
    network = Network.from_topology(topology, cloud=CloudLink(5.0, 100.0))
    assert network.rtt_ms[0, 39] == pytest.approx(10.0)
    assert network.hops[0, 39] == 2
    assert network.bandwidth_mbps[0, 39] == 100.0
    assert network.rtt_ms[0, 1] == pytest.approx(2 * _hop_ms(1000.0))


def test_random_geometric_is_connected_even_when_sparse() -> None:
    topology = random_geometric_topology(n_sites=60, area_m=10_000.0, radius_m=300.0)
    graph = topology.graph
    assert nx.is_connected(graph)
    assert np.all((topology.positions_m >= 0) & (topology.positions_m <= 10_000.0))
    for i, j, attrs in graph.edges(data=True):
        gap_m = np.linalg.norm(topology.positions_m[i] - topology.positions_m[j])
        assert attrs["length_m"] == pytest.approx(gap_m)
    for node in range(topology.n_sites):
        row = topology.neighbours[node]
        assert sorted(row[row >= 0].tolist()) == sorted(graph.adj[node])
    assert np.all(np.isfinite(Network.from_topology(topology).rtt_ms))


def test_random_geometric_joins_pieces_through_closest_pairs() -> None:
    # With no pair within the radius every site is its own piece, and joining
    # pieces through their closest pairs builds the Euclidean minimum
    # spanning tree.
    topology = random_geometric_topology(n_sites=40, radius_m=1.0, seed=1)
    positions = topology.positions_m
    complete = nx.Graph()
    for i in range(topology.n_sites):
        for j in range(i + 1, topology.n_sites):
            complete.add_edge(i, j, weight=np.linalg.norm(positions[i] - positions[j]))
    spanning = nx.minimum_spanning_tree(complete)
    lengths = sorted(a["length_m"] for _, _, a in topology.graph.edges(data=True))
    expected = sorted(a["weight"] for _, _, a in spanning.edges(data=True))
    np.testing.assert_allclose(lengths, expected)


def test_random_geometric_is_deterministic_per_seed() -> None:
    first = random_geometric_topology(n_sites=25, seed=9)
    again = random_geometric_topology(n_sites=25, seed=9)
    other = random_geometric_topology(n_sites=25, seed=10)
    np.testing.assert_array_equal(first.positions_m, again.positions_m)
    assert sorted(first.graph.edges) == sorted(again.graph.edges)
    np.testing.assert_array_equal(first.neighbours, again.neighbours)
    assert not np.array_equal(first.positions_m, other.positions_m)


def test_registry_builds_each_topology_by_name() -> None:
    assert {"line", "hex", "random-geometric"} <= set(TOPOLOGIES.names())
    assert TOPOLOGIES.get("hex")(rings=1).n_sites == 7
    assert TOPOLOGIES.get("line")(n_sites=3, ring=True).neighbours.shape == (3, 2)
    assert TOPOLOGIES.get("random-geometric")(n_sites=5, seed=2).n_sites == 5
    with pytest.raises(KeyError, match=r"known: .*hex, line, random-geometric"):
        TOPOLOGIES.get("torus")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: line_topology(n_sites=0), "n_sites"),
        (lambda: line_topology(n_sites=2, ring=True), "n_sites"),
        (lambda: line_topology(n_sites=True), "n_sites"),
        (lambda: line_topology(n_sites=3, spacing_m=-1.0), "spacing_m"),
        (lambda: line_topology(n_sites=3, bandwidth_mbps=0.0), "bandwidth_mbps"),
        (lambda: hex_topology(rings=-1), "rings"),
        (lambda: hex_topology(rings=1, spacing_m=float("nan")), "spacing_m"),
        (lambda: random_geometric_topology(n_sites=3, area_m=0.0), "area_m"),
        (lambda: random_geometric_topology(n_sites=3, radius_m=-2.0), "radius_m"),
        (lambda: random_geometric_topology(n_sites=3, seed=-1), "seed"),
        (lambda: CloudLink(rtt_ms=0.0, bandwidth_mbps=1.0), "rtt_ms"),
        (lambda: CloudLink(rtt_ms=1.0, bandwidth_mbps=-1.0), "bandwidth_mbps"),
        (
            lambda: Network.from_topology(line_topology(n_sites=2), per_hop_ms=-0.1),
            "per_hop_ms",
        ),
        (
            lambda: Network.from_topology(
                line_topology(n_sites=2), propagation_m_per_s=0.0
            ),
            "propagation_m_per_s",
        ),
    ],
)
def test_bad_parameters_are_rejected(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_malformed_topologies_are_rejected() -> None:
    graph = nx.Graph([(0, 1)])
    graph.add_node(2)
    positions = np.zeros((3, 2))
    table = np.full((3, 1), -1)
    with pytest.raises(ValueError, match="graph: must be connected"):
        Topology(positions_m=positions, graph=graph, neighbours=table, name="x")
    graph.add_edge(1, 2)
    with pytest.raises(ValueError, match="has no 'length_m'"):
        Topology(positions_m=positions, graph=graph, neighbours=table, name="x")
    nx.set_edge_attributes(graph, 10.0, "length_m")
    nx.set_edge_attributes(graph, 10.0, "bandwidth_mbps")
    with pytest.raises(ValueError, match="neighbours"):
        Topology(positions_m=positions, graph=graph, neighbours=table + 5, name="x")
    with pytest.raises(ValueError, match="positions_m"):
        Topology(positions_m=positions[:, :1], graph=graph, neighbours=table, name="x")
    Topology(positions_m=positions, graph=graph, neighbours=table, name="x")
