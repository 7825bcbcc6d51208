"""Reading CSV files with broken rows: dropped and counted, never a crash."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from mecrl.datasets.tables import Column, read_table

COLUMNS = [
    Column("name", "str"),
    Column("count", "int", 0.0),
    Column("latitude", "float", -90.0, 90.0),
]


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["table.csv", "table.csv.gz"])
def test_bad_rows_are_dropped_and_counted_by_reason(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path / name,
        "name,count,latitude,extra\n"
        "a,1,37.5,x\n"
        "b,two,37.5,x\n"  # non-numeric
        "c,3,nan,x\n"  # not finite
        "d,4.5,37.5,x\n"  # not a whole number
        "e,5,137.5,x\n"  # latitude out of range
        "f,-6,37.5,x\n"  # count below its minimum
        "g,7,37.5\n"  # a field missing
        "h,8,37.5,x,y\n"  # a field too many
        ",9,37.5,x\n"  # empty name
        "i,10,-37.25,x\n",
    )

    table = read_table(path, COLUMNS)

    assert table.rows == 10
    assert table.dropped == {"malformed": 3, "non_numeric": 3, "out_of_range": 2}
    assert table.kept == 2
    np.testing.assert_array_equal(table.columns["name"], ["a", "i"])
    np.testing.assert_array_equal(table.columns["count"], [1, 10])
    assert table.columns["count"].dtype == np.int64
    np.testing.assert_array_equal(table.columns["latitude"], [37.5, -37.25])


def test_a_missing_column_is_an_error_naming_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "name,latitude\na,1.0\n")

    with pytest.raises(ValueError, match=r"t\.csv: missing column 'count'; the header"):
        read_table(path, COLUMNS)


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "")

    with pytest.raises(ValueError, match="empty file"):
        read_table(path, COLUMNS)


def test_a_header_only_file_gives_empty_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "name,count,latitude\n")

    table = read_table(path, COLUMNS)

    assert table.rows == 0
    assert all(len(values) == 0 for values in table.columns.values())


def test_undecodable_bytes_end_in_a_dropped_row(tmp_path: Path) -> None:
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"name,count,latitude\na,1,2.0\nb,\xff\xfe,3.0\n")

    table = read_table(path, COLUMNS)

    assert table.kept == 1
    assert table.dropped["non_numeric"] == 1


def test_a_byte_order_mark_and_spaces_in_the_header_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufeffname, count ,latitude\na,1,2.0\n")

    assert read_table(path, COLUMNS).kept == 1
