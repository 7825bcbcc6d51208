from collections.abc import Callable

import numpy as np
import pytest
from scipy.spatial import cKDTree

from mecrl.mobility import (
    MOBILITY,
    GaussMarkov,
    MobilitySource,
    RandomWalk,
    RandomWaypoint,
    Replay,
    _SiteGrid,
)
from mecrl.network import (
    Topology,
    hex_topology,
    line_topology,
    random_geometric_topology,
)
from mecrl.rng import uniforms

HEX = hex_topology(rings=4, spacing_m=500.0)

SOURCES: dict[str, Callable[[], MobilitySource]] = {
    "random-walk-hex": lambda: RandomWalk(HEX, move_prob=0.3),
    "random-walk-ring": lambda: RandomWalk(
        line_topology(n_sites=12, ring=True), move_prob=0.5
    ),
    "random-waypoint": lambda: RandomWaypoint(HEX, slot_s=30.0, pause_slots=1),
    "gauss-markov": lambda: GaussMarkov(HEX, slot_s=30.0, alpha=0.6),
}

# Settings that reach the corners of each step: arrivals every few slots,
# a flat box, many reflections, a fixed start.
LINE = line_topology(n_sites=9)
CORNER_CASES: dict[str, Callable[[], MobilitySource]] = {
    "random-walk-line-start": lambda: RandomWalk(LINE, move_prob=1.0, start_site=4),
    "random-waypoint-fast": lambda: RandomWaypoint(
        HEX, slot_s=60.0, speed_min_mps=500.0, speed_max_mps=1000.0, pause_slots=2
    ),
    "random-waypoint-line": lambda: RandomWaypoint(
        LINE, slot_s=30.0, speed_min_mps=50.0, speed_max_mps=90.0
    ),
    "gauss-markov-fast": lambda: GaussMarkov(
        HEX, slot_s=60.0, alpha=0.9, mean_speed_mps=80.0
    ),
    "gauss-markov-line": lambda: GaussMarkov(
        LINE, slot_s=30.0, alpha=0.3, mean_speed_mps=50.0
    ),
}
ALL_SOURCES = {**SOURCES, **CORNER_CASES}


def _interior(topology: Topology) -> np.ndarray:
    return np.flatnonzero((topology.neighbours >= 0).all(axis=1))


