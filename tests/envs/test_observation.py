"""Candidates, masks and features, against a plain reference computation."""

import dataclasses

import numpy as np
import pytest

from mecrl.backend import SimBackend
from mecrl.config import ConfigError
from mecrl.constraints import Occupancy
from mecrl.costs import weighted_total
from mecrl.envs.fleet import FleetCore
from mecrl.envs.observation import (
    FEATURE_CAP,
    FEATURES,
    HISTORY_FEATURES,
    HOPS_SCALE,
    TABLE_BUDGET_MB,
    CandidateView,
    ObservationLayout,
    motion_features,
    past_slot_features,
    term_features,
)
from mecrl.evaluate import episode_key
from mecrl.problem import cost_tables, move_terms, placement_terms
from mecrl.scenario import Scenario, load_config, load_scenario


def reference_features(
    scenario: Scenario, core: FleetCore, n: int, k: int
) -> np.ndarray:
    """Features of candidate k of service n, from the model's definitions."""
    backend = core.backend
    cls, access, here = backend.cls[n], backend.access[n], backend.site[n]
    site = core.sites[n, k]
    if not core.mask[n, k]:
        return np.zeros(len(FEATURES), np.float32)
    weights = scenario.config.costs.weights
    placement = placement_terms(scenario, cls, access, site)
    moves = move_terms(scenario, np.array([cls]), np.array([here]), np.array([site]))
    cost = float(np.squeeze(weighted_total(placement, weights))) + float(
        np.squeeze(weighted_total(moves, weights))
    )
    load = 0.0
    if backend.occupancy is not None and np.isfinite(scenario.sites.cpu_cores[site]):
        demand = scenario.classes.cpu_cores[backend.cls]
        used = demand[backend.site == site].sum()
        load = used / scenario.sites.cpu_cores[site]
    latency_ms = scenario.config.radio_rtt_ms + scenario.network.rtt_ms[access, site]
    hops = scenario.network.hops
    values = [
        latency_ms / scenario.classes.slo_ms[cls],
        scenario.network.rtt_ms[here, site] / 100.0,
        float(moves["downtime"][0]) / 10.0,
        load,
        1.0,
        np.log1p(cost),
        hops[access, site] / HOPS_SCALE,
        hops[here, site] / HOPS_SCALE,
        float(site == access),
    ]
    return np.clip(np.array(values, dtype=np.float32), 0.0, FEATURE_CAP)


def random_actions(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(row)) for row in mask])


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("action_space", ["candidates", "sites"])
def test_features_match_their_definitions(coupled: bool, action_space: str) -> None:
    scenario = load_scenario("city-grid")
    core = FleetCore(scenario, 40, coupled=coupled, action_space=action_space)
    observation = core.reset(episode_key(2))
    layout = core.layout
    rng = np.random.default_rng(0)
    for slot in range(3):
        for n in rng.choice(40, 8, replace=False):
            for k in range(layout.n_candidates):
                row = np.array(
                    [layout.feature(observation[n], name)[k] for name in FEATURES]
                )
                np.testing.assert_allclose(
                    row, reference_features(scenario, core, n, k), rtol=2e-6, atol=1e-6
                )
        np.testing.assert_array_equal(
            layout.feature(observation, "feasible"), core.mask.astype(np.float32)
        )
        np.testing.assert_allclose(layout.progress(observation), slot / 120)
        core.step(random_actions(rng, core.mask))
        observation = core.observe()


def test_candidates_are_the_feasible_sites_nearest_the_user() -> None:
    scenario = load_scenario("city-grid")
    core = FleetCore(scenario, 60, coupled=False, action_space="candidates")
    core.reset(episode_key(0))
    backend, k = core.backend, core.layout.n_candidates
    latency = scenario.latency_ms

    for n in range(60):
        cls, access, here = backend.cls[n], backend.access[n], backend.site[n]
        sites, mask = core.sites[n], core.mask[n]
        assert sites[0] == here
        assert mask[0]
        assert here not in sites[1:]
        allowed = sites[1:][mask[1:]]
        assert len(set(allowed.tolist())) == len(allowed)
        # in order of latency from the user
        assert np.all(np.diff(latency[access, allowed]) >= 0)
        feasible = scenario.constraints.feasible(cls, here, np.arange(scenario.n_sites))
        if mask.all():
            # no feasible site left out is nearer than the farthest candidate
            others = np.setdiff1d(np.flatnonzero(feasible), sites)
            assert np.all(latency[access, others] >= latency[access, allowed[-1]])
        else:
            # fewer than K - 1 feasible sites to offer: all of them are offered
            assert set(np.flatnonzero(feasible)) - {here} <= set(allowed.tolist())
        assert len(sites) == k


