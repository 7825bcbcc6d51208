"""Wang et al.'s taxi-to-cell attachment table as a replay source."""

from pathlib import Path

import numpy as np
import pytest

from mecrl.config import ConfigError
from mecrl.datasets import (
    AttachmentTrace,
    DatasetReplay,
    load_attachment_trace,
    load_sites,
)
from mecrl.datasets.replay import TraceReplay, select_users
from mecrl.datasets.topology import dataset_sites_topology
from mecrl.network import line_topology


@pytest.fixture(scope="module")
def trace(data_dir: Path) -> AttachmentTrace:
    return load_attachment_trace(load_sites("sf-wang2019", data_dir), data_dir)


def test_attachment_table_matches_the_data_readme(trace: AttachmentTrace) -> None:
    observed = trace.sites >= 0

    assert trace.rows == 373_754
    assert sum(trace.dropped.values()) == 0
    assert trace.sites.shape == (1441, 485)
    assert observed.sum() == 373_754
    assert len(np.unique(trace.sites[observed])) == 161
    assert trace.start_unix_s == 1_212_220_800
    assert trace.slot_s == 60.0
    assert observed.any(axis=0).all()  # every column is a taxi that appears

    # handovers: consecutive rows of a taxi at different cells
    handovers = sum(
        int(np.count_nonzero(np.diff(column[column >= 0]))) for column in trace.sites.T
    )
    assert handovers == 65_655


def test_taxis_carry_their_cabspotting_names(trace: AttachmentTrace) -> None:
    assert trace.taxi_ids[:2].tolist() == [1, 2]
    assert trace.taxi_names[:2] == ("abboip", "abcoij")
    assert all(trace.taxi_names)


def test_first_rows_land_in_the_right_cells(trace: AttachmentTrace) -> None:
    # first rows of the file: slot 0, taxi 1 in cell 120, taxi 4 in cell 89
    column = {int(taxi): k for k, taxi in enumerate(trace.taxi_ids)}
    assert trace.sites[0, column[1]] == 119
    assert trace.sites[0, column[4]] == 88


def test_replay_follows_the_table_and_holds_through_gaps(
    data_dir: Path, trace: AttachmentTrace
) -> None:
    topology = dataset_sites_topology(dataset="sf-wang2019", data_dir=str(data_dir))
    source = DatasetReplay(topology, data_dir=str(data_dir))
    users = np.arange(source.n_users)

    table = source.trace(0, users, 1441)

    recorded = trace.sites
    seen = recorded >= 0
    np.testing.assert_array_equal(table[seen], recorded[seen])
    assert (table >= 0).all()
    assert 0.05 < source.move_probability() < 0.5
    assert source.user_ids[:2] == ("1", "2")


def test_replay_window_and_taxi_choice(data_dir: Path, trace: AttachmentTrace) -> None:
    topology = dataset_sites_topology(dataset="sf-wang2019", data_dir=str(data_dir))
    source = DatasetReplay(
        topology,
        data_dir=str(data_dir),
        first_slot=600,
        window_slots=60,
        min_slots=30,
        taxis=[4, 1],
    )

    assert source.n_slots == 60
    assert source.user_ids == ("4", "1")
    column = {int(taxi): k for k, taxi in enumerate(trace.taxi_ids)}
    window = trace.sites[600:660, [column[4], column[1]]]
    replayed = source.trace(0, np.arange(2), 60)
    np.testing.assert_array_equal(replayed[window >= 0], window[window >= 0])


def test_replay_rejects_a_topology_of_other_sites(data_dir: Path) -> None:
    cbd = dataset_sites_topology(dataset="melbourne-cbd", data_dir=str(data_dir))
    with pytest.raises(ValueError, match="sf-wang2019 cells"):
        DatasetReplay(cbd, data_dir=str(data_dir))
    with pytest.raises(ConfigError, match="needs a dataset-sites topology"):
        DatasetReplay(line_topology(n_sites=5), data_dir=str(data_dir))


def test_replay_rejects_another_slot_length(data_dir: Path) -> None:
    topology = dataset_sites_topology(dataset="sf-wang2019", data_dir=str(data_dir))
    with pytest.raises(ValueError, match="60 s slots; the scenario uses 30 s"):
        DatasetReplay(topology, slot_s=30.0, data_dir=str(data_dir))


def small_replay() -> TraceReplay:
    table = np.array([[0, -1], [1, 2], [-1, 2], [2, 3]])
    return TraceReplay(
        line_topology(n_sites=5), sites=table, user_ids=("a", "b"), label="the toy"
    )


def test_more_services_than_users_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"replays 2 users.*service 2 has no user"):
        small_replay().reset(0, np.arange(3))


def test_an_episode_longer_than_the_window_is_a_clear_error() -> None:
    source = small_replay()
    source.reset(0, np.arange(2))
    for _ in range(3):
        source.advance()

    # one slot past the end repeats the last: only a final observation reads it
    np.testing.assert_array_equal(source.advance(), [2, 3])
    with pytest.raises(ValueError, match=r"replays 4 slots.*episode_slots <= 4"):
        source.advance()


def test_move_probability_counts_changes_between_observed_slots() -> None:
    # user a: 0->1 change, (1, -1) skipped, (-1, 2) skipped; user b: 2->2, 2->3
    assert small_replay().move_probability() == pytest.approx(2 / 3)


def test_select_users_filters_and_orders() -> None:
    table = np.array([[0, -1, 5], [1, -1, 5], [-1, 3, 5]])
    ids = ("x", "y", "z")

    kept, users = select_users(table, ids, 0, None, 2, None)
    assert users == ("x", "z")
    np.testing.assert_array_equal(kept, table[:, [0, 2]])

    kept, users = select_users(table, ids, 1, 2, 1, ["z", "y"])
    assert users == ("z", "y")
    np.testing.assert_array_equal(kept, table[1:3, [2, 1]])

    with pytest.raises(ValueError, match="unknown taxi"):
        select_users(table, ids, 0, None, 1, ["w"])
    with pytest.raises(ValueError, match="fewer than 2 slots"):
        select_users(table, ids, 0, None, 2, ["y"])
    with pytest.raises(ValueError, match="first_slot"):
        select_users(table, ids, 3, None, 1, None)
    with pytest.raises(ValueError, match="window_slots"):
        select_users(table, ids, 1, 3, 1, None)
    with pytest.raises(ValueError, match="no user is seen in 4"):
        select_users(table, ids, 0, None, 4, None)
