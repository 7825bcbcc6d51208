"""Where the real data and the parsed-array cache live.

The data folder holds one subfolder per dataset (``sf-wang2019/``,
``sf-cabspotting/``, ``sf-opencellid/``, ``eua-melbourne/``) and is read in
place: nothing is copied into the repository. It comes from an explicit
argument or, failing that, from the ``MECRL_DATA_DIR`` environment variable.

Parsed arrays are cached as ``.npz`` files in a cache folder: an explicit
argument, else ``MECRL_CACHE_DIR``, else ``mecrl`` under the user's cache
folder (``$XDG_CACHE_HOME`` or ``~/.cache``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_DIR_ENV = "MECRL_DATA_DIR"
"""Environment variable naming the data folder."""

CACHE_DIR_ENV = "MECRL_CACHE_DIR"
"""Environment variable naming the cache folder."""

_HOW_TO_SET = (
    f"set {DATA_DIR_ENV} to the folder holding sf-wang2019/, sf-cabspotting/, "
    "sf-opencellid/ and eua-melbourne/, or pass that folder explicitly as "
    "data_dir (a parameter of the dataset-sites topology, of the "
    "dataset-replay and gps-replay mobility sources and of the loaders)"
)


class DatasetNotFoundError(FileNotFoundError):
    """The data folder or one of its files is missing.

    The message names the path that was looked for and both ways to point
    mecrl at the data.
    """


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: ``data_dir`` if given, else ``$MECRL_DATA_DIR``.

    Raises:
        DatasetNotFoundError: If neither is set or the folder does not exist.
    """
    if data_dir is not None:
        source = "the data_dir argument"
        path = Path(data_dir)
    elif os.environ.get(DATA_DIR_ENV):
        source = DATA_DIR_ENV
        path = Path(os.environ[DATA_DIR_ENV])
    else:
        raise DatasetNotFoundError(
            f"no data folder: {DATA_DIR_ENV} is not set and no data_dir was "
            f"given; {_HOW_TO_SET}"
        )
    path = path.expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"data folder {path} (from {source}) does not exist; {_HOW_TO_SET}"
        )
    return path


def data_file(data_dir: str | os.PathLike[str] | None, *parts: str) -> Path:
    """Return the path of a data file under the data folder.

    Args:
        data_dir: Explicit data folder, or None for ``$MECRL_DATA_DIR``.
        *parts: Path components below the data folder
            (``"sf-wang2019", "sf_cells.csv"``).

    Raises:
        DatasetNotFoundError: If the folder or the file does not exist.
    """
    path = resolve_data_dir(data_dir).joinpath(*parts)
    if not path.is_file():
        raise DatasetNotFoundError(f"missing data file {path}; {_HOW_TO_SET}")
    return path


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder (not created here).

    ``cache_dir`` if given, else ``$MECRL_CACHE_DIR``, else ``mecrl`` under
    ``$XDG_CACHE_HOME`` or ``~/.cache``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "mecrl"


def file_sha256(path: Path) -> str:
    """Return the hexadecimal SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