def test_computed_and_tabulated_views_agree() -> None:
    scenario = load_scenario("city-grid")
    for coupled in (False, True):
        core = FleetCore(scenario, 50, coupled=coupled, action_space="candidates")
        core.reset(episode_key(1))
        tabulated = CandidateView(scenario, 8)
        computed = CandidateView(scenario, 8, table_budget_mb=0.0)
        assert tabulated.tabulated
        assert not computed.tabulated
        rng = np.random.default_rng(1)
        for _ in range(4):
            for a, b in zip(
                tabulated.view(core.backend), computed.view(core.backend), strict=True
            ):
                np.testing.assert_array_equal(a, b)
            core.step(random_actions(rng, core.mask))
            core.observe()


def test_layout_size_and_feature_slices() -> None:
    layout = ObservationLayout(3)
    observation = np.arange(layout.size, dtype=np.float32)

    assert layout.size == 3 * len(FEATURES) + 1
    np.testing.assert_array_equal(
        layout.feature(observation, FEATURES[1]), [1, 1 + len(FEATURES), 19]
    )
    assert layout.progress(observation) == layout.size - 1
    batch = np.stack([observation, observation])
    assert layout.feature(batch, "is_access").shape == (2, 3)


@pytest.mark.parametrize("k", [1, 63])
def test_candidate_count_must_fit_the_scenario(k: int) -> None:
    with pytest.raises(ValueError, match=r"n_candidates must lie in \[2, 62\]"):
        CandidateView(load_scenario("city-grid"), k)


def with_history(name: str, slots: int) -> Scenario:
    config = dataclasses.replace(load_config(name), history_slots=slots)
    return Scenario(config)


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("budget_mb", [TABLE_BUDGET_MB, 0.0])
def test_history_features_follow_the_users_recent_access_sites(
    coupled: bool, budget_mb: float
) -> None:
    h = 4
    scenario = with_history("city-grid", h)
    core = FleetCore(scenario, 30, coupled=coupled, action_space="candidates")
    core.view = CandidateView(scenario, scenario.config.candidates, budget_mb)
    observation = core.reset(episode_key(3))
    layout = core.layout
    assert layout.features == FEATURES + HISTORY_FEATURES
    assert observation.shape == (30, layout.size)
    seen = [core.backend.access.copy()] * h  # before the first slot: standing
    rng = np.random.default_rng(4)
    for _ in range(9):
        window = np.stack(seen[-h:], axis=1)  # (N, H)
        slo_ms = scenario.classes.slo_ms[core.backend.cls][:, None]
        latency = scenario.latency_ms
        recent = latency[window[:, :, None], core.sites[:, None, :]].mean(axis=1)
        oldest = latency[window[:, 0][:, None], core.sites]
        xy_m = scenario.topology.positions_m[: scenario.n_access]
        projected_m = 2 * xy_m[window[:, -1]] - xy_m[window[:, 0]]
        distance_m = np.linalg.norm(xy_m[None] - projected_m[:, None], axis=-1)
        nearest = distance_m <= distance_m.min(axis=1, keepdims=True) + 1e-6
        np.testing.assert_allclose(
            layout.feature(observation, "recent_latency_over_slo"),
            np.where(core.mask, recent / slo_ms, 0.0),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            layout.feature(observation, "oldest_latency_over_slo"),
            np.where(core.mask, oldest / slo_ms, 0.0),
            rtol=1e-6,
        )
        # the site nearest the projected point, any of them on a tie
        ahead = layout.feature(observation, "ahead_latency_over_slo")
        for n in range(30):
            expected = [
                np.where(core.mask[n], latency[site, core.sites[n]] / slo_ms[n], 0.0)
                for site in np.flatnonzero(nearest[n])
            ]
            assert any(np.allclose(ahead[n], row, rtol=1e-6) for row in expected)
        core.step(random_actions(rng, core.mask))
        seen.append(core.backend.access.copy())
        observation = core.observe()
    assert len({tuple(row) for row in np.stack(seen, 1)}) > 1  # users did move


