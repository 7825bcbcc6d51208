import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mecrl.rng import SlotDraws, derive_key, normals, uniforms


def test_uniforms_shape_dtype_and_range() -> None:
    draws = uniforms(3, np.arange(1000), 5, 4)
    assert draws.shape == (1000, 4)
    assert draws.dtype == np.float64
    assert draws.min() >= 0.0
    assert draws.max() < 1.0


def test_uniform_moments_match_the_uniform_distribution() -> None:
    draws = uniforms(11, np.arange(50_000), 0, 4).ravel()
    assert abs(draws.mean() - 0.5) < 0.005
    assert abs(draws.var() - 1.0 / 12.0) < 0.002


def test_uniforms_fill_equal_bins() -> None:
    draws = uniforms(5, np.arange(100_000), 9, 1)[:, 0]
    counts = np.bincount((draws * 10).astype(int), minlength=10)
    # Each bin holds 10,000 +- 95 (one standard deviation).
    assert np.abs(counts - 10_000).max() < 500


def test_same_key_gives_same_values() -> None:
    users = np.arange(100)
    np.testing.assert_array_equal(uniforms(7, users, 2, 3), uniforms(7, users, 2, 3))
    np.testing.assert_array_equal(normals(7, users, 2, 3), normals(7, users, 2, 3))


def test_different_keys_slots_and_users_differ() -> None:
    users = np.arange(1000)
    base = uniforms(7, users, 2, 1)
    assert not np.any(base == uniforms(8, users, 2, 1))
    assert not np.any(base == uniforms(7, users, 3, 1))
    assert len(np.unique(base)) == len(users)


def test_neighbouring_streams_are_uncorrelated() -> None:
    users = np.arange(20_000)
    now = uniforms(1, users, 10, 2)
    later = uniforms(1, users, 11, 1)[:, 0]
    pairs = [
        (now[:, 0], now[:, 1]),
        (now[:, 0], later),
        (now[:-1, 0], now[1:, 0]),
    ]
    for first, second in pairs:
        assert abs(np.corrcoef(first, second)[0, 1]) < 0.03


def test_user_stream_does_not_depend_on_the_population() -> None:
    crowd = uniforms(42, np.arange(1000), 17, 3)
    alone = uniforms(42, np.array([637]), 17, 3)
    np.testing.assert_array_equal(alone[0], crowd[637])
    crowd_normal = normals(42, np.arange(1000), 17, 3)
    np.testing.assert_array_equal(
        normals(42, np.array([637]), 17, 3)[0], crowd_normal[637]
    )


@settings(max_examples=30, deadline=None)
@given(
    users=st.lists(st.integers(0, 2**40), min_size=1, max_size=30, unique=True),
    key=st.integers(0, 2**64 - 1),
    slot=st.integers(0, 10**9),
)
def test_any_subset_draws_the_same_numbers(
    users: list[int], key: int, slot: int
) -> None:
    together = uniforms(key, np.array(users), slot, 2)
    for row, user in zip(together, users, strict=True):
        np.testing.assert_array_equal(uniforms(key, np.array([user]), slot, 2)[0], row)


def test_draw_does_not_change_when_more_are_drawn() -> None:
    users = np.arange(50)
    np.testing.assert_array_equal(
        uniforms(3, users, 1, 5)[:, :2], uniforms(3, users, 1, 2)
    )
    # Many draws are hashed as arrays rather than Python integers.
    np.testing.assert_array_equal(
        uniforms(3, users, 1, 40)[:, :2], uniforms(3, users, 1, 2)
    )
    np.testing.assert_array_equal(
        normals(3, users, 1, 5)[:, :3], normals(3, users, 1, 3)
    )


def test_user_id_dtype_does_not_matter() -> None:
    users = [0, 5, 2**31 + 3]
    np.testing.assert_array_equal(
        uniforms(9, np.array(users, dtype=np.uint64), 4, 2),
        uniforms(9, np.array(users, dtype=np.int64), 4, 2),
    )


