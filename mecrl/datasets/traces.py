"""Wang et al.'s table of which cell each San Francisco taxi is attached to.

``sf-wang2019/taxi_cell_association_1min.csv.gz`` has one row per taxi per
60 s slot while the taxi is on the map (``unix_time, slot_row, taxi_idx,
cell_id``), 24 h from 2008-05-31 08:00 UTC. :func:`load_attachment_trace`
turns it into a ``(slots, taxis)`` array of site indices, ``-1`` where a
taxi is absent, the replay source of the ``sf-wang2019`` scenario. The slot
of a row comes from its ``unix_time`` (``slot_row`` runs newest first in the
original matrix and is ignored).

Rows dropped besides those of :mod:`mecrl.datasets.tables`:

| reason | row |
|---|---|
| ``off_grid`` | a time that is not a whole number of slots after the first |
| ``duplicate`` | a second row for the same taxi and slot (the first is kept) |
| ``unknown_cell`` | a cell id absent from the site table |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from mecrl.datasets.cache import cached_arrays
from mecrl.datasets.geo import IntArray
from mecrl.datasets.paths import data_file
from mecrl.datasets.sitesets import GeoSites
from mecrl.datasets.tables import Column, read_table

logger = logging.getLogger(__name__)

WANG_FOLDER = "sf-wang2019"
"""Subfolder of the data folder holding Wang et al.'s data."""
ATTACHMENT_FILE = "taxi_cell_association_1min.csv.gz"
"""The attachment table."""
TAXI_INDEX_FILE = "taxi_index.csv"
"""Map of ``taxi_idx`` to the cabspotting file of the taxi."""
WANG_SLOT_S = 60.0
"""Slot length of the attachment table."""

_PARSE_KIND = "wang-attachment-v1"


@dataclass(frozen=True, eq=False)
class AttachmentTrace:
    """The access site of every taxi in every slot."""

    sites: IntArray
    """(T, U) site index of taxi ``u`` in slot ``t``, -1 while absent."""
    taxi_ids: IntArray
    """(U,) ``taxi_idx`` of each column, increasing."""
    taxi_names: tuple[str, ...]
    """Cabspotting name of each column's taxi (``""`` if not in the index)."""
    start_unix_s: int
    """UTC time of slot 0."""
    slot_s: float
    """Slot length."""
    rows: int
    """Data rows in the file."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped, by reason."""

    @property
    def n_slots(self) -> int:
        """Number of slots ``T``."""
        return int(self.sites.shape[0])

    @property
    def n_taxis(self) -> int:
        """Number of taxis ``U`` (each appears at least once)."""
        return int(self.sites.shape[1])