def test_history_leaves_the_static_features_unchanged() -> None:
    plain = FleetCore(load_scenario("city-grid"), 20, False, "candidates")
    remembering = FleetCore(with_history("city-grid", 5), 20, False, "candidates")
    a, b = plain.reset(episode_key(5)), remembering.reset(episode_key(5))
    for name in FEATURES:
        np.testing.assert_array_equal(
            plain.layout.feature(a, name), remembering.layout.feature(b, name)
        )
    np.testing.assert_array_equal(
        plain.layout.progress(a), remembering.layout.progress(b)
    )
    assert remembering.layout.size == plain.layout.size + 3 * 8


def with_past_slots(name: str, slots: int) -> Scenario:
    config = dataclasses.replace(
        load_config(name), history_slots=slots, history_per_slot=True
    )
    return Scenario(config)


@pytest.mark.parametrize("budget_mb", [TABLE_BUDGET_MB, 0.0])
def test_per_slot_history_holds_each_past_access_sites_latency(
    budget_mb: float,
) -> None:
    h = 4
    scenario = with_past_slots("city-grid", h)
    core = FleetCore(scenario, 30, coupled=False, action_space="candidates")
    core.view = CandidateView(scenario, scenario.config.candidates, budget_mb)
    observation = core.reset(episode_key(3))
    layout = core.layout
    names = (
        "latency_over_slo_1_ago",
        "latency_over_slo_2_ago",
        "latency_over_slo_3_ago",
    )
    assert past_slot_features(3) == names
    assert layout.features == FEATURES + HISTORY_FEATURES + names
    seen = [core.backend.access.copy()] * h
    rng = np.random.default_rng(6)
    for _ in range(9):
        slo_ms = scenario.classes.slo_ms[core.backend.cls][:, None]
        for i, name in enumerate(names, start=1):
            latency = scenario.latency_ms[seen[-1 - i][:, None], core.sites]
            np.testing.assert_allclose(
                layout.feature(observation, name),
                np.where(core.mask, np.minimum(latency / slo_ms, FEATURE_CAP), 0.0),
                rtol=1e-6,
            )
        core.step(random_actions(rng, core.mask))
        seen.append(core.backend.access.copy())
        observation = core.observe()
    assert len({tuple(row) for row in np.stack(seen, 1)}) > 1  # users did move


def test_per_slot_history_leaves_the_other_features_unchanged() -> None:
    summary = FleetCore(with_history("city-grid", 5), 20, False, "candidates")
    per_slot = FleetCore(with_past_slots("city-grid", 5), 20, False, "candidates")
    a, b = summary.reset(episode_key(5)), per_slot.reset(episode_key(5))
    for name in summary.layout.features:
        np.testing.assert_array_equal(
            summary.layout.feature(a, name), per_slot.layout.feature(b, name)
        )
    assert per_slot.layout.size == summary.layout.size + 4 * 8


def test_per_slot_history_needs_two_slots() -> None:
    with pytest.raises(ConfigError, match="history_per_slot: needs history_slots >= 2"):
        dataclasses.replace(
            load_config("city-grid"), history_slots=1, history_per_slot=True
        )


def test_history_slots_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="history_slots: must be >= 0, got -1"):
        dataclasses.replace(load_config("city-grid"), history_slots=-1)


def test_candidates_capacity_rules_out_have_no_features() -> None:
    scenario = load_scenario("city-grid")
    # more services than the sites hold, each at its nearest feasible site
    backend = SimBackend(scenario, coupled=False)
    backend.reset(episode_key(0), np.arange(3_000))
    occupancy = Occupancy(scenario.constraints, len(scenario.classes.tenant_names))
    occupancy.add(backend.cls, backend.tenant, backend.site)
    backend.occupancy = occupancy
    view = CandidateView(scenario, scenario.config.candidates)

    sites, mask, observation = view.view(backend)

    static = view.static_view(backend.cls, backend.access, backend.site)
    np.testing.assert_array_equal(sites, static.sites)
    ruled_out = static.mask & ~mask
    assert ruled_out.sum() > 100
    table = view.layout.candidate_table(observation)
    assert not table[ruled_out].any()
    assert table[mask].any(axis=-1).all()


def with_motion(name: str, horizons: tuple[int, ...]) -> Scenario:
    config = dataclasses.replace(load_config(name), motion_horizons_slots=horizons)
    return Scenario(config)


