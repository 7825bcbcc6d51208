"""The Gymnasium environments: API conformance, determinism, masks, infos."""

import dataclasses
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from mecrl.costs import TERM_NAMES
from mecrl.envs import ENV_IDS, FleetEnv, FleetVectorEnv, MigrationEnv
from mecrl.scenario import Scenario, load_config, load_scenario


def random_action(rng: np.random.Generator, mask: np.ndarray) -> int:
    return int(rng.choice(np.flatnonzero(mask)))


def random_actions(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    return np.array([random_action(rng, row) for row in mask])


def short_city(slots: int = 6) -> Scenario:
    return Scenario(dataclasses.replace(load_config("city-grid"), episode_slots=slots))


def weighted(terms: dict[str, Any], scenario: Scenario) -> Any:
    weights = scenario.config.costs.weights
    return sum(getattr(weights, name) * np.asarray(terms[name]) for name in TERM_NAMES)


def assert_same(a: Any, b: Any) -> None:
    """Assert nested observations, rewards and infos are identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        np.testing.assert_array_equal(a, b)


def checked(env: gym.Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_env_passes_the_checker(env_id: str) -> None:
    checked(gym.make(env_id).unwrapped)


@pytest.mark.parametrize("action_space", ["candidates", "sites"])
@pytest.mark.parametrize("scenario", ["city-grid", "hex-2d", "wang-1d"])
def test_migration_env_passes_the_checker_on_every_scenario(
    scenario: str, action_space: str
) -> None:
    env = gym.make("mecrl/Migration-v0", scenario=scenario, action_space=action_space)

    checked(env.unwrapped)

    n_sites = load_scenario(scenario).n_sites
    expected = n_sites if action_space == "sites" else 8
    assert env.action_space == gym.spaces.Discrete(expected)


def test_registered_ids_point_at_the_documented_classes() -> None:
    assert isinstance(gym.make("mecrl/Migration-v0").unwrapped, MigrationEnv)
    sites = gym.make("mecrl/MigrationSites-v0").unwrapped
    assert sites.scenario.config.name == "wang-1d"
    assert sites.action_space.n == sites.scenario.n_sites == 21
    assert isinstance(gym.make("mecrl/Fleet-v0").unwrapped, FleetEnv)


def run_single(seed: int, service: int = 0) -> list[Any]:
    env = MigrationEnv("city-grid")  # a whole episode of 120 slots
    rng = np.random.default_rng(0)
    observation, info = env.reset(seed=seed, options={"service": service})
    trace: list[Any] = [observation, info]
    truncated = False
    while not truncated:
        action = random_action(rng, env.action_masks())
        observation, reward, terminated, truncated, info = env.step(action)
        trace += [observation, reward, terminated, info]
    return trace


def run_fleet(seed: int, n_services: int = 12) -> list[Any]:
    env = FleetEnv("city-grid", n_services=n_services)
    rng = np.random.default_rng(0)
    observation, info = env.reset(seed=seed)
    trace: list[Any] = [observation, info]
    truncated = False
    while not truncated:
        actions = random_actions(rng, env.action_masks().reshape(n_services, -1))
        observation, reward, terminated, truncated, info = env.step(actions)
        trace += [observation, reward, terminated, info]
    return trace


def run_vector(env: gym.vector.VectorEnv, seed: int, steps: int) -> list[Any]:
    rng = np.random.default_rng(0)
    observation, info = env.reset(seed=seed)
    trace: list[Any] = [observation, info]
    for _ in range(steps):
        actions = random_actions(rng, env.action_masks())
        trace += list(env.step(actions))
    return trace


@pytest.mark.parametrize("run", [run_single, run_fleet])
def test_same_seed_same_episode_and_other_seed_another(run: Any) -> None:
    first, again, other = run(3), run(3), run(4)

    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        assert_same(a, b)
    assert not np.array_equal(first[0], other[0])


def test_vector_env_is_deterministic_over_an_episode_and_its_reset() -> None:
    def make() -> FleetVectorEnv:
        return FleetVectorEnv(10, short_city(5))

    # 7 steps cross the autoreset after step 5
    first, again = run_vector(make(), 11, 7), run_vector(make(), 11, 7)
    other = run_vector(make(), 12, 7)

    for a, b in zip(first, again, strict=True):
        assert_same(a, b)
    assert not np.array_equal(first[0], other[0])


def test_make_vec_builds_the_fleet_vector_env() -> None:
    def make() -> gym.vector.VectorEnv:
        return gym.make_vec(
            "mecrl/Fleet-v0", num_envs=6, vectorization_mode="vector_entry_point"
        )

    env = make()

    assert isinstance(env.unwrapped, FleetVectorEnv)
    assert env.num_envs == 6
    observation, _ = env.reset(seed=0)
    assert observation.shape == (6, env.unwrapped.layout.size)
    assert env.observation_space.contains(observation)
    for a, b in zip(run_vector(make(), 5, 3), run_vector(make(), 5, 3), strict=True):
        assert_same(a, b)


@pytest.mark.parametrize(
    ("scenario", "services"), [("city-grid", (0, 3, 7)), ("hex-2d", (1, 4))]
)
def test_single_env_reproduces_its_service_in_an_uncoupled_fleet(
    scenario: str, services: tuple[int, ...]
) -> None:
    world = load_scenario(scenario)
    world = Scenario(dataclasses.replace(world.config, episode_slots=25))
    fleet = FleetVectorEnv(max(services) + 2, world, coupled=False)
    seed = 17
    for n in services:
        single = MigrationEnv(world)
        rng = np.random.default_rng(n)
        observation, _ = single.reset(seed=seed, options={"service": n})
        fleet_observation, _ = fleet.reset(seed=seed)
        for _ in range(world.config.episode_slots):
            np.testing.assert_array_equal(observation, fleet_observation[n])
            np.testing.assert_array_equal(
                single.action_masks(), fleet.action_masks()[n]
            )
            np.testing.assert_array_equal(
                single.candidate_sites(), fleet.candidate_sites()[n]
            )
            action = random_action(rng, single.action_masks())
            actions = random_actions(rng, fleet.action_masks())
            actions[n] = action
            observation, reward, _, _, info = single.step(action)
            fleet_observation, rewards, _, _, infos = fleet.step(actions)
            assert reward == rewards[n]
            for name in TERM_NAMES:
                assert info["terms"][name] == infos["terms"][name][n]


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["city-grid", "wang-1d"]),
    world_seed=st.integers(0, 100),
    host_fraction=st.sampled_from([1.0, 0.7]),
    seed=st.integers(0, 2**31),
    service=st.integers(0, 5),
    action_space=st.sampled_from(["candidates", "sites"]),
)
def test_single_env_matches_the_uncoupled_fleet_in_random_worlds(
    name: str,
    world_seed: int,
    host_fraction: float,
    seed: int,
    service: int,
    action_space: str,
) -> None:
    config = load_config(name)
    sites = dataclasses.replace(config.sites, host_fraction=host_fraction)
    world = Scenario(
        dataclasses.replace(config, seed=world_seed, sites=sites, episode_slots=10)
    )
    single = MigrationEnv(world, action_space=action_space)
    fleet = FleetVectorEnv(6, world, coupled=False, action_space=action_space)
    rng = np.random.default_rng(seed)
    observation, info = single.reset(seed=seed, options={"service": service})
    fleet_observation, _ = fleet.reset(seed=seed)

    for _ in range(10):
        np.testing.assert_array_equal(observation, fleet_observation[service])
        np.testing.assert_array_equal(
            single.action_masks(), fleet.action_masks()[service]
        )
        # now and then an action the mask forbids, to compare refusals too
        actions = rng.integers(0, single.action_space.n, 6)
        if rng.random() < 0.7:
            actions = random_actions(rng, fleet.action_masks())
        observation, reward, _, _, info = single.step(int(actions[service]))
        fleet_observation, rewards, _, truncated, infos = fleet.step(actions)

        assert reward == rewards[service]
        assert info["refused"] == infos["refused"][service]
        assert info["moved"] == infos["moved"][service]
        for term in TERM_NAMES:
            assert info["terms"][term] == infos["terms"][term][service]
        if not truncated.any():  # the fleet resets itself at the end
            assert info["site"] == fleet.core.backend.site[service]


def test_single_env_info_reports_every_term_and_the_reward() -> None:
    scenario = load_scenario("city-grid")
    env = MigrationEnv(scenario)
    rng = np.random.default_rng(1)
    for service in range(4):
        _, info = env.reset(seed=service, options={"service": service})
        assert info["site"] == env.candidate_sites()[0]
        for _ in range(15):
            mask = env.action_masks()
            assert mask[0]
            assert env.candidate_sites()[0] == env.backend.site[0]
            before = env.backend.site[0]
            _, reward, terminated, _, info = env.step(random_action(rng, mask))

            assert not terminated
            assert set(info["terms"]) == set(TERM_NAMES)
            assert reward == -info["cost"]
            assert info["cost"] == pytest.approx(weighted(info["terms"], scenario))
            assert info["moved"] == (info["site"] != before)
            assert not info["refused"]
            assert info["access"] == env.backend.access[0]


def test_fleet_infos_report_every_term_and_the_rewards() -> None:
    scenario = short_city()
    vector = FleetVectorEnv(20, scenario)
    single = FleetEnv(scenario, n_services=20)
    rng = np.random.default_rng(2)
    vector.reset(seed=1)
    single.reset(seed=1)
    for _ in range(4):
        actions = random_actions(rng, vector.action_masks())
        _, rewards, terminated, _, infos = vector.step(actions)
        _, reward, _, _, info = single.step(actions)

        assert set(infos["terms"]) == set(TERM_NAMES) == set(info["terms"])
        np.testing.assert_array_equal(rewards, -infos["cost"])
        np.testing.assert_allclose(infos["cost"], weighted(infos["terms"], scenario))
        assert not terminated.any()
        # the same fleet, stepped as one environment, reports the totals
        assert reward == -info["cost"]
        assert info["cost"] == pytest.approx(rewards.sum() * -1)
        assert info["moves"] == infos["moved"].sum()
        for name in TERM_NAMES:
            assert info["terms"][name] == pytest.approx(infos["terms"][name].sum())


def test_fleet_env_flat_mask_matches_the_vector_mask() -> None:
    scenario = short_city()
    vector, single = FleetVectorEnv(9, scenario), FleetEnv(scenario, n_services=9)
    vector.reset(seed=4)
    single.reset(seed=4)

    np.testing.assert_array_equal(
        single.action_masks(), vector.action_masks().reshape(-1)
    )
    assert vector.action_masks()[:, 0].all()


def test_masked_action_is_refused_and_the_service_stays() -> None:
    # on city-grid every site is an action; sandboxed services cannot use
    # runc-only hosts, and state never moves from west to east
    env = MigrationEnv("city-grid", action_space="sites")
    for service in range(20):
        _, info = env.reset(seed=0, options={"service": service})
        mask = env.action_masks()
        if mask.all():
            continue
        action = int(np.flatnonzero(~mask)[0])

        _, reward, _, _, step_info = env.step(action)

        assert step_info["refused"]
        assert not step_info["moved"]
        assert step_info["site"] == info["site"]
        for name in ("downtime", "bytes_moved", "zone_crossing", "migration"):
            assert step_info["terms"][name] == 0.0
        assert reward == -step_info["cost"]
        return
    pytest.fail("no service of the first 20 had a masked site")


def test_fleet_masked_action_is_refused() -> None:
    env = FleetVectorEnv(40, "city-grid", action_space="sites")
    env.reset(seed=0)
    backend = env.core.backend
    before = backend.site.copy()
    mask = env.action_masks()
    blocked = np.flatnonzero(~mask.all(axis=1))
    assert blocked.size
    actions = before.copy()  # stay, in the global action space
    for n in blocked:
        actions[n] = np.flatnonzero(~mask[n])[0]

    _, _, _, _, infos = env.step(actions)

    assert infos["refused"][blocked].all()
    assert not infos["refused"][np.setdiff1d(np.arange(40), blocked)].any()
    np.testing.assert_array_equal(backend.site, before)


@pytest.mark.parametrize("action", [8, -1, 1.0, 2.5, "1", np.array([1])])
def test_invalid_action_raises(action: Any) -> None:
    env = MigrationEnv("city-grid")
    env.reset(seed=0)

    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 8\)"):
        env.step(action)


def test_numpy_integer_action_is_accepted() -> None:
    env = MigrationEnv("city-grid")
    env.reset(seed=0)

    _, _, _, _, info = env.step(np.int64(0))

    assert not info["moved"]


@pytest.mark.parametrize("actions", [np.full(5, 8), np.full(5, -1), np.zeros(4, int)])
def test_fleet_rejects_actions_out_of_range_or_of_wrong_shape(
    actions: np.ndarray,
) -> None:
    env = FleetVectorEnv(5, "city-grid")
    env.reset(seed=0)

    with pytest.raises(ValueError, match="actions must"):
        env.step(actions)


def test_fleet_rejects_float_actions() -> None:
    env = FleetVectorEnv(5, "city-grid")
    env.reset(seed=0)

    with pytest.raises(ValueError, match="actions must be integers"):
        env.step(np.full(5, 0.7))


def test_reset_options_are_checked() -> None:
    env = MigrationEnv("wang-1d")

    with pytest.raises(ValueError, match="unknown reset option 'speed'"):
        env.reset(seed=0, options={"speed": 1})
    with pytest.raises(ValueError, match="service must be >= 0"):
        env.reset(seed=0, options={"service": -1})
    with pytest.raises(ValueError, match="action_space must be"):
        MigrationEnv("wang-1d", action_space="cells")
    with pytest.raises(ValueError, match="one seed for all services"):
        FleetVectorEnv(3, "wang-1d").reset(seed=[1, 2, 3])


def test_single_env_truncates_after_the_episode() -> None:
    env = MigrationEnv(short_city(4))
    env.reset(seed=0)
    truncations = [env.step(0)[3] for _ in range(4)]

    assert truncations == [False, False, False, True]


def test_fleet_autoresets_at_the_end_of_an_episode() -> None:
    env = FleetVectorEnv(8, short_city(4))
    layout = env.layout
    observation, _ = env.reset(seed=0)
    np.testing.assert_array_equal(layout.progress(observation), 0.0)

    for slot in range(1, 4):
        observation, _, terminated, truncated, infos = env.step(np.zeros(8, int))
        assert not truncated.any()
        assert not terminated.any()
        assert "final_obs" not in infos
        np.testing.assert_allclose(layout.progress(observation), slot / 4)

    observation, _, terminated, truncated, infos = env.step(np.zeros(8, int))

    assert truncated.all()
    assert not terminated.any()
    assert truncated.dtype == bool
    assert truncated.shape == (8,)
    assert infos["final_obs"].shape == observation.shape
    assert infos["_final_obs"].all()
    np.testing.assert_allclose(layout.progress(infos["final_obs"]), 1.0)
    # the new episode starts at slot 0, with new users
    np.testing.assert_array_equal(layout.progress(observation), 0.0)
    assert env.core.backend.slot == 0
    assert not np.array_equal(observation, infos["final_obs"])
    _, _, _, truncated, infos = env.step(np.zeros(8, int))
    assert not truncated.any()
    assert "final_obs" not in infos