def test_normal_moments_and_independence_from_uniforms() -> None:
    users = np.arange(50_000)
    draws = normals(13, users, 6, 3)
    assert draws.shape == (50_000, 3)
    np.testing.assert_allclose(draws.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(draws.std(axis=0), 1.0, atol=0.02)
    assert abs(np.mean(draws**3)) < 0.05
    assert abs(np.mean(draws**4) - 3.0) < 0.1
    same_arguments = uniforms(13, users, 6, 1)[:, 0]
    assert abs(np.corrcoef(draws[:, 0], same_arguments)[0, 1]) < 0.03
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.03


def test_derive_key_is_reproducible_and_in_range() -> None:
    first = derive_key(np.random.default_rng(123))
    assert first == derive_key(np.random.default_rng(123))
    assert first != derive_key(np.random.default_rng(124))
    assert 0 <= first < 2**63
    assert isinstance(first, int)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-1, [0], 0, 1), "key"),
        ((2**64, [0], 0, 1), "key"),
        ((1.5, [0], 0, 1), "key"),
        ((0, [0], -1, 1), "slot"),
        ((0, [0], 0, 0), "count"),
        ((0, [[0, 1]], 0, 1), "users"),
        ((0, [0.5], 0, 1), "users"),
        ((0, [-3], 0, 1), "users"),
    ],
)
def test_bad_arguments_are_rejected(
    arguments: tuple[object, ...], message: str
) -> None:
    key, users, slot, count = arguments
    for draw in (uniforms, normals):
        with pytest.raises(ValueError, match=message):
            draw(key, np.asarray(users), slot, count)  # type: ignore[arg-type]


def _assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint64), expected.view(np.uint64))


@pytest.mark.parametrize("n_users", [1, 3, 700, 3000, 9000])
@pytest.mark.parametrize(
    ("count", "normal"), [(1, False), (3, False), (2, True), (3, True)]
)
def test_slot_draws_equal_the_draws_of_each_slot(
    n_users: int, count: int, normal: bool
) -> None:
    # The slots cross several blocks, of 256 slots for a few users down to a
    # single slot for 9,000.
    users = np.arange(n_users) * 7 + 5
    draws = SlotDraws(2**63 + 9, users, count, normal=normal)
    draw = normals if normal else uniforms
    slots = range(600) if n_users < 1000 else range(20)
    for slot in slots:
        _assert_same_bits(draws.at(slot), draw(2**63 + 9, users, slot, count))


def test_slot_draws_read_any_slot_in_any_order() -> None:
    users = np.array([4, 0, 2**40])
    draws = SlotDraws(8, users, 2)
    for slot in (300, 5, 299, 2**64 - 1, 2**64 - 300, 0):
        _assert_same_bits(draws.at(slot), uniforms(8, users, slot, 2))


def test_slot_draws_are_read_only() -> None:
    values = SlotDraws(1, np.array([3]), 2).at(4)
    with pytest.raises(ValueError, match="read-only"):
        values[0, 0] = 0.5


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-1, [0], 1), "key"),
        ((2**64, [0], 1), "key"),
        ((0, [-3], 1), "users"),
        ((0, [[0, 1]], 1), "users"),
        ((0, [0], 0), "count"),
    ],
)
def test_slot_draws_reject_bad_arguments(
    arguments: tuple[object, ...], message: str
) -> None:
    key, users, count = arguments
    with pytest.raises(ValueError, match=message):
        SlotDraws(key, np.asarray(users), count)  # type: ignore[arg-type]


def test_slot_draws_reject_a_slot_out_of_range() -> None:
    draws = SlotDraws(0, np.array([1]), 1)
    with pytest.raises(ValueError, match="slot"):
        draws.at(-1)
    with pytest.raises(ValueError, match="slot"):
        draws.at(2**64)