@pytest.mark.parametrize("budget_mb", [TABLE_BUDGET_MB, 0.0])
def test_motion_features_project_each_user_at_its_last_velocity(
    budget_mb: float,
) -> None:
    horizons = (1, 4)
    scenario = with_motion("city-grid", horizons)
    core = FleetCore(scenario, 30, coupled=True, action_space="candidates")
    core.view = CandidateView(scenario, scenario.config.candidates, budget_mb)
    observation = core.reset(episode_key(3))
    layout = core.layout
    names = ("latency_over_slo_in_1", "latency_over_slo_in_4")
    assert motion_features(horizons) == names
    assert layout.features == FEATURES + names
    slot_s = scenario.config.slot_s
    xy_m = scenario.topology.positions_m[: scenario.n_access]
    before_m = core.backend.mobility.positions_m
    velocity_mps = np.zeros_like(before_m)  # unknown before the first move
    rng = np.random.default_rng(8)
    for _ in range(9):
        now_m = core.backend.mobility.positions_m
        slo_ms = scenario.classes.slo_ms[core.backend.cls]
        for h, name in zip(horizons, names, strict=True):
            projected_m = now_m + h * slot_s * velocity_mps
            distance_m = np.linalg.norm(xy_m[None] - projected_m[:, None], axis=-1)
            nearest = distance_m <= distance_m.min(axis=1, keepdims=True) + 1e-6
            got = layout.feature(observation, name)
            for n in range(30):
                expected = [
                    np.where(
                        core.mask[n],
                        np.minimum(
                            scenario.latency_ms[site, core.sites[n]] / slo_ms[n],
                            FEATURE_CAP,
                        ),
                        0.0,
                    )
                    for site in np.flatnonzero(nearest[n])
                ]
                assert any(np.allclose(got[n], row, rtol=1e-6) for row in expected)
        core.step(random_actions(rng, core.mask))
        before_m, velocity_mps = now_m, (core.backend.mobility.positions_m - now_m)
        velocity_mps /= slot_s
        observation = core.observe()
    assert np.abs(velocity_mps).max() > 0.5  # users did move
    assert not np.array_equal(before_m, core.backend.mobility.positions_m)


def test_motion_features_at_rest_repeat_the_current_latency() -> None:
    core = FleetCore(with_motion("city-grid", (2, 8)), 20, False, "candidates")
    observation = core.reset(episode_key(5))
    now = core.layout.feature(observation, "latency_over_slo")
    for name in ("latency_over_slo_in_2", "latency_over_slo_in_8"):
        np.testing.assert_array_equal(core.layout.feature(observation, name), now)


def test_motion_leaves_the_other_features_unchanged() -> None:
    plain = FleetCore(with_past_slots("city-grid", 5), 20, False, "candidates")
    config = dataclasses.replace(
        load_config("city-grid"),
        history_slots=5,
        history_per_slot=True,
        motion_horizons_slots=(3,),
    )
    moving = FleetCore(Scenario(config), 20, False, "candidates")
    a, b = plain.reset(episode_key(5)), moving.reset(episode_key(5))
    rng = np.random.default_rng(1)
    for _ in range(3):
        actions = random_actions(rng, plain.mask)
        plain.step(actions)
        moving.step(actions)
        a, b = plain.observe(), moving.observe()
    for name in plain.layout.features:
        np.testing.assert_array_equal(
            plain.layout.feature(a, name), moving.layout.feature(b, name)
        )
    assert moving.layout.features[-1] == "latency_over_slo_in_3"
    assert moving.layout.size == plain.layout.size + 8


def test_motion_needs_a_source_that_reports_positions() -> None:
    config = dataclasses.replace(load_config("wang-1d"), motion_horizons_slots=(2,))
    with pytest.raises(
        ConfigError,
        match="motion_horizons_slots: needs a mobility source that reports "
        "positions; 'random-walk' reports only access sites",
    ):
        Scenario(config)


def test_motion_horizons_must_be_positive() -> None:
    with pytest.raises(
        ConfigError,
        match=r"motion_horizons_slots: every horizon must be >= 1, got \[2, 0\]",
    ):
        dataclasses.replace(load_config("city-grid"), motion_horizons_slots=(2, 0))