def load_attachment_trace(
    sites: GeoSites,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> AttachmentTrace:
    """Load the attachment table as site indices of ``sites``.

    Args:
        sites: The ``sf-wang2019`` site table the cell ids refer to (any
            clustering: a cell maps to the site that holds it).
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.
        cache_dir: Cache folder for the parsed table (see
            :func:`mecrl.datasets.paths.resolve_cache_dir`).

    Raises:
        ValueError: If ``sites`` is not the ``sf-wang2019`` table, or the file
            lacks a column or holds no valid row.
        DatasetNotFoundError: If the data folder or a file is missing.
    """
    if sites.dataset != WANG_FOLDER:
        raise ValueError(
            f"sites: the attachment table refers to the {WANG_FOLDER} cells, "
            f"got the {sites.dataset} site table"
        )
    path = data_file(data_dir, WANG_FOLDER, ATTACHMENT_FILE)
    index = data_file(data_dir, WANG_FOLDER, TAXI_INDEX_FILE)
    cache = None if cache_dir is None else str(cache_dir)
    return _load(sites, str(path), _stamp(path), str(index), _stamp(index), cache)


def _stamp(path: Path) -> tuple[int, int]:
    """Modification time and size: a changed file gets a new memo entry."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4)
def _load(
    sites: GeoSites,
    attachment: str,
    attachment_stamp: tuple[int, int],
    index: str,
    index_stamp: tuple[int, int],
    cache_dir: str | None,
) -> AttachmentTrace:
    """Build the trace; memoised, as every environment reset asks for it."""
    del attachment_stamp, index_stamp  # only part of the memo key
    path = Path(attachment)
    parsed = cached_arrays(path, _PARSE_KIND, _parse, cache_dir)
    site = sites.sites_of(parsed["cell_id"])
    known = site >= 0
    reasons, counts = parsed["drop_reasons"].tolist(), parsed["drop_counts"].tolist()
    dropped = dict(zip(reasons, counts, strict=True))
    dropped["unknown_cell"] = int((~known).sum())

    taxi_ids = parsed["taxi_ids"]
    table = np.full((int(parsed["n_slots"]), len(taxi_ids)), -1, dtype=np.int64)
    table[parsed["slot"][known], parsed["taxi"][known]] = site[known]
    table.setflags(write=False)
    names = _taxi_names(Path(index), taxi_ids)
    trace = AttachmentTrace(
        sites=table,
        taxi_ids=taxi_ids,
        taxi_names=names,
        start_unix_s=int(parsed["start_unix_s"]),
        slot_s=WANG_SLOT_S,
        rows=int(parsed["rows"]),
        dropped=dropped,
    )
    logger.info(
        "%s: %d rows, %d slots, %d taxis, dropped %s",
        path.name,
        trace.rows,
        trace.n_slots,
        trace.n_taxis,
        dropped,
    )
    return trace


def _parse(path: Path) -> dict[str, np.ndarray]:
    """Read the attachment file into slot, taxi and cell arrays."""
    table = read_table(
        path,
        [
            Column("unix_time", "int", 0.0),
            Column("taxi_idx", "int", 1.0),
            Column("cell_id", "int", 1.0),
        ],
    )
    time_s = table.columns["unix_time"]
    if time_s.size == 0:
        raise ValueError(f"{path}: holds no valid row")
    dropped = dict(table.dropped)

    # Slots count from the first time; a time between slots is a broken row.
    start = int(time_s.min())
    offset = time_s - start
    on_grid = offset % int(WANG_SLOT_S) == 0
    dropped["off_grid"] = int((~on_grid).sum())
    slot = offset[on_grid] // int(WANG_SLOT_S)
    taxi_idx = table.columns["taxi_idx"][on_grid]
    cell = table.columns["cell_id"][on_grid]

    # The first row of each (taxi, slot) wins.
    taxi_ids, taxi = np.unique(taxi_idx, return_inverse=True)
    n_slots = int(slot.max()) + 1
    key = taxi.ravel() * n_slots + slot
    _, first = np.unique(key, return_index=True)
    dropped["duplicate"] = len(key) - len(first)
    first.sort()
    return {
        "slot": slot[first].astype(np.int32),
        "taxi": taxi.ravel()[first].astype(np.int32),
        "cell_id": cell[first].astype(np.int64),
        "taxi_ids": taxi_ids.astype(np.int64),
        "n_slots": np.array(n_slots),
        "start_unix_s": np.array(start),
        "rows": np.array(table.rows),
        "drop_reasons": np.array(list(dropped), dtype=str),
        "drop_counts": np.array(list(dropped.values()), dtype=np.int64),
    }


def _taxi_names(path: Path, taxi_ids: IntArray) -> tuple[str, ...]:
    """Return the cabspotting name of each taxi (``new_abboip.txt`` -> abboip)."""
    table = read_table(
        path, [Column("taxi_idx", "int", 1.0), Column("cabspotting_file", "str")]
    )
    names = {
        int(idx): file.removeprefix("new_").removesuffix(".txt")
        for idx, file in zip(
            table.columns["taxi_idx"].tolist(),
            table.columns["cabspotting_file"].tolist(),
            strict=True,
        )
    }
    return tuple(names.get(int(idx), "") for idx in taxi_ids.tolist())
