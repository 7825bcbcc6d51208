"""Fixtures of the real-data tests: where the data are, and a private cache.

Tests that read the real data take the ``data_dir`` fixture, which skips
them, saying why, when ``MECRL_DATA_DIR`` is unset or names a missing
folder. CI sets it to ``../shared/data``.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mecrl.datasets import CACHE_DIR_ENV, DATA_DIR_ENV, clear_memory_cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder, or skip."""
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        pytest.skip(f"{DATA_DIR_ENV} is not set: the real-data tests need it")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"{DATA_DIR_ENV}={value} is not a folder")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the parsed-array cache at a fresh folder for the whole session.

    Tests then never read a cache written by another version of the code,
    and leave nothing in the user's cache folder.
    """
    folder = tmp_path_factory.mktemp("mecrl-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(folder))
        clear_memory_cache()
        yield folder
    clear_memory_cache()
