"""Raw taxi GPS mapped to the nearest site, slot by slot, with a report."""

import math
from pathlib import Path

import numpy as np
import pytest

from mecrl.datasets import (
    DatasetNotFoundError,
    GeoSites,
    gps_file,
    load_gps_fixes,
    load_gps_trace,
    load_sites,
)
from mecrl.datasets.gps import gps_window

START = 1_212_220_800  # 2008-05-31 08:00 UTC
EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, computed here independently of the library."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def nearest_by_haversine(sites: GeoSites, lat: float, lon: float) -> list[float]:
    return [
        haversine_m(lat, lon, float(a), float(b))
        for a, b in zip(sites.latitude_deg, sites.longitude_deg, strict=True)
    ]


@pytest.fixture(scope="module")
def opencellid(data_dir: Path) -> GeoSites:
    return load_sites("sf-opencellid", data_dir)


@pytest.mark.parametrize(
    ("day", "start", "low", "high"),
    [("2008-05-31", 1_212_220_800, 480, 500), ("2008-06-06", 1_212_739_200, 490, 510)],
)
def test_both_days_load_with_about_490_taxis(
    data_dir: Path, opencellid: GeoSites, day: str, start: int, low: int, high: int
) -> None:
    trace = load_gps_trace(opencellid, day, data_dir)
    report = trace.report

    assert trace.start_unix_s == start
    assert trace.sites.shape[0] == 1441  # 24 h of 60 s slots, both ends included
    assert low <= report.taxis_seen <= high
    assert report.rows > 490_000
    assert (
        report.fixes_used + report.fixes_merged + sum(report.dropped.values())
        == report.rows
    )
    assert report.gap_slots > 0
    assert report.gaps > 0


def test_the_held_out_day_drops_fixes_far_outside_the_bay(
    data_dir: Path, opencellid: GeoSites
) -> None:
    fixes = load_gps_fixes(gps_file("2008-06-06", data_dir))
    far = (fixes.latitude_deg < 37.0) | (fixes.latitude_deg > 38.5)
    assert far.sum() >= 5  # the README's GPS errors (33.5 N, 50.3 N, ...)

    report = load_gps_trace(opencellid, "2008-06-06", data_dir).report
    assert report.dropped["out_of_area"] >= far.sum()


def test_mapping_picks_the_nearest_site_on_hand_checked_fixes(
    data_dir: Path, opencellid: GeoSites
) -> None:
    trace = load_gps_trace(opencellid, "2008-05-31", data_dir)
    column = {name: k for k, name in enumerate(trace.taxi_names)}
    # rows of the file, each the first fix of its taxi in its slot
    fixes = [
        ("abboip", 1_212_220_835, 37.79024, -122.40850),  # slot 0, downtown
        ("abboip", 1_212_220_896, 37.79161, -122.40421),  # slot 1
        ("ojumna", 1_212_260_054, 37.65048, -122.40685),  # slot 654, south
        ("ojumna", 1_212_260_149, 37.62373, -122.40136),  # slot 655
        ("udwadla", 1_212_260_101, 37.76298, -122.43488),  # slot 655, centre
    ]
    for taxi, time_s, lat, lon in fixes:
        distances = nearest_by_haversine(opencellid, lat, lon)
        assert min(distances) < 2000.0
        slot = (time_s - START) // 60
        assert trace.sites[slot, column[taxi]] == int(np.argmin(distances))


def test_mapping_picks_the_nearest_site_on_sampled_fixes(
    data_dir: Path, opencellid: GeoSites
) -> None:
    fixes = load_gps_fixes(gps_file("2008-05-31", data_dir))
    trace = load_gps_trace(opencellid, "2008-05-31", data_dir)
    column = {name: k for k, name in enumerate(trace.taxi_names)}
    slot = (fixes.unix_time_s - START) // 60
    first_of_slot = np.ones(len(slot), dtype=bool)
    first_of_slot[1:] = (slot[1:] != slot[:-1]) | (fixes.taxi[1:] != fixes.taxi[:-1])
    rng = np.random.default_rng(7)
    checked = 0
    for i in rng.choice(np.flatnonzero(first_of_slot), size=200, replace=False):
        distances = np.array(
            nearest_by_haversine(
                opencellid, fixes.latitude_deg[i], fixes.longitude_deg[i]
            )
        )
        if distances.min() > 2000.0:
            continue  # out of the sites' area: dropped, another fix may fill it
        got = trace.sites[slot[i], column[fixes.taxi_names[fixes.taxi[i]]]]
        # equal up to the projection's error, which only matters on near-ties
        assert distances[got] <= distances.min() * 1.003 + 1e-6
        checked += 1
    assert checked > 150


