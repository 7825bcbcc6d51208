"""Finding the data folder and the cache folder, and the errors when absent."""

import re
from pathlib import Path

import pytest

from mecrl.datasets import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    DatasetNotFoundError,
    load_sites,
    resolve_cache_dir,
    resolve_data_dir,
)
from mecrl.datasets.paths import data_file


def test_an_explicit_folder_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))

    assert resolve_data_dir(tmp_path) == tmp_path


def test_the_environment_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    assert resolve_data_dir() == tmp_path


def test_no_folder_at_all_says_both_ways_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    with pytest.raises(
        DatasetNotFoundError, match=rf"{DATA_DIR_ENV} is not set.*data_dir"
    ):
        resolve_data_dir()


def test_a_missing_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))

    with pytest.raises(
        DatasetNotFoundError, match=rf"{re.escape(str(missing))}.*from {DATA_DIR_ENV}"
    ):
        resolve_data_dir()
    with pytest.raises(
        DatasetNotFoundError, match=rf"{re.escape(str(missing))}.*data_dir argument"
    ):
        resolve_data_dir(missing)


def test_a_missing_file_is_named_with_both_ways_to_set_the_folder(
    tmp_path: Path,
) -> None:
    expected = tmp_path / "sf-wang2019" / "sf_cells.csv"

    with pytest.raises(
        DatasetNotFoundError,
        match=rf"{re.escape(str(expected))}.*{DATA_DIR_ENV}.*data_dir",
    ):
        data_file(tmp_path, "sf-wang2019", "sf_cells.csv")
    with pytest.raises(DatasetNotFoundError, match=r"sf_cells\.csv"):
        load_sites("sf-wang2019", tmp_path)


def test_the_error_is_a_file_not_found_error() -> None:
    # the CLI reports FileNotFoundError as a one-line error, not a traceback
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_cache_folder_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"

    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "mecrl"


def test_the_default_cache_is_outside_the_repository(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    repository = Path(__file__).resolve().parents[2]

    folder = resolve_cache_dir().resolve()

    assert folder.name == "mecrl"
    assert repository not in folder.parents


def test_unknown_site_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown site dataset 'paris'; known: melbourne"
    ):
        load_sites("paris", tmp_path)
