"""Migration models: downtime and bytes of cold, pre-copy and post-copy moves."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mecrl.migration import (
    COLD,
    MIGRATION_MODES,
    POSTCOPY,
    POSTCOPY_DEGRADED_WEIGHT,
    PRECOPY,
    PRECOPY_MAX_ROUNDS,
    PRECOPY_STOP_MB,
    migration_effect,
    transfer_s,
)

# a runc service: 512 MB state, 150 MB of missing layers, over a 1 Gbit/s path
RUNC = {
    "state_mb": 512.0,
    "missing_layers_mb": 150.0,
    "bandwidth_mbps": 1000.0,
    "dirty_mb_per_s": 10.0,
    "start_s": 0.5,
    "stop_s": 0.1,
    "checkpoint_s": 0.2,
    "restore_s": 0.16,
}


def effect(mode: int, prefetch: bool = False, **changes: float) -> tuple[float, float]:
    """Return (downtime_s, moved_mb) of one move of the RUNC service."""
    args: dict[str, Any] = {k: np.array([v]) for k, v in {**RUNC, **changes}.items()}
    result = migration_effect(mode=np.array([mode]), prefetch_layers=prefetch, **args)
    return float(result.downtime_s[0]), float(result.moved_mb[0])


def iterative_precopy(
    state_mb: float, bandwidth_mbps: float, dirty_mb_per_s: float
) -> tuple[float, float]:
    """Simulate pre-copy round by round: (stop-and-copy MB, MB copied live).

    Each live round copies what is left; while it is sent, the service
    dirties ``dirty_mb_per_s`` times the round's duration, which the next
    round must copy. Rounds stop once what is left is small, or after the
    round limit.
    """
    left, live, rounds = state_mb, 0.0, 0
    while left > PRECOPY_STOP_MB and rounds < PRECOPY_MAX_ROUNDS:
        duration_s = left * 8.0 / bandwidth_mbps
        live += left
        left = min(dirty_mb_per_s * duration_s, state_mb)
        rounds += 1
    return left, live


def test_mode_codes() -> None:
    assert MIGRATION_MODES[COLD] == "cold"
    assert MIGRATION_MODES[PRECOPY] == "precopy"
    assert MIGRATION_MODES[POSTCOPY] == "postcopy"


def test_transfer_time_is_megabytes_over_megabits() -> None:
    assert transfer_s(np.array(125.0), np.array(1000.0)) == pytest.approx(1.0)


def test_cold_downtime_by_hand() -> None:
    # stop 0.1 + (512 + 150) MB * 8 / 1000 Mbit/s + start 0.5
    downtime, moved = effect(COLD)

    assert downtime == pytest.approx(0.1 + 5.296 + 0.5)
    assert moved == pytest.approx(662.0)


def test_prefetch_removes_the_layer_transfer_from_cold_downtime() -> None:
    downtime, moved = effect(COLD, prefetch=True)

    assert downtime == pytest.approx(0.1 + 4.096 + 0.5)
    # the layers still cross the network, only before the outage
    assert moved == pytest.approx(662.0)


def test_prefetch_does_not_change_live_modes() -> None:
    for mode in (PRECOPY, POSTCOPY):
        assert effect(mode, prefetch=True) == effect(mode, prefetch=False)


def test_precopy_with_low_dirty_rate_beats_cold() -> None:
    downtime, moved = effect(PRECOPY)
    cold, _ = effect(COLD, prefetch=True)

    assert downtime < cold
    assert moved >= RUNC["state_mb"] + RUNC["missing_layers_mb"]


def test_precopy_matches_a_round_by_round_simulation() -> None:
    last_mb, live_mb = iterative_precopy(512.0, 1000.0, 10.0)
    downtime, moved = effect(PRECOPY)

    assert last_mb <= PRECOPY_STOP_MB
    assert downtime == pytest.approx(0.2 + last_mb * 8.0 / 1000.0 + 0.16)
    assert moved == pytest.approx(live_mb + last_mb + 150.0)


@pytest.mark.parametrize("dirty_mb_per_s", [125.0, 400.0])
def test_precopy_does_not_converge_when_dirtying_outpaces_the_link(
    dirty_mb_per_s: float,
) -> None:
    # 1000 Mbit/s copies 125 MB/s: rounds never shrink
    downtime, moved = effect(PRECOPY, dirty_mb_per_s=dirty_mb_per_s)

    # the last round is the full state, after every allowed live round
    assert downtime == pytest.approx(0.2 + 512.0 * 8.0 / 1000.0 + 0.16)
    assert moved == pytest.approx((PRECOPY_MAX_ROUNDS + 1) * 512.0 + 150.0)


def test_postcopy_downtime_is_short() -> None:
    downtime, moved = effect(POSTCOPY)
    cold, _ = effect(COLD, prefetch=True)
    stuck_precopy, _ = effect(PRECOPY, dirty_mb_per_s=200.0)

    expected = 0.2 + 0.16 + POSTCOPY_DEGRADED_WEIGHT * 512.0 * 8.0 / 1000.0
    assert downtime == pytest.approx(expected)
    assert downtime < cold
    assert downtime < stuck_precopy
    assert moved == pytest.approx(512.0 + 150.0)


def test_precopy_of_a_service_that_dirties_nothing_is_one_live_round() -> None:
    downtime, moved = effect(PRECOPY, dirty_mb_per_s=0.0)

    # everything is copied live once; nothing is left for the outage
    assert downtime == pytest.approx(0.2 + 0.16)
    assert moved == pytest.approx(512.0 + 150.0)


small = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    state_mb=st.floats(min_value=PRECOPY_STOP_MB * 2, max_value=4096.0),
    bandwidth_mbps=st.floats(min_value=10.0, max_value=10_000.0),
    dirty_share=st.floats(min_value=1e-3, max_value=0.95),
)
def test_converging_precopy_leaves_little_for_the_outage(
    state_mb: float, bandwidth_mbps: float, dirty_share: float
) -> None:
    dirty = dirty_share * bandwidth_mbps / 8.0
    last_mb, live_mb = iterative_precopy(state_mb, bandwidth_mbps, dirty)
    downtime, moved = effect(
        PRECOPY,
        state_mb=state_mb,
        bandwidth_mbps=bandwidth_mbps,
        dirty_mb_per_s=dirty,
        missing_layers_mb=0.0,
    )

    assert downtime == pytest.approx(0.36 + last_mb * 8.0 / bandwidth_mbps, rel=1e-6)
    assert moved == pytest.approx(live_mb + last_mb, rel=1e-6)
    assert moved >= state_mb


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from([COLD, PRECOPY, POSTCOPY]),
            st.floats(min_value=0.0, max_value=4096.0, allow_subnormal=False),
            st.floats(min_value=0.0, max_value=1024.0),
            st.floats(min_value=1.0, max_value=10_000.0),
            st.floats(min_value=1e-3, max_value=2000.0),
            small,
            small,
            small,
            small,
        ),
        min_size=1,
        max_size=12,
    ),
    prefetch=st.booleans(),
)
def test_vectorised_call_equals_element_wise_calls(
    data: list[tuple[float, ...]], prefetch: bool
) -> None:
    names = (
        "mode",
        "state_mb",
        "missing_layers_mb",
        "bandwidth_mbps",
        "dirty_mb_per_s",
        "start_s",
        "stop_s",
        "checkpoint_s",
        "restore_s",
    )
    values = zip(*data, strict=True)
    columns = {name: np.array(v) for name, v in zip(names, values, strict=True)}
    columns["mode"] = columns["mode"].astype(np.int64)

    together = migration_effect(prefetch_layers=prefetch, **columns)

    for i in range(len(data)):
        alone = migration_effect(
            prefetch_layers=prefetch,
            **{name: column[i : i + 1] for name, column in columns.items()},
        )
        assert together.downtime_s[i] == alone.downtime_s[0]
        assert together.moved_mb[i] == alone.moved_mb[0]
    assert np.all(together.downtime_s >= 0.0)
    assert np.all(
        together.moved_mb >= columns["state_mb"] + columns["missing_layers_mb"] - 1e-9
    )