def write_sites(folder: Path) -> Path:
    (folder / "sf-wang2019").mkdir(parents=True)
    (folder / "sf-wang2019" / "sf_cells.csv").write_text(
        "cell_id,latitude,longitude\n"
        "1,37.70,-122.45\n"
        "2,37.75,-122.45\n"
        "3,37.80,-122.40\n"
    )
    return folder


def write_gps(folder: Path, text: str) -> Path:
    (folder / "sf-cabspotting").mkdir(parents=True, exist_ok=True)
    path = folder / "sf-cabspotting" / "gps-2008-05-31T08Z-24h.csv"
    path.write_text("taxi,unix_time,latitude,longitude,occupied\n" + text)
    return path


def test_bad_rows_gaps_and_short_taxis_are_counted(tmp_path: Path) -> None:
    write_sites(tmp_path)
    s = START
    write_gps(
        tmp_path,
        f"a,{s + 10},37.7001,-122.4501,0\n"  # slot 0, cell 1
        f"a,{s + 70},37.7501,-122.4501,0\n"  # slot 1, cell 2
        f"a,{s + 70},37.8000,-122.4000,0\n"  # same time again: duplicate
        f"a,{s + 75},37.8000,-122.4000,0\n"  # slot 1 again: merged, first wins
        f"a,{s + 310},37.8001,-122.4001,1\n"  # slot 5, cell 3: slots 2-4 a gap
        f"b,{s + 20},37.7999,-122.4001,1\n"  # slot 0, cell 3
        f"b,{s + 30},north,-122.4001,1\n"  # non-numeric
        f"b,{s + 40},95.0,-122.4001,1\n"  # impossible latitude
        f"b,{s + 50},33.4556,-118.0,1\n"  # far away: out of area
        f"b,{s - 100},37.7999,-122.4001,1\n"  # before the window
        f"b,{s + 60}\n"  # fields missing
        f"b,{s + 86_400},37.7002,-122.4502,1\n"  # last instant: slot 1440
        f"c,{s + 20},37.7002,-122.4502,1\n",  # one slot only
    )
    sites = load_sites("sf-wang2019", tmp_path)

    trace = load_gps_trace(sites, "2008-05-31", tmp_path, min_slots=2)
    report = trace.report

    assert report.rows == 13
    assert report.dropped == {
        "malformed": 1,
        "non_numeric": 1,
        "out_of_range": 1,
        "out_of_window": 1,
        "duplicate_time": 1,
        "out_of_area": 1,
    }
    assert report.fixes_used == 6
    assert report.fixes_merged == 1
    assert (report.taxis_seen, report.taxis_kept) == (3, 2)
    assert trace.taxi_names == ("a", "b")
    assert trace.sites.shape == (1441, 2)
    np.testing.assert_array_equal(trace.sites[[0, 1, 2, 5], 0], [0, 1, -1, 2])
    assert trace.sites[0, 1] == 2
    assert trace.sites[1440, 1] == 0
    # a misses slots 2-4, b misses slots 1-1439
    assert (report.gap_slots, report.gaps, report.longest_gap_slots) == (1442, 2, 1439)
    assert "out_of_area 1" in report.summary()


def test_a_gps_file_without_a_needed_column_is_a_clear_error(tmp_path: Path) -> None:
    write_sites(tmp_path)
    path = write_gps(tmp_path, "")
    path.write_text("taxi,unix_time,latitude\na,1212220810,37.7\n")
    sites = load_sites("sf-wang2019", tmp_path)

    with pytest.raises(ValueError, match="missing column 'longitude'"):
        load_gps_trace(sites, "2008-05-31", tmp_path)


def test_no_usable_taxi_is_a_clear_error(tmp_path: Path) -> None:
    write_sites(tmp_path)
    write_gps(tmp_path, f"a,{START + 10},-37.8,144.9,0\n")  # Melbourne
    sites = load_sites("sf-wang2019", tmp_path)

    with pytest.raises(ValueError, match=r"no taxi .* within 2000 m of a sf-wang2019"):
        load_gps_trace(sites, "2008-05-31", tmp_path)


def test_an_unknown_day_lists_the_days_present(tmp_path: Path) -> None:
    write_gps(tmp_path, "")

    with pytest.raises(DatasetNotFoundError, match="days present: 2008-05-31"):
        gps_file("2009-01-01", tmp_path)


def test_the_window_comes_from_the_file_name() -> None:
    assert gps_window(Path("gps-2008-06-06T08Z-24h.csv.gz")) == (1_212_739_200, 86_400)
    with pytest.raises(ValueError, match="start_unix_s and duration_s"):
        gps_window(Path("taxis.csv"))
