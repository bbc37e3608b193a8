"""A source column whose type changes between loads: the warehouse column widens when every value it
holds and every incoming value keep their value (under `evolve`), else the load is refused by name.
Never a silent cast that rounds or reinterprets: `real` taking doubles, `timestamp` taking instants."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from sndw.errors import LoadError, PermanentError
from sndw.lake import Manifest, write_partition
from sndw.typeplan import PG_TYPE_KEY
from sndw.warehouse import LoadSpec, load_manifest, table_columns

DAY = dt.date(2024, 1, 2)


def lake(tmp_path: Path, batch: pa.RecordBatch, day: dt.date = DAY) -> Manifest:
    return write_partition([batch], tmp_path / "lake", "sql", "src", "readings", day, run_id=f"run-{day}")


def declared(batch: pa.RecordBatch, column: str, pg_type: str) -> pa.RecordBatch:
    """The batch as a PostgreSQL source's extract writes it: the column names its source type."""
    fields = [f.with_metadata({PG_TYPE_KEY: pg_type.encode()}) if f.name == column else f for f in batch.schema]
    return pa.record_batch(batch.columns, schema=pa.schema(fields))


def reals() -> pa.RecordBatch:
    return declared(pa.record_batch({"id": [1], "v": pa.array([0.5], pa.float32())}), "v", "real")


def doubles() -> pa.RecordBatch:
    """The source column retyped to double precision (ALTER TABLE ... TYPE double precision)."""
    return declared(pa.record_batch({"id": [2, 3], "v": pa.array([0.30000000000000004, 3.4028235677973366e38])}),
                    "v", "double precision")


def test_a_real_column_widens_to_double_for_doubles_and_keeps_every_value(tmp_path: Path,
                                                                            dw: psycopg.Connection) -> None:
    spec = LoadSpec("raw", "readings", "append")
    load_manifest(dw, lake(tmp_path, reals()), spec)
    assert table_columns(dw.cursor(), "raw", "readings")["v"] == "real"
    result = load_manifest(dw, lake(tmp_path, doubles(), DAY + dt.timedelta(days=1)), spec)
    assert {"change": "widen_column", "column": "v", "from": "real", "to": "double precision"} in result.schema_changes
    assert table_columns(dw.cursor(), "raw", "readings")["v"] == "double precision"
    dw.execute("SET extra_float_digits = 3")
    assert dw.execute("SELECT id, v::text FROM raw.readings ORDER BY id").fetchall() == [
        (1, "0.5"), (2, "0.30000000000000004"), (3, "3.4028235677973366e+38")]


def test_freeze_refuses_doubles_into_a_real_column_by_name(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("raw", "readings", "append", schema_contract="freeze")
    load_manifest(dw, lake(tmp_path, reals()), spec)
    with pytest.raises(PermanentError) as info:
        load_manifest(dw, lake(tmp_path, doubles(), DAY + dt.timedelta(days=1)), spec)
    assert "'v'" in str(info.value) and "freeze" in str(info.value), str(info.value)
    dw.rollback()
    assert table_columns(dw.cursor(), "raw", "readings")["v"] == "real"
    assert dw.execute("SELECT id, v FROM raw.readings").fetchall() == [(1, 0.5)]


def test_instants_into_a_wall_clock_timestamp_column_are_refused_by_name(tmp_path: Path,
                                                                         dw: psycopg.Connection) -> None:
    """A `timestamp` column holds wall-clock times of an unknown zone; a source column that now
    carries instants (`timestamptz`) would be written as UTC wall-clock times beside them: refused."""
    spec = LoadSpec("raw", "readings", "append")
    naive = pa.record_batch({"id": [1], "at": pa.array([dt.datetime(2024, 1, 2, 10, 0)], pa.timestamp("us"))})
    load_manifest(dw, lake(tmp_path, declared(naive, "at", "timestamp without time zone")), spec)
    assert table_columns(dw.cursor(), "raw", "readings")["at"] == "timestamp without time zone"
    aware = declared(pa.record_batch({"id": [2], "at": pa.array([dt.datetime(2024, 1, 2, 1, 0, tzinfo=dt.UTC)],
                                                                pa.timestamp("us", tz="UTC"))}),
                     "at", "timestamp with time zone")
    with pytest.raises(PermanentError) as info:
        load_manifest(dw, lake(tmp_path, aware, DAY + dt.timedelta(days=1)), spec)
    message = str(info.value)
    assert "raw.readings.at" in message and "timestamp without time zone" in message, message
    dw.rollback()
    assert dw.execute("SELECT id, at FROM raw.readings").fetchall() == [(1, dt.datetime(2024, 1, 2, 10, 0))]
    # Dates stay welcome: a date is that day's midnight, on any clock.
    dates = pa.record_batch({"id": [3], "at": pa.array([dt.date(2024, 1, 3)], pa.date32())})
    load_manifest(dw, lake(tmp_path, dates, DAY + dt.timedelta(days=2)), spec)
    assert dw.execute("SELECT at FROM raw.readings WHERE id = 3").fetchone() == (dt.datetime(2024, 1, 3),)


@pytest.mark.parametrize(("arrow_type", "value"), [
    (pa.timestamp("us"), -(1 << 63) + 946_684_800_000_000),  # micros since 1970 -> since 2000 = int64 min
    (pa.date32(), -(1 << 31) + 10_957),  # days since 1970 -> since 2000 = int32 min
])
def test_the_finite_value_that_shifts_onto_minus_infinity_is_refused(tmp_path: Path, dw: psycopg.Connection,
                                                                     arrow_type: pa.DataType, value: int) -> None:
    """A Parquet file's date or timestamp that PostgreSQL's epoch shift makes its -infinity marker is
    a value far out of its range: refused like any other, not loaded as '-infinity'."""
    storage = pa.int64() if pa.types.is_timestamp(arrow_type) else pa.int32()
    spec = LoadSpec("raw", "readings", "append")
    for others in ([], [0]):  # alone, and beside an ordinary value (the batch's other extreme)
        column = pa.array([value, *others], storage).view(arrow_type)
        with pytest.raises(LoadError, match="out of PostgreSQL's range"):
            load_manifest(dw, lake(tmp_path, pa.record_batch({"id": list(range(len(column))), "at": column})), spec)
        dw.rollback()
    # The lake's own -infinity (the type's minimum) still loads as -infinity.
    column = pa.array([-(1 << (storage.bit_width - 1))], storage).view(arrow_type)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [9], "at": column})), spec)
    assert dw.execute("SELECT at::text FROM raw.readings").fetchall() == [("-infinity",)]