def _moves(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (site before, site after) for every user and slot of a trace."""
    return trace[:-1].ravel(), trace[1:].ravel()


@pytest.mark.parametrize("name", SOURCES)
def test_trace_is_deterministic_per_key(name: str) -> None:
    source = SOURCES[name]()
    users = np.arange(200)
    first = source.trace(5, users, 20)
    assert first.shape == (20, 200)
    assert first.dtype == np.int64
    np.testing.assert_array_equal(first, SOURCES[name]().trace(5, users, 20))
    assert not np.array_equal(first, source.trace(6, users, 20))


@pytest.mark.parametrize("name", ALL_SOURCES)
def test_a_user_moves_the_same_alone_or_in_a_crowd(name: str) -> None:
    # A single user takes the scalar step and reads its draws 256 slots
    # ahead; 300 slots cross a refill.
    build = ALL_SOURCES[name]
    crowd = build().trace(11, np.arange(500), 300)
    alone = build().trace(11, np.array([7]), 300)
    pair = build().trace(11, np.array([7, 321]), 300)
    np.testing.assert_array_equal(alone[:, 0], crowd[:, 7])
    np.testing.assert_array_equal(pair, crowd[:, [7, 321]])


@pytest.mark.parametrize(
    "name", ["random-waypoint", "gauss-markov", *list(CORNER_CASES)[1:]]
)
def test_a_user_alone_keeps_the_exact_position_it_has_in_a_crowd(name: str) -> None:
    # Eight users, each alone, so that a function that rounds differently
    # from NumPy's (math.hypot does so about once in 200 calls) shows up.
    build = ALL_SOURCES[name]
    crowd = build()
    alone = [build() for _ in range(8)]
    assert isinstance(crowd, RandomWaypoint | GaussMarkov)
    crowd.reset(4, np.arange(300))
    for user, source in enumerate(alone):
        source.reset(4, np.array([user]))
    for _ in range(300):
        crowd.advance()
        for user, source in enumerate(alone):
            source.advance()
            assert isinstance(source, RandomWaypoint | GaussMarkov)
            bits = source.positions_m.view(np.uint64)
            expected = crowd.positions_m[user : user + 1].view(np.uint64)
            np.testing.assert_array_equal(bits, expected)


@pytest.mark.parametrize("users", [[7], [3, 1, 40]])
def test_walk_follows_the_uniform_draw_of_each_slot(users: list[int]) -> None:
    move_prob, ids = 0.3, np.array(users)
    walk = RandomWalk(HEX, move_prob=move_prob)
    sites = walk.reset(5, ids)
    start = (uniforms(5, ids, 0, 1)[:, 0] * HEX.n_sites).astype(np.int64)
    np.testing.assert_array_equal(sites, start)

    # Column K of the movement table, past its end, means staying.
    width = HEX.neighbours.shape[1]
    table = np.column_stack((HEX.neighbours, np.full(HEX.n_sites, -1)))
    for slot in range(1, 600):
        draw = uniforms(5, ids, slot, 1)[:, 0]
        column = np.minimum(draw * (width / move_prob), width).astype(np.int64)
        target = table[sites, column]
        sites = np.where(target >= 0, target, sites)
        np.testing.assert_array_equal(walk.advance(), sites)


def test_walk_gives_the_values_it_always_gave() -> None:
    # Recorded before the draws were read ahead and single users stepped in
    # Python numbers; the walk uses no floating-point function that could
    # round differently on another machine.
    trace = RandomWalk(HEX, move_prob=0.3).trace(11, np.array([7]), 600)[:, 0]
    assert trace[:24].tolist() == [
        *[54, 54, 54, 54, 55, 32, 32, 32, 32, 32, 32, 32],
        *[31, 31, 31, 32, 32, 32, 32, 33, 33, 33, 33, 17],
    ]
    assert int(trace.sum()) == 16716
    assert int(trace @ np.arange(600)) == 4702268


@pytest.mark.parametrize("name", SOURCES)
def test_an_empty_population_has_no_sites(name: str) -> None:
    trace = SOURCES[name]().trace(1, np.empty(0, dtype=np.int64), 3)
    assert trace.shape == (3, 0)


@pytest.mark.parametrize("name", SOURCES)
def test_trace_equals_reset_then_advance(name: str) -> None:
    source = SOURCES[name]()
    users = np.array([3, 1, 40])
    steps = [source.reset(2, users)] + [source.advance() for _ in range(5)]
    assert source.slot == 5
    np.testing.assert_array_equal(source.trace(2, users, 6), np.array(steps))


def test_returned_sites_are_copies() -> None:
    source = RandomWalk(HEX, move_prob=0.0)
    sites = source.reset(1, np.arange(10))
    expected = sites.copy()
    sites[:] = 0
    np.testing.assert_array_equal(source.advance(), expected)


def test_advance_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        RandomWalk(HEX, move_prob=0.5).advance()


def test_hex_walk_moves_with_the_given_probability() -> None:
    move_prob = 0.3
    trace = RandomWalk(HEX, move_prob=move_prob).trace(3, np.arange(5000), 8)
    before, after = _moves(trace)
    inside = np.isin(before, _interior(HEX))
    moved = before[inside] != after[inside]
    # Over about 20,000 interior moves the standard error is about 0.003.
    assert moved.mean() == pytest.approx(move_prob, abs=0.015)

    # Each of the six directions gets a sixth of the moves.
    table = HEX.neighbours[before[inside][moved]]
    direction = np.argmax(table == after[inside][moved][:, None], axis=1)
    shares = np.bincount(direction, minlength=6) / moved.sum()
    np.testing.assert_allclose(shares, 1 / 6, atol=0.02)


def test_walk_moves_only_to_neighbours() -> None:
    trace = RandomWalk(HEX, move_prob=0.8).trace(9, np.arange(1000), 10)
    before, after = _moves(trace)
    allowed = np.column_stack((HEX.neighbours[before], before))
    assert np.all((allowed == after[:, None]).any(axis=1))
    assert np.all((trace >= 0) & (trace < HEX.n_sites))


def test_walk_stays_at_the_edge_of_the_grid() -> None:
    corner = 1 + 3 * 3 * 4  # first cell of the outer ring: three directions lead out
    free = (HEX.neighbours[corner] >= 0).sum()
    walk = RandomWalk(HEX, move_prob=1.0, start_site=corner)
    walk.reset(0, np.arange(6000))
    stayed = (walk.advance() == corner).mean()
    assert stayed == pytest.approx(1 - free / 6, abs=0.02)


def test_ring_walk_wraps_around() -> None:
    ring = line_topology(n_sites=8, ring=True)
    walk = RandomWalk(ring, move_prob=1.0, start_site=0)
    assert np.all(walk.reset(4, np.arange(2000)) == 0)
    sites = walk.advance()
    assert set(sites.tolist()) == {1, 7}
    assert (sites == 7).mean() == pytest.approx(0.5, abs=0.04)


def test_ring_walk_moves_half_the_probability_each_way() -> None:
    move_prob = 0.4
    ring = line_topology(n_sites=10, ring=True)
    before, after = _moves(
        RandomWalk(ring, move_prob=move_prob).trace(1, np.arange(4000), 6)
    )
    step = (after - before) % 10
    assert (step == 1).mean() == pytest.approx(move_prob / 2, abs=0.01)
    assert (step == 9).mean() == pytest.approx(move_prob / 2, abs=0.01)
    assert np.isin(step, [0, 1, 9]).all()


def test_walk_start_is_uniform_or_fixed() -> None:
    starts = RandomWalk(HEX, move_prob=0.5).reset(0, np.arange(61_000))
    counts = np.bincount(starts, minlength=HEX.n_sites)
    assert counts.min() > 800
    assert counts.max() < 1200
    fixed = RandomWalk(HEX, move_prob=0.5, start_site=12).reset(0, np.arange(5))
    np.testing.assert_array_equal(fixed, 12)


def test_walk_with_zero_probability_never_moves() -> None:
    trace = RandomWalk(HEX, move_prob=0.0).trace(0, np.arange(100), 10)
    assert np.all(trace == trace[0])


def _assert_in_box_and_nearest(
    source: RandomWaypoint | GaussMarkov, sites: np.ndarray
) -> None:
    positions = source.positions_m
    low, high = HEX.positions_m.min(axis=0), HEX.positions_m.max(axis=0)
    assert np.all(positions >= low - 1e-6)
    assert np.all(positions <= high + 1e-6)
    distances = np.linalg.norm(positions[:, None, :] - HEX.positions_m[None], axis=2)
    chosen = distances[np.arange(len(sites)), sites]
    np.testing.assert_allclose(chosen, distances.min(axis=1))


@pytest.mark.parametrize(
    "source",
    [
        RandomWaypoint(HEX, slot_s=60.0, speed_min_mps=5.0, speed_max_mps=40.0),
        GaussMarkov(HEX, slot_s=60.0, alpha=0.9, mean_speed_mps=30.0),
    ],
    ids=["random-waypoint", "gauss-markov"],
)
def test_continuous_sources_stay_in_the_box_and_use_the_nearest_site(
    source: RandomWaypoint | GaussMarkov,
) -> None:
    sites = source.reset(8, np.arange(400))
    _assert_in_box_and_nearest(source, sites)
    for _ in range(15):
        sites = source.advance()
        _assert_in_box_and_nearest(source, sites)


SITE_LAYOUTS = {
    "hex": HEX.positions_m,
    "ring": line_topology(n_sites=12, ring=True).positions_m,
    "line": LINE.positions_m,
    "one-site": hex_topology(rings=0).positions_m,
    "random": random_geometric_topology(n_sites=150, seed=3).positions_m,
    "doubled": np.array([[0.0, 0.0], [0.0, 0.0], [900.0, 0.0], [450.0, 800.0]]),
    # A far outlier makes cells too coarse to list every candidate.
    "clustered": np.vstack(
        (np.random.default_rng(1).normal(0.0, 1.0, (20, 2)), [[1e5, 1e5]])
    ),
}


@pytest.mark.parametrize("name", SITE_LAYOUTS)
def test_site_grid_returns_the_tree_site_even_on_ties(name: str) -> None:
    positions = SITE_LAYOUTS[name]
    low, high = positions.min(axis=0), positions.max(axis=0)
    rng = np.random.default_rng(0)
    points = np.vstack(
        (
            low + rng.random((4000, 2)) * (high - low),
            # Around the box, partly outside it.
            low - 1.0 + rng.random((500, 2)) * (high - low + 2.0) * 1.2,
            positions,
            # Midpoints of two sites are tied, often to the last bit.
            ((positions[:, None] + positions[None]) / 2.0).reshape(-1, 2),
        )
    )
    tree = cKDTree(positions)
    expected = tree.query(points)[1]
    if len(positions) > 1:
        distance = tree.query(points, k=2)[0]
        assert np.any(distance[:, 0] == distance[:, 1])

    grid = _SiteGrid(positions)
    np.testing.assert_array_equal(grid.sites(points), expected)
    one_by_one = [grid.site(x, y) for x, y in points.tolist()]
    np.testing.assert_array_equal(one_by_one, expected)


def test_random_waypoint_respects_the_speed_limit() -> None:
    source = RandomWaypoint(HEX, slot_s=10.0, speed_min_mps=2.0, speed_max_mps=3.0)
    source.reset(0, np.arange(300))
    before = source.positions_m
    for _ in range(10):
        source.advance()
        after = source.positions_m
        stride = np.linalg.norm(after - before, axis=1)
        assert np.all(stride <= 30.0 + 1e-9)
        assert np.all(stride > 0)
        before = after


def test_random_waypoint_pauses_on_arrival() -> None:
    # Fast enough to reach any waypoint in one slot.
    source = RandomWaypoint(
        HEX, slot_s=60.0, speed_min_mps=1000.0, speed_max_mps=1000.0, pause_slots=2
    )
    source.reset(0, np.arange(50))
    positions = []
    for _ in range(7):
        source.advance()
        positions.append(source.positions_m)
    for slot in (0, 1, 3, 4):
        np.testing.assert_array_equal(positions[slot], positions[slot + 1])
    for slot in (2, 5):
        assert np.all(positions[slot] != positions[slot + 1])


def test_gauss_markov_with_full_memory_goes_straight() -> None:
    big = line_topology(n_sites=3, ring=True, spacing_m=100_000.0)
    source = GaussMarkov(big, slot_s=1.0, alpha=1.0, mean_speed_mps=1.0)
    source.reset(3, np.arange(20))
    positions = [source.positions_m]
    for _ in range(3):
        source.advance()
        positions.append(source.positions_m)
    strides = [positions[i + 1] - positions[i] for i in range(3)]
    np.testing.assert_allclose(strides[0], strides[1], atol=1e-6)
    np.testing.assert_allclose(strides[1], strides[2], atol=1e-6)


def test_gauss_markov_users_do_not_hug_the_walls() -> None:
    # With strong memory, a mean heading that is not mirrored at a wall
    # keeps pushing users into it; with mirroring they fill the box.
    source = GaussMarkov(
        HEX,
        slot_s=10.0,
        alpha=0.9,
        mean_speed_mps=8.0,
        speed_std_mps=1.0,
        heading_std_rad=0.2,
    )
    source.reset(1, np.arange(300))
    low, high = HEX.positions_m.min(axis=0), HEX.positions_m.max(axis=0)
    shares = []
    for slot in range(200):
        source.advance()
        relative = (source.positions_m - low) / (high - low)
        if slot >= 50:
            shares.append(((relative < 0.1) | (relative > 0.9)).any(axis=1).mean())
    # A uniform spread puts 1 - 0.8**2 = 36 % of users in the outer band.
    assert np.mean(shares) == pytest.approx(0.36, abs=0.06)


RECORDED = np.array(
    [
        [-1, 2, 0],
        [3, -1, 0],
        [-1, -1, 1],
        [4, 5, -1],
    ]
)


def test_replay_returns_the_recorded_sites_and_fills_gaps() -> None:
    replay = Replay(HEX, sites=RECORDED)
    trace = replay.trace(0, np.array([0, 1, 2]), 4)
    expected = [
        [3, 2, 0],
        [3, 2, 0],
        [3, 2, 1],
        [4, 5, 1],
    ]
    np.testing.assert_array_equal(trace, expected)
    np.testing.assert_array_equal(
        replay.trace(99, np.array([2, 0]), 2), [[0, 3], [0, 3]]
    )


def test_replay_errors_name_the_problem() -> None:
    replay = Replay(HEX, sites=RECORDED)
    with pytest.raises(ValueError, match="n_slots: the trace records only 4 slots"):
        replay.trace(0, np.array([0]), 5)
    with pytest.raises(ValueError, match=r"records users 0\.\.2, got user 3"):
        replay.reset(0, np.array([0, 3]))
    replay.reset(0, np.array([1]))
    for _ in range(3):
        replay.advance()
    with pytest.raises(ValueError, match="past its end"):
        replay.advance()
    with pytest.raises(ValueError, match=r"sites: site ids must be -1 or in \[0, 61\)"):
        Replay(HEX, sites=[[0, 61]])
    with pytest.raises(ValueError, match="found -2 at slot 1, user 0"):
        Replay(HEX, sites=[[0], [-2]])
    with pytest.raises(ValueError, match="user 1 never appears"):
        Replay(HEX, sites=[[0, -1], [1, -1]]).reset(0, np.array([0, 1]))
    with pytest.raises(ValueError, match="sites: expected a non-empty"):
        Replay(HEX, sites=[1, 2, 3])
    with pytest.raises(ValueError, match="sites: expected integer"):
        Replay(HEX, sites=[[0.0, 1.0]])


def test_registry_builds_each_source_by_name() -> None:
    # mecrl.datasets adds its replays when it is imported.
    assert set(MOBILITY.names()) >= {
        "random-walk",
        "random-waypoint",
        "gauss-markov",
        "replay",
    }
    walk = MOBILITY.get("random-walk")(HEX, move_prob=0.2)
    assert isinstance(walk, RandomWalk)
    replay = MOBILITY.get("replay")(HEX, sites=RECORDED)
    assert replay.reset(0, np.array([2])).tolist() == [0]
    with pytest.raises(KeyError, match="unknown mobility source 'teleport'"):
        MOBILITY.get("teleport")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomWalk(HEX, move_prob=1.5), "move_prob"),
        (lambda: RandomWalk(HEX, move_prob=float("nan")), "move_prob"),
        (lambda: RandomWalk(HEX, move_prob=0.5, start_site=61), "start_site"),
        (lambda: RandomWalk(HEX, move_prob=0.5, start_site=-1), "start_site"),
        (lambda: RandomWaypoint(HEX, slot_s=0.0), "slot_s"),
        (lambda: RandomWaypoint(HEX, slot_s=1.0, speed_min_mps=0.0), "speed_min_mps"),
        (
            lambda: RandomWaypoint(
                HEX, slot_s=1.0, speed_min_mps=5.0, speed_max_mps=4.0
            ),
            "speed_max_mps",
        ),
        (lambda: RandomWaypoint(HEX, slot_s=1.0, pause_slots=-1), "pause_slots"),
        (
            lambda: RandomWaypoint(HEX, slot_s=1.0, pause_slots=1.5),  # type: ignore[arg-type]
            "pause_slots",
        ),
        (lambda: GaussMarkov(HEX, slot_s=1.0, alpha=1.1), "alpha"),
        (lambda: GaussMarkov(HEX, slot_s=1.0, mean_speed_mps=-1.0), "mean_speed_mps"),
        (lambda: GaussMarkov(HEX, slot_s=1.0, speed_std_mps=-1.0), "speed_std_mps"),
        (lambda: GaussMarkov(HEX, slot_s=1.0, heading_std_rad=-1.0), "heading_std_rad"),
    ],
)
def test_bad_parameters_are_rejected(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("key", "users", "n_slots", "message"),
    [
        (-1, [0], 2, "key"),
        ("seed", [0], 2, "key"),
        (0, [[0, 1]], 2, "users"),
        (0, [-1], 2, "users"),
        (0, [0.5], 2, "users"),
        (0, [0], 0, "n_slots"),
    ],
)
def test_bad_run_arguments_are_rejected(
    key: object, users: object, n_slots: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RandomWalk(HEX, move_prob=0.5).trace(key, np.asarray(users), n_slots)  # type: ignore[arg-type]


def test_sampled_futures_go_on_along_the_heading_until_the_waypoint() -> None:
    source = RandomWaypoint(HEX, slot_s=30.0, speed_min_mps=1.0, speed_max_mps=14.0)
    tree = cKDTree(HEX.positions_m)
    start_m = np.array([[0.0, 0.0]])  # the centre site; the box edge is east
    velocity_mps = np.array([[10.0, 0.0]])  # 300 m a slot, towards it
    reach_m = HEX.positions_m[:, 0].max()
    sites = source.sample_access(
        start_m, velocity_mps, 3, 2000, np.random.default_rng(1)
    )

    assert sites.shape == (1, 2000, 3)
    straight = [tree.query(start_m[0] + [300.0 * k, 0.0])[1] for k in (1, 2, 3)]
    # a sample turns off the heading only once it reaches its waypoint, drawn
    # uniformly on the ray: within k slots with probability 300 k / reach_m
    for k in range(3):
        on_line = np.mean(sites[0, :, k] == straight[k])
        assert on_line >= 1.0 - 300.0 * (k + 1) / reach_m - 0.04
        assert on_line < 1.0  # some samples did reach their waypoint


def test_sampled_futures_of_a_user_at_rest_spread_over_the_box() -> None:
    source = RandomWaypoint(HEX, slot_s=30.0)
    sites = source.sample_access(
        np.zeros((2, 2)), np.zeros((2, 2)), 12, 300, np.random.default_rng(2)
    )

    assert len(np.unique(sites[:, :, -1])) > 20
    assert sites.min() >= 0
    assert sites.max() < HEX.n_sites
    again = source.sample_access(
        np.zeros((2, 2)), np.zeros((2, 2)), 12, 300, np.random.default_rng(2)
    )
    np.testing.assert_array_equal(sites, again)
