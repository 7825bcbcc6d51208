"""Raw taxi GPS fixes (cabspotting) mapped to the nearest edge site per slot.

``sf-cabspotting/gps-<day>T<hour>Z-<hours>h.csv.gz`` holds ``taxi,
unix_time, latitude, longitude, occupied`` for one window of time, named in
the file: ``gps-2008-05-31T08Z-24h.csv.gz`` covers 2008-05-31 08:00 UTC to
24 h later, both ends included. Loading runs in two stages:

1. :func:`load_gps_fixes` parses and cleans the file once (cached on disk by
   the file's SHA-256): malformed rows, non-numbers, impossible coordinates,
   times outside the window and repeated timestamps of a taxi are dropped
   and counted.
2. :func:`map_gps_to_sites` projects the fixes with the site table's own
   projection, attaches each to its nearest site, and drops the fixes
   farther than ``max_site_distance_m`` from every site (``out_of_area``:
   GPS errors far outside the Bay Area, and trips beyond the sites'
   coverage, such as across the Bay). A taxi's access site in slot ``t`` is
   the site of its first remaining fix in ``[start + t * slot_s, start +
   (t + 1) * slot_s)``; a slot without one is ``-1``, and counts as a gap if
   it lies between the taxi's first and last observed slots. Taxis observed
   in fewer than ``min_slots`` slots are left out.

Both stages report what they dropped (:class:`GpsReport`), and log it.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mecrl.config import check
from mecrl.datasets.cache import cached_arrays
from mecrl.datasets.geo import FloatArray, IntArray
from mecrl.datasets.paths import DatasetNotFoundError, resolve_data_dir
from mecrl.datasets.sitesets import GeoSites
from mecrl.datasets.tables import Column, read_table

logger = logging.getLogger(__name__)

GPS_FOLDER = "sf-cabspotting"
"""Subfolder of the data folder holding the GPS files."""

_PARSE_KIND = "gps-v1"
_FILE_NAME = re.compile(
    r"gps-(?P<day>\d{4}-\d{2}-\d{2})T(?P<hour>\d{2})Z-(?P<hours>\d+)h\.csv(\.gz)?$"
)


@dataclass(frozen=True, eq=False)
class GpsFixes:
    """The clean fixes of one GPS file, sorted by taxi, then time."""

    source: str
    """Name of the file read."""
    taxi_names: tuple[str, ...]
    """Name of each taxi, sorted."""
    taxi: IntArray
    """(N,) taxi of each fix, an index into ``taxi_names``."""
    unix_time_s: IntArray
    """(N,) UTC time of each fix."""
    latitude_deg: FloatArray
    """(N,) latitude of each fix."""
    longitude_deg: FloatArray
    """(N,) longitude of each fix."""
    start_unix_s: int
    """Start of the file's window."""
    duration_s: int
    """Length of the window; fixes at ``start + duration`` still count."""
    rows: int
    """Data rows in the file."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped, by reason."""


@dataclass(frozen=True)
class GpsReport:
    """What became of the rows of a GPS file once mapped to sites."""

    source: str
    """Name of the file read."""
    rows: int
    """Data rows in the file."""
    dropped: dict[str, int]
    """Rows dropped by reason: ``malformed``, ``non_numeric``,
    ``out_of_range``, ``out_of_window``, ``duplicate_time``, ``out_of_area``."""
    fixes_used: int
    """Fixes that set a taxi's site in a slot."""
    fixes_merged: int
    """Further fixes in a slot already set (the first fix of a slot wins)."""
    taxis_seen: int
    """Taxis with at least one fix near a site."""
    taxis_kept: int
    """Taxis observed in at least ``min_slots`` slots."""
    slots: int
    """Slots in the window."""
    gap_slots: int
    """Slots without a fix between a kept taxi's first and last observed
    slots, summed over kept taxis."""
    gaps: int
    """Runs of such slots."""
    longest_gap_slots: int
    """Longest run of such slots."""

    def summary(self) -> str:
        """Return a one-line account for logs."""
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v)
        return (
            f"{self.source}: {self.rows} rows, dropped {dropped or 'none'}; "
            f"{self.fixes_used} fixes used, {self.fixes_merged} merged into "
            f"their slot; {self.taxis_kept} of {self.taxis_seen} taxis kept; "
            f"{self.gap_slots} gap slots in {self.gaps} gaps "
            f"(longest {self.longest_gap_slots})"
        )


@dataclass(frozen=True, eq=False)
class GpsTrace:
    """The access site of every kept taxi in every slot."""

    sites: IntArray
    """(T, U) site index of taxi ``u`` in slot ``t``, -1 without a fix."""
    taxi_names: tuple[str, ...]
    """Name of each column's taxi, sorted."""
    start_unix_s: int
    """UTC time at which slot 0 starts."""
    slot_s: float
    """Slot length."""
    report: GpsReport
    """What was dropped on the way."""