def test_a_value_a_column_cannot_hold_exactly_is_refused_naming_table_column_and_file(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    """A column made double precision by an earlier load; the source's column now holds integers a
    double cannot hold exactly (2**53 + 1): refused with the table, the column and the lake file."""
    spec = LoadSpec("raw", "readings", "append")
    load_manifest(dw, lake(tmp_path, declared(pa.record_batch({"id": [1], "v": [0.5]}), "v", "double precision")), spec)
    big = lake(tmp_path, declared(pa.record_batch({"id": [2], "v": [2**53 + 1]}), "v", "bigint"),
               DAY + dt.timedelta(days=1))
    with pytest.raises(LoadError) as info:
        load_manifest(dw, big, spec)
    message = str(info.value)
    assert "raw.readings: column v:" in message and "double precision" in message, message
    assert big.paths[0] in message and "9007199254740993" in message, message
    dw.rollback()
    assert dw.execute("SELECT id, v FROM raw.readings").fetchall() == [(1, 0.5)]


def test_wall_clock_times_into_an_instant_column_are_refused_by_name(tmp_path: Path, dw: psycopg.Connection) -> None:
    """A PostgreSQL source's column retyped from timestamptz to timestamp: its wall-clock times would
    be read as UTC instants beside the instants already loaded."""
    spec = LoadSpec("raw", "readings", "append")
    aware = declared(pa.record_batch({"id": [1], "at": pa.array([dt.datetime(2024, 1, 2, 1, 0, tzinfo=dt.UTC)],
                                                               pa.timestamp("us", tz="UTC"))}),
                     "at", "timestamp with time zone")
    load_manifest(dw, lake(tmp_path, aware), spec)
    naive = declared(pa.record_batch({"id": [2], "at": pa.array([dt.datetime(2024, 1, 2, 10, 0)], pa.timestamp("us"))}),
                     "at", "timestamp without time zone")
    with pytest.raises(PermanentError) as info:
        load_manifest(dw, lake(tmp_path, naive, DAY + dt.timedelta(days=1)), spec)
    assert "raw.readings.at" in str(info.value) and "timestamp with time zone" in str(info.value), str(info.value)
    dw.rollback()
    assert dw.execute("SELECT count(*) FROM raw.readings").fetchone() == (1,)
    # A file's timestamps without a zone (no source type) are read as UTC, as documented.
    files = pa.record_batch({"id": [3], "at": pa.array([dt.datetime(2024, 1, 3, 10, 0)], pa.timestamp("us"))})
    load_manifest(dw, lake(tmp_path, files, DAY + dt.timedelta(days=2)), spec)
    assert dw.execute("SELECT count(*) FROM raw.readings").fetchone() == (2,)
