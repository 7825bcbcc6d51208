"""The parsed-array cache: keyed by the source's SHA-256, used on the next load."""

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mecrl.datasets import cache_path, cached_arrays, clear_memory_cache, gps_file
from mecrl.datasets.gps import load_gps_fixes


def test_gps_parse_is_cached_by_hash_and_read_back(
    data_dir: Path, tmp_path: Path
) -> None:
    source = gps_file("2008-05-31", data_dir)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    clear_memory_cache()

    started = time.perf_counter()
    cold = load_gps_fixes(source, cache_dir=tmp_path)
    cold_s = time.perf_counter() - started
    files = list(tmp_path.glob("*.npz"))
    clear_memory_cache()
    started = time.perf_counter()
    warm = load_gps_fixes(source, cache_dir=tmp_path)
    warm_s = time.perf_counter() - started

    assert [f.name for f in files] == [f"gps-v1-1212220800-86400-{digest}.npz"]
    assert cache_path(source, "gps-v1-1212220800-86400", tmp_path) == files[0]
    assert warm_s < cold_s / 2
    np.testing.assert_array_equal(warm.unix_time_s, cold.unix_time_s)
    np.testing.assert_array_equal(warm.latitude_deg, cold.latitude_deg)
    assert warm.taxi_names == cold.taxi_names
    assert warm.dropped == cold.dropped


def parse_counting(calls: list[Path]) -> Callable[[Path], dict[str, np.ndarray]]:
    def parse(path: Path) -> dict[str, np.ndarray]:
        calls.append(path)
        return {"text": np.array([path.read_text()])}

    return parse


def test_an_edited_source_is_parsed_again(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("one")
    calls: list[Path] = []
    parse = parse_counting(calls)

    cached_arrays(source, "toy-v1", parse, tmp_path / "cache")
    clear_memory_cache()
    cached_arrays(source, "toy-v1", parse, tmp_path / "cache")
    assert len(calls) == 1

    source.write_text("two")
    arrays = cached_arrays(source, "toy-v1", parse, tmp_path / "cache")
    assert len(calls) == 2
    assert arrays["text"][0] == "two"
    assert len(list((tmp_path / "cache").glob("toy-v1-*.npz"))) == 2


def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("one")
    target = cache_path(source, "toy-v1", tmp_path)
    target.write_bytes(b"not an npz file")
    calls: list[Path] = []

    arrays = cached_arrays(source, "toy-v1", parse_counting(calls), tmp_path)

    assert len(calls) == 1
    assert arrays["text"][0] == "one"
    with np.load(target) as data:
        assert data["text"][0] == "one"


def test_cached_arrays_are_read_only(tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("one")

    arrays = cached_arrays(source, "toy-v1", parse_counting([]), tmp_path)

    with pytest.raises(ValueError, match="read-only"):
        arrays["text"][0] = "changed"
