"""Reading CSV files (plain or gzip) into NumPy columns, dropping bad rows.

Real files carry broken rows: a truncated line, a value that is not a
number, a latitude of 450 degrees. :func:`read_table` never crashes on such a
row: it drops it and counts it under one reason, so a loader can report what
it threw away. A file whose header lacks a needed column is a different
matter, and raises an error naming the file and the missing column.

| reason | row |
|---|---|
| ``malformed`` | wrong number of fields, an empty text field, or a line the CSV |
| | parser cannot read |
| ``non_numeric`` | a numeric field that is not a finite number (or, for an |
| | integer column, not a whole number) |
| ``out_of_range`` | a number outside its column's valid range |
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import numpy.typing as npt

DROP_REASONS: tuple[str, ...] = ("malformed", "non_numeric", "out_of_range")
"""Reasons for dropping a row, in the order they are checked."""


@dataclass(frozen=True)
class Column:
    """How to read one column of a CSV file."""

    name: str
    """Header name of the column."""
    kind: Literal["float", "int", "str"] = "float"
    """``float`` (float64), ``int`` (int64, whole numbers only) or ``str``."""
    low: float = -math.inf
    """Smallest valid value of a numeric column."""
    high: float = math.inf
    """Largest valid value of a numeric column."""


@dataclass(frozen=True)
class Table:
    """The good rows of a CSV file, column by column."""

    columns: dict[str, np.ndarray]
    """Values of each requested column, one entry per kept row."""
    rows: int
    """Data rows in the file (header excluded), kept or not."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows dropped, by reason (see :data:`DROP_REASONS`)."""

    @property
    def kept(self) -> int:
        """Number of rows kept."""
        return self.rows - sum(self.dropped.values())


def read_table(path: Path, columns: Sequence[Column]) -> Table:
    """Read the given columns of a CSV file with a header line.

    Files ending in ``.gz`` are decompressed on the fly. Bytes that are not
    UTF-8 are replaced, so they end up in a dropped row rather than an error.

    Args:
        path: The CSV file.
        columns: The columns to read; other columns are ignored.

    Raises:
        ValueError: If the file is empty or its header lacks a column; the
            message names the file and the column.
    """
    with _open_text(path) as stream:
        reader = csv.reader(stream)
        header = _header(path, reader)
        missing = [c.name for c in columns if c.name not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column {missing[0]!r}; the header has "
                f"{', '.join(header)}"
            )
        indices = [header.index(c.name) for c in columns]
        raw, rows, malformed = _collect(reader, len(header), indices)

    values: dict[str, np.ndarray] = {}
    bad = {reason: np.zeros(len(raw[0]), dtype=bool) for reason in DROP_REASONS}
    for column, texts in zip(columns, raw, strict=True):
        values[column.name] = _convert(column, texts, bad)

    # A row counts once, under the first reason that applies to it.
    dropped = {"malformed": malformed}
    seen = np.zeros_like(bad["malformed"])
    for reason in DROP_REASONS:
        fresh = bad[reason] & ~seen
        dropped[reason] = dropped.get(reason, 0) + int(fresh.sum())
        seen |= fresh
    keep = ~seen
    kept = {c.name: _cast(c, values[c.name][keep]) for c in columns}
    return Table(columns=kept, rows=rows, dropped=dropped)


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    if path.suffix == ".gz":
        with gzip.open(
            path, "rt", encoding="utf-8", errors="replace", newline=""
        ) as unpacked:
            yield unpacked
    else:
        with path.open(encoding="utf-8", errors="replace", newline="") as plain:
            yield plain


def _header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a header line") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable header line: {exc}") from None
    return [name.strip().lstrip("\ufeff") for name in header]


def _collect(
    reader: Iterator[list[str]], width: int, indices: list[int]
) -> tuple[list[list[str]], int, int]:
    """Gather the text of the wanted fields of every well-formed row."""
    raw: list[list[str]] = [[] for _ in indices]
    rows = malformed = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            # the parser resumes at the next line after a broken one
            rows += 1
            malformed += 1
            continue
        rows += 1
        if len(row) != width:
            malformed += 1
            continue
        for store, index in zip(raw, indices, strict=True):
            store.append(row[index])
    return raw, rows, malformed


def _convert(
    column: Column, texts: list[str], bad: dict[str, npt.NDArray[np.bool_]]
) -> np.ndarray:
    """Convert one column's text, flagging bad entries in ``bad``."""
    if column.kind == "str":
        stripped = np.array([text.strip() for text in texts], dtype=str)
        bad["malformed"] |= stripped == ""
        return stripped
    numbers = _numbers(texts)
    non_numeric = ~np.isfinite(numbers)
    if column.kind == "int":
        non_numeric |= np.where(non_numeric, False, numbers != np.round(numbers))
    bad["non_numeric"] |= non_numeric
    with np.errstate(invalid="ignore"):
        outside = (numbers < column.low) | (numbers > column.high)
    bad["out_of_range"] |= outside & ~non_numeric
    return numbers


def _numbers(texts: list[str]) -> npt.NDArray[np.float64]:
    """Parse numbers in one go, or one by one (NaN for bad ones) if that fails."""
    try:
        return np.array(texts, dtype=np.float64)
    except ValueError:
        return np.array([_number_or_nan(text) for text in texts], dtype=np.float64)


def _number_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _cast(column: Column, values: np.ndarray) -> np.ndarray:
    if column.kind == "int":
        return values.astype(np.int64)
    return values
