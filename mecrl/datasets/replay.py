"""Mobility sources that replay real traces: ``dataset-replay`` and ``gps-replay``.

Both replay a ``(slots, users)`` table of access sites over a
``dataset-sites`` topology, through :class:`mecrl.mobility.Replay`: a user
keeps its last site while unobserved, and takes its first observed site
before it appears. Episodes index users by service id: service ``n`` follows
user ``n``, the ``n``-th taxi of the replayed window in id order (or in the
order of the ``taxis`` parameter). The window is ``window_slots`` slots from
``first_slot`` (by default the whole trace), and a user counts if it is
observed in at least ``min_slots`` of them. Hence:

- an episode may simulate at most as many services as the window has users;
- an episode of ``T`` slots replays the window's first ``T`` slots, so
  ``episode_slots`` may not exceed the window's length. The access
  site one slot past the end, which only the observation after an
  episode's last decision shows, repeats the last recorded one.

Breaking either rule raises an error that says which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from mecrl.config import ConfigError, check
from mecrl.datasets.geo import IntArray
from mecrl.datasets.gps import GpsReport, load_gps_trace
from mecrl.datasets.sitesets import GeoSites
from mecrl.datasets.topology import DatasetTopology
from mecrl.datasets.traces import WANG_FOLDER, AttachmentTrace, load_attachment_trace
from mecrl.mobility import MOBILITY, Replay, Sites
from mecrl.network import Topology

logger = logging.getLogger(__name__)


class TraceReplay(Replay):
    """Replay of a recorded trace whose columns are named users.

    Args:
        topology: The sites the trace refers to.
        sites: ``(T, U)`` site of each user in each slot, -1 while unobserved.
        user_ids: Id of each column's user (a taxi id or name).
        label: What is replayed, for error messages.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        sites: IntArray,
        user_ids: tuple[str, ...],
        label: str,
    ) -> None:
        super().__init__(topology, sites=sites)
        self.user_ids = user_ids
        self.label = label

    def move_probability(self) -> float:
        """Estimate the probability that a user changes site in a slot.

        It is the share, among pairs of consecutive slots in which a user is
        observed both times, of those in which its site differs: the move
        probability of a random walk fitted to the trace, the one parameter
        Wang et al. fit to their trace for their MDP (they also count a taxi
        that leaves the map as moving, and refit it every slot).
        """
        before, after = self._recorded[:-1], self._recorded[1:]
        both = (before >= 0) & (after >= 0)
        pairs = int(both.sum())
        if pairs == 0:
            return 0.0
        return float((both & (before != after)).sum() / pairs)

    def _start(self, key: int, users: Sites) -> Sites:
        if users.size and int(users.max()) >= self.n_users:
            raise ConfigError(
                "users",
                f"{self.label} replays {self.n_users} users and service n follows "
                f"user n, so service {int(users.max())} has no user: simulate at "
                f"most {self.n_users} services",
            )
        return super()._start(key, users)

    def _step(self, slot: int) -> Sites:
        if slot == self.n_slots:
            # only the observation after an episode's last decision reads it
            return self._sites
        if slot > self.n_slots:
            raise ValueError(
                f"{self.label} replays {self.n_slots} slots; slot {slot} is past "
                f"its end: set episode_slots <= {self.n_slots} (or start earlier)"
            )
        return super()._step(slot)


def select_users(
    table: IntArray,
    user_ids: Sequence[str],
    first_slot: int,
    window_slots: int | None,
    min_slots: int,
    wanted: Sequence[str] | None,
) -> tuple[IntArray, tuple[str, ...]]:
    """Cut a trace to a window and pick its users.

    Args:
        table: ``(T, U)`` sites per slot and user, -1 while unobserved.
        user_ids: Id of each column.
        first_slot: First slot of the window.
        window_slots: Length of the window, or None to run to the end.
        min_slots: Users observed in fewer slots of the window are dropped.
        wanted: Ids of the users to keep, in this order, or None for every
            user with enough slots, in the table's order.

    Returns:
        The window's table, with one column per kept user, and their ids.

    Raises:
        ValueError: If an argument is out of range, a wanted user is unknown
            or has too few slots, or no user is left.
    """
    n_slots = table.shape[0]
    check(
        isinstance(first_slot, int) and 0 <= first_slot < n_slots,
        "first_slot",
        f"must be an integer in [0, {n_slots}), got {first_slot!r}",
    )
    check(
        isinstance(min_slots, int) and min_slots >= 0,
        "min_slots",
        f"must be an integer >= 0, got {min_slots!r}",
    )
    if window_slots is not None:
        check(
            isinstance(window_slots, int) and 0 < window_slots <= n_slots - first_slot,
            "window_slots",
            f"must be an integer in [1, {n_slots - first_slot}] (the trace has "
            f"{n_slots} slots from slot 0, the window starts at {first_slot}), "
            f"got {window_slots!r}",
        )
    end = n_slots if window_slots is None else first_slot + window_slots
    window = table[first_slot:end]
    enough = (window >= 0).sum(axis=0) >= max(min_slots, 1)
    if wanted is None:
        columns = np.flatnonzero(enough)
    else:
        index = {user: column for column, user in enumerate(user_ids)}
        unknown = [user for user in wanted if user not in index]
        check(
            not unknown,
            "taxis",
            f"unknown taxi {unknown[:1]}; the trace has {len(index)} taxis, "
            f"such as {', '.join(list(index)[:3])}",
        )
        columns = np.array([index[user] for user in wanted], dtype=np.int64)
        short = [user for user in wanted if not enough[index[user]]]
        check(
            not short,
            "taxis",
            f"taxi {short[:1]} is seen in fewer than {max(min_slots, 1)} slots "
            f"of the window",
        )
    check(
        columns.size > 0,
        "min_slots",
        f"no user is seen in {max(min_slots, 1)} or more slots of the window "
        f"from slot {first_slot}",
    )
    selected = np.ascontiguousarray(window[:, columns])
    return selected, tuple(user_ids[int(column)] for column in columns)