@pytest.mark.parametrize("budget_mb", [TABLE_BUDGET_MB, 0.0])
def test_term_features_hold_each_terms_weighted_cost_at_the_candidate(
    budget_mb: float,
) -> None:
    terms = ("co_residency", "zone_crossing", "downtime")
    config = dataclasses.replace(load_config("city-grid"), term_features=terms)
    scenario = Scenario(config)
    core = FleetCore(scenario, 40, coupled=False, action_space="candidates")
    core.view = CandidateView(scenario, scenario.config.candidates, budget_mb)
    observation = core.reset(episode_key(6))
    layout = core.layout
    assert term_features(terms) == (
        "co_residency_cost",
        "zone_crossing_cost",
        "downtime_cost",
    )
    assert layout.features == FEATURES + term_features(terms)
    weights = config.costs.weights
    rng = np.random.default_rng(2)
    seen = {term: 0.0 for term in terms}
    for _ in range(4):
        backend = core.backend
        cls, here = backend.cls[:, None], backend.site[:, None]
        placement = placement_terms(scenario, cls, backend.access[:, None], core.sites)
        moves = move_terms(scenario, cls, here, core.sites)
        for term in terms:
            raw = placement[term] if term in placement else moves[term]
            expected = np.where(core.mask, getattr(weights, term) * raw, 0.0)
            got = layout.feature(observation, f"{term}_cost")
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
            seen[term] += float(got.sum())
        core.step(random_actions(rng, core.mask))
        observation = core.observe()
    assert all(total > 0 for total in seen.values())  # every term showed up


def test_term_features_reject_an_unknown_or_repeated_term() -> None:
    config = load_config("city-grid")
    with pytest.raises(ConfigError, match="term_features: unknown cost term 'latency'"):
        dataclasses.replace(config, term_features=("latency",))
    with pytest.raises(ConfigError, match="term_features: names a term twice"):
        dataclasses.replace(config, term_features=("downtime", "downtime"))


def with_planner(name: str, window_slots: int, **changes: object) -> Scenario:
    config = dataclasses.replace(
        load_config(name), plan_window_slots=window_slots, **changes
    )
    return Scenario(config)


def test_one_slot_plan_regret_is_the_slot_cost_over_the_cheapest() -> None:
    scenario = with_planner("city-grid", 1)
    core = FleetCore(scenario, 30, False, "candidates")
    core.reset(episode_key(4))
    rng = np.random.default_rng(2)
    for _ in range(3):
        core.step(random_actions(rng, core.mask))
    observation = core.observe()
    backend, tables = core.backend, cost_tables(scenario)
    here = backend.site[:, None]
    cost = (
        tables.placement[backend.cls[:, None], backend.access[:, None], core.sites]
        + tables.move[backend.cls[:, None], here, core.sites]
    )
    cost = np.where(core.mask, cost, np.inf)
    regret = np.where(core.mask, cost - cost.min(axis=1, keepdims=True), 0.0)

    layout = core.layout
    np.testing.assert_allclose(
        layout.feature(observation, "plan_regret"), regret, atol=1e-5
    )
    best = layout.feature(observation, "plan_best")
    assert (best[np.arange(30), cost.argmin(axis=1)] == 1.0).all()
    assert not best[~core.mask].any()


def test_plan_features_come_last_and_leave_the_others_unchanged() -> None:
    plain = FleetCore(with_motion("city-grid", (2,)), 10, False, "candidates")
    config = dataclasses.replace(
        load_config("city-grid"), motion_horizons_slots=(2,), plan_window_slots=6
    )
    planning = FleetCore(Scenario(config), 10, False, "candidates")
    a, b = plain.reset(episode_key(3)), planning.reset(episode_key(3))
    for name in plain.layout.features:
        np.testing.assert_array_equal(
            plain.layout.feature(a, name), planning.layout.feature(b, name)
        )
    assert planning.layout.features[-2:] == ("plan_regret", "plan_best")
    assert (planning.layout.feature(b, "plan_best").sum(axis=1) >= 1).all()


def test_plan_features_are_the_same_for_the_same_state() -> None:
    scenario = with_planner("city-grid", 8, plan_futures=16)
    first, second = (FleetCore(scenario, 12, False, "candidates") for _ in "ab")
    a, b = first.reset(episode_key(9)), second.reset(episode_key(9))
    for _ in range(4):
        actions = first.layout.feature(a, "plan_best").argmax(axis=1)
        first.step(actions)
        second.step(actions)
        a, b = first.observe(), second.observe()
    np.testing.assert_array_equal(a, b)
    assert first.backend.slot == 4


def test_planner_needs_random_waypoint_users() -> None:
    config = dataclasses.replace(load_config("wang-1d"), plan_window_slots=5)
    with pytest.raises(
        ConfigError,
        match="plan_window_slots: the planner draws futures of random-waypoint "
        "users; 'random-walk' cannot be drawn forward",
    ):
        Scenario(config)


@pytest.mark.parametrize(
    ("field", "value"), [("plan_window_slots", -1), ("plan_futures", 0)]
)
def test_planner_settings_must_be_in_range(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{field}: must be >= "):
        dataclasses.replace(load_config("city-grid"), **{field: value})