def gps_file(day: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the GPS file whose window starts on ``day`` (``YYYY-MM-DD``).

    Raises:
        DatasetNotFoundError: If the data folder or the file is missing; the
            message lists the days that are present.
    """
    folder = resolve_data_dir(data_dir) / GPS_FOLDER
    matches = sorted(folder.glob(f"gps-{day}T*Z-*h.csv*"))
    if len(matches) != 1:
        days = sorted(
            match.group("day")
            for path in folder.glob("gps-*")
            if (match := _FILE_NAME.match(path.name))
        )
        raise DatasetNotFoundError(
            f"no single GPS file for day {day!r} in {folder} (found "
            f"{len(matches)}); days present: {', '.join(days) or 'none'}"
        )
    return matches[0]


def gps_window(path: Path) -> tuple[int, int]:
    """Return ``(start_unix_s, duration_s)`` from a GPS file's name.

    Raises:
        ValueError: If the name does not follow
            ``gps-YYYY-MM-DDTHHZ-<hours>h.csv[.gz]``.
    """
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise ValueError(
            f"{path}: cannot read the time window from the name; expected "
            "gps-YYYY-MM-DDTHHZ-<hours>h.csv.gz, or pass start_unix_s and "
            "duration_s"
        )
    year, month, day = (int(part) for part in match.group("day").split("-"))
    start = calendar.timegm((year, month, day, int(match.group("hour")), 0, 0))
    return start, int(match.group("hours")) * 3600


def load_gps_fixes(
    path: Path,
    start_unix_s: int | None = None,
    duration_s: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> GpsFixes:
    """Parse and clean a GPS file (see the module docstring for the rules).

    Args:
        path: The GPS file (``.csv`` or ``.csv.gz``).
        start_unix_s: Start of the window; read from the file name if None.
        duration_s: Length of the window; read from the file name if None.
        cache_dir: Cache folder for the parsed arrays.

    Raises:
        ValueError: If the window is unknown or invalid, or the file lacks a
            column (``taxi``, ``unix_time``, ``latitude``, ``longitude``).
    """
    if start_unix_s is None or duration_s is None:
        start_unix_s, duration_s = gps_window(path)
    check(duration_s > 0, "duration_s", f"must be > 0, got {duration_s}")
    start, duration = int(start_unix_s), int(duration_s)

    def parse(source: Path) -> dict[str, np.ndarray]:
        return _parse(source, start, duration)

    kind = f"{_PARSE_KIND}-{start}-{duration}"
    arrays = cached_arrays(path, kind, parse, cache_dir)
    return GpsFixes(
        source=path.name,
        taxi_names=tuple(arrays["taxi_names"].tolist()),
        taxi=arrays["taxi"],
        unix_time_s=arrays["unix_time_s"],
        latitude_deg=arrays["latitude_deg"],
        longitude_deg=arrays["longitude_deg"],
        start_unix_s=start,
        duration_s=duration,
        rows=int(arrays["rows"]),
        dropped=dict(
            zip(
                arrays["drop_reasons"].tolist(),
                arrays["drop_counts"].tolist(),
                strict=True,
            )
        ),
    )


def _parse(path: Path, start: int, duration: int) -> dict[str, np.ndarray]:
    table = read_table(
        path,
        [
            Column("taxi", "str"),
            Column("unix_time", "int", 0.0),
            Column("latitude", "float", -90.0, 90.0),
            Column("longitude", "float", -180.0, 180.0),
        ],
    )
    dropped = dict(table.dropped)
    columns = table.columns
    time_s = columns["unix_time"]
    inside = (time_s >= start) & (time_s <= start + duration)
    dropped["out_of_window"] = int((~inside).sum())

    # Sort by taxi, then time; a repeated time of one taxi keeps its first row.
    names, taxi = np.unique(columns["taxi"][inside], return_inverse=True)
    taxi = taxi.ravel()
    time_s = time_s[inside]
    order = np.lexsort((time_s, taxi))
    taxi, time_s = taxi[order], time_s[order]
    repeated = np.zeros(len(order), dtype=bool)
    repeated[1:] = (taxi[1:] == taxi[:-1]) & (time_s[1:] == time_s[:-1])
    dropped["duplicate_time"] = int(repeated.sum())
    keep = order[~repeated]
    return {
        "taxi_names": names.astype(str),
        "taxi": taxi[~repeated].astype(np.int32),
        "unix_time_s": time_s[~repeated],
        "latitude_deg": columns["latitude"][inside][keep],
        "longitude_deg": columns["longitude"][inside][keep],
        "rows": np.array(table.rows),
        "drop_reasons": np.array(list(dropped), dtype=str),
        "drop_counts": np.array(list(dropped.values()), dtype=np.int64),
    }


def map_gps_to_sites(
    fixes: GpsFixes,
    sites: GeoSites,
    slot_s: float = 60.0,
    max_site_distance_m: float = 2000.0,
    min_slots: int = 1,
) -> GpsTrace:
    """Attach each taxi to its nearest site, slot by slot.

    Args:
        fixes: Clean fixes from :func:`load_gps_fixes`.
        sites: The sites; their projection maps the fixes to metres.
        slot_s: Slot length.
        max_site_distance_m: Fixes farther than this from every site are
            dropped as ``out_of_area``.
        min_slots: Taxis observed in fewer slots are left out.

    Raises:
        ValueError: If an argument is out of range, or no taxi is left.
    """
    check(slot_s > 0, "slot_s", f"must be > 0, got {slot_s}")
    check(
        max_site_distance_m > 0,
        "max_site_distance_m",
        f"must be > 0, got {max_site_distance_m}",
    )
    check(min_slots >= 0, "min_slots", f"must be >= 0, got {min_slots}")
    positions_m = sites.projection.to_metres(fixes.latitude_deg, fixes.longitude_deg)
    distance_m, nearest = cKDTree(sites.positions_m).query(positions_m)
    near = distance_m <= max_site_distance_m
    dropped = {**fixes.dropped, "out_of_area": int((~near).sum())}

    # First near fix of each (taxi, slot); fixes are sorted by taxi and time.
    n_slots = int(fixes.duration_s // slot_s) + 1
    slot = ((fixes.unix_time_s[near] - fixes.start_unix_s) // slot_s).astype(np.int64)
    taxi = fixes.taxi[near].astype(np.int64)
    _, first = np.unique(taxi * n_slots + slot, return_index=True)
    table = np.full((n_slots, len(fixes.taxi_names)), -1, dtype=np.int64)
    table[slot[first], taxi[first]] = nearest[near][first]

    observed = table >= 0
    seen = observed.any(axis=0)
    kept = observed.sum(axis=0) >= max(min_slots, 1)
    if not kept.any():
        raise ValueError(
            f"no taxi of {fixes.source} has {max(min_slots, 1)} or more slots "
            f"within {max_site_distance_m:g} m of a {sites.dataset} site"
        )
    gap_slots, gaps, longest = _gaps(observed[:, kept])
    report = GpsReport(
        source=fixes.source,
        rows=fixes.rows,
        dropped=dropped,
        fixes_used=len(first),
        fixes_merged=int(near.sum()) - len(first),
        taxis_seen=int(seen.sum()),
        taxis_kept=int(kept.sum()),
        slots=n_slots,
        gap_slots=gap_slots,
        gaps=gaps,
        longest_gap_slots=longest,
    )
    logger.info("%s", report.summary())
    names = tuple(
        name for name, keep in zip(fixes.taxi_names, kept, strict=True) if keep
    )
    sites_table = table[:, kept]
    sites_table.setflags(write=False)
    return GpsTrace(sites_table, names, fixes.start_unix_s, float(slot_s), report)


def load_gps_trace(
    sites: GeoSites,
    day: str = "2008-05-31",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    slot_s: float = 60.0,
    max_site_distance_m: float = 2000.0,
    min_slots: int = 1,
) -> GpsTrace:
    """Load the GPS file of ``day`` and map it to ``sites``; memoised.

    Args:
        sites: The sites to attach taxis to.
        day: First day of the file's window, ``YYYY-MM-DD``.
        data_dir: Data folder, or None for ``$MECRL_DATA_DIR``.
        cache_dir: Cache folder for the parsed fixes.
        slot_s: Slot length.
        max_site_distance_m: See :func:`map_gps_to_sites`.
        min_slots: See :func:`map_gps_to_sites`.

    Raises:
        DatasetNotFoundError: If the data folder or the file is missing.
        ValueError: As :func:`load_gps_fixes` and :func:`map_gps_to_sites`.
    """
    path = gps_file(day, data_dir)
    stat = path.stat()
    return _load_trace(
        sites,
        str(path),
        (stat.st_mtime_ns, stat.st_size),
        None if cache_dir is None else str(cache_dir),
        float(slot_s),
        float(max_site_distance_m),
        int(min_slots),
    )


@lru_cache(maxsize=8)
def _load_trace(
    sites: GeoSites,
    path: str,
    stamp: tuple[int, int],
    cache_dir: str | None,
    slot_s: float,
    max_site_distance_m: float,
    min_slots: int,
) -> GpsTrace:
    """Every environment reset asks for the trace, so keep it in memory."""
    del stamp  # only part of the memo key: a changed file gets a new entry
    fixes = load_gps_fixes(Path(path), cache_dir=cache_dir)
    return map_gps_to_sites(fixes, sites, slot_s, max_site_distance_m, min_slots)


def _gaps(observed: np.ndarray) -> tuple[int, int, int]:
    """Count missing slots inside each column's observed span.

    Returns:
        Missing slots in all, runs of them, and the longest run.
    """
    n_slots = observed.shape[0]
    first = observed.argmax(axis=0)
    last = n_slots - 1 - observed[::-1].argmax(axis=0)
    slots = np.arange(n_slots)[:, None]
    inside = (slots >= first) & (slots <= last)
    missing = inside & ~observed
    starts = missing.copy()
    starts[1:] &= ~missing[:-1]
    longest = 0
    if missing.any():
        # run lengths: cumulative count of missing slots, reset at observed ones
        run = np.zeros(observed.shape[1], dtype=np.int64)
        for row in missing:
            run = np.where(row, run + 1, 0)
            longest = max(longest, int(run.max()))
    return int(missing.sum()), int(starts.sum()), longest