class DatasetReplay(TraceReplay):
    """Replay of Wang et al.'s taxi-to-cell attachment table (``dataset-replay``).

    Users are the taxis of ``sf-wang2019/taxi_cell_association_1min.csv.gz``
    seen in at least ``min_slots`` slots from ``first_slot`` on, in order of
    ``taxi_idx`` (485 taxis over 1,441 slots of 60 s with the defaults).
    The topology must be ``dataset-sites`` over the ``sf-wang2019`` cells.

    Args:
        topology: A ``dataset-sites`` topology of the ``sf-wang2019`` cells.
        slot_s: The scenario's slot length; must be the table's 60 s.
        dataset: The trace; only ``sf-wang2019`` exists.
        first_slot: First replayed slot (slot 0 starts 2008-05-31 08:00 UTC).
        window_slots: Slots replayed from ``first_slot``, or None for all
            the rest; ``episode_slots`` may not exceed it.
        min_slots: Taxis seen in fewer slots of the window are left out.
        taxis: ``taxi_idx`` of the taxis to replay, in order, or None for all.
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.
        cache_dir: Cache folder of parsed files.

    Raises:
        ValueError: If a parameter is out of range or the topology does not
            match.
        DatasetNotFoundError: If the data folder or a file is missing.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        slot_s: float = 60.0,
        dataset: str = WANG_FOLDER,
        first_slot: int = 0,
        window_slots: int | None = None,
        min_slots: int = 1,
        taxis: Sequence[int] | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        check(
            dataset == WANG_FOLDER,
            "dataset",
            f"unknown attachment trace {dataset!r}; known: {WANG_FOLDER}",
        )
        geo = _geo(topology, "dataset-replay")
        trace = load_attachment_trace(geo, data_dir, cache_dir)
        check(
            slot_s == trace.slot_s,
            "slot_s",
            f"the {dataset} table has {trace.slot_s:g} s slots; the scenario "
            f"uses {slot_s:g} s",
        )
        ids = tuple(str(taxi) for taxi in trace.taxi_ids.tolist())
        wanted = None if taxis is None else [str(taxi) for taxi in taxis]
        table, users = select_users(
            trace.sites, ids, first_slot, window_slots, min_slots, wanted
        )
        super().__init__(
            topology,
            sites=table,
            user_ids=users,
            label=f"the {dataset} attachment table from slot {first_slot}",
        )
        self.attachment: AttachmentTrace = trace
        """The whole attachment table, before cutting the window."""
        logger.debug("replaying %d taxis of %s", len(users), dataset)


class GpsReplay(TraceReplay):
    """Replay of raw taxi GPS mapped to the nearest site (``gps-replay``).

    Reads the cabspotting file of ``day`` and maps it with
    :func:`mecrl.datasets.gps.load_gps_trace` to the sites of the topology;
    the mapping's report of dropped rows and gaps is :attr:`report`.

    Args:
        topology: A ``dataset-sites`` topology of San Francisco sites.
        slot_s: Slot length (the scenario's).
        day: First day of the file's window: ``2008-05-31`` (development)
            or ``2008-06-06`` (held out for final evaluation).
        first_slot: First replayed slot (slot 0 starts at the file's start).
        window_slots: Slots replayed from ``first_slot``, or None for all
            the rest; ``episode_slots`` may not exceed it.
        min_slots: Taxis seen in fewer slots of the window are left out.
        taxis: Cab names of the taxis to replay, in order, or None for all.
        max_site_distance_m: Fixes farther from every site are dropped.
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.
        cache_dir: Cache folder of parsed files.

    Raises:
        ValueError: If a parameter is out of range or no taxi is left.
        DatasetNotFoundError: If the data folder or the file is missing.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        slot_s: float = 60.0,
        day: str = "2008-05-31",
        first_slot: int = 0,
        window_slots: int | None = None,
        min_slots: int = 30,
        taxis: Sequence[str] | None = None,
        max_site_distance_m: float = 2000.0,
        data_dir: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        geo = _geo(topology, "gps-replay")
        trace = load_gps_trace(
            geo, day, data_dir, cache_dir, slot_s, max_site_distance_m, min_slots=1
        )
        wanted = None if taxis is None else [str(taxi) for taxi in taxis]
        table, users = select_users(
            trace.sites, trace.taxi_names, first_slot, window_slots, min_slots, wanted
        )
        super().__init__(
            topology,
            sites=table,
            user_ids=users,
            label=f"the GPS trace of {day} from slot {first_slot}",
        )
        self.report: GpsReport = trace.report
        """What the GPS mapping dropped, and the gaps it left."""
        logger.debug("replaying %d taxis of %s", len(users), day)


def _geo(topology: Topology, kind: str) -> GeoSites:
    if not isinstance(topology, DatasetTopology):
        raise ConfigError(
            "topology.kind",
            f"the {kind} mobility needs a dataset-sites topology, got {topology.name}",
        )
    return topology.geo


MOBILITY.add("dataset-replay", DatasetReplay)
MOBILITY.add("gps-replay", GpsReplay)
