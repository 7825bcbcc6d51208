"""A cache of parsed arrays, on disk and in memory.

Parsing half a million GPS fixes takes a couple of seconds; loading the same
arrays from an ``.npz`` file takes a few milliseconds. :func:`cached_arrays`
keys each parsed file by the SHA-256 of its bytes (and by the kind of parse,
which carries a format version), so an edited source file is parsed again
and an unchanged one never is. Environments build a new mobility source at
every reset, so the arrays are also kept in memory, keyed by the file's path,
size and modification time: a reset then costs neither a parse nor a hash.

Arrays handed out are read-only, because every caller shares them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mecrl.datasets.paths import file_sha256, resolve_cache_dir

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]

_MEMORY_SLOTS = 8
"""Parsed files kept in memory at most (each is at most a few tens of MB)."""

_memory: OrderedDict[tuple[str, str, int, int, str], Arrays] = OrderedDict()


def cache_path(
    source: Path, kind: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return the cache file that holds the parse ``kind`` of ``source``."""
    return resolve_cache_dir(cache_dir) / f"{kind}-{file_sha256(source)}.npz"


def cached_arrays(
    source: Path,
    kind: str,
    parse: Callable[[Path], Arrays],
    cache_dir: str | os.PathLike[str] | None = None,
) -> Arrays:
    """Return ``parse(source)``, from memory or the disk cache if possible.

    Args:
        source: The file to parse.
        kind: Name of the parse, with a version (``"gps-v1"``); part of the
            cache file's name, so changing the parser's output only needs a
            new version.
        parse: Function reading ``source`` into named arrays (no object
            arrays: the cache is read without pickle).
        cache_dir: Cache folder; see :func:`mecrl.datasets.paths.resolve_cache_dir`.
    """
    folder = resolve_cache_dir(cache_dir)
    stat = source.stat()
    key = (kind, str(source.resolve()), stat.st_mtime_ns, stat.st_size, str(folder))
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]

    target = folder / f"{kind}-{file_sha256(source)}.npz"
    arrays = _read(target)
    if arrays is None:
        arrays = parse(source)
        _write(target, arrays)
    else:
        logger.debug("read %s from cache %s", source.name, target)
    for array in arrays.values():
        array.setflags(write=False)

    _memory[key] = arrays
    while len(_memory) > _MEMORY_SLOTS:
        _memory.popitem(last=False)
    return arrays


def clear_memory_cache() -> None:
    """Forget the arrays kept in memory (the disk cache stays)."""
    _memory.clear()


def _read(target: Path) -> Arrays | None:
    if not target.is_file():
        return None
    try:
        with np.load(target, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable cache file %s: %s", target, exc)
        return None


def _write(target: Path, arrays: Arrays) -> None:
    """Write the cache file atomically; a failure only costs speed later."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.stem}-", suffix=".npz"
        )
    except OSError as exc:
        logger.warning("could not write cache file %s: %s", target, exc)
        return
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, allow_pickle=False, **arrays)
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        logger.warning("could not write cache file %s: %s", target, exc)
        return
    logger.debug("cached parsed arrays in %s", target)
