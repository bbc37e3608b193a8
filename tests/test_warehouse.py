"""The loader on a real PostgreSQL: types, write modes, schema evolution, all-or-nothing loads."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from sndw.audit import AuditRecord
from sndw.errors import EmptyExtractError, LoadError, PermanentError, SchemaConflictError
from sndw.lake import Manifest, write_partition
from sndw.warehouse import LoadSpec, load_manifest, table_columns

from tests.conftest import count

DAY = dt.date(2024, 3, 1)
UTC = dt.UTC


def lake(tmp_path: Path, *batches: pa.RecordBatch, day: dt.date = DAY, table: str = "t") -> Manifest:
    return write_partition(list(batches), tmp_path / "lake", "sql", "src", table, day, run_id=f"run-{day}")


def rows(conn: psycopg.Connection, query: str) -> list[tuple]:
    return conn.execute(query).fetchall()


# ------------------------------------------------------------------------------ types


def test_round_trip_of_every_supported_type(tmp_path: Path, dw: psycopg.Connection) -> None:
    ts = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    batch = pa.record_batch({
        "text": pa.array(["héllo, \"world\"\n", None]),
        "i16": pa.array([-3, None], pa.int16()),
        "i32": pa.array([2**31 - 1, None], pa.int32()),
        "i64": pa.array([2**62, None], pa.int64()),
        "u64": pa.array([2**64 - 1, None], pa.uint64()),
        "f32": pa.array([1.5, None], pa.float32()),
        "f64": pa.array([3.141592653589793, None], pa.float64()),
        "flag": pa.array([True, None]),
        "amount": pa.array([decimal.Decimal("12345.67"), None], pa.decimal128(10, 2)),
        "day": pa.array([dt.date(2024, 2, 29), None]),
        "at": pa.array([ts, None], pa.timestamp("us", tz="UTC")),
        "naive": pa.array([dt.datetime(2024, 3, 1, 8, 0), None], pa.timestamp("ms")),
        "clock": pa.array([dt.time(23, 59, 58, 999999), None], pa.time64("us")),
        "took": pa.array([dt.timedelta(days=1, seconds=5, microseconds=7), None], pa.duration("us")),
        "blob": pa.array([b"\x00\xffbin", None], pa.binary()),
        "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "geo": pa.array([{"lat": 1.5, "lng": -2.0}, None], pa.struct([("lat", pa.float64()), ("lng", pa.float64())])),
        "doc": pa.array(['{"k": [1, {"x": null}]}', None], pa.string()).cast(pa.json_()),
        "nothing": pa.nulls(2),
    })
    load_manifest(dw, lake(tmp_path, batch), LoadSpec("public", "types", "replace"))
    types = table_columns(dw.cursor(), "public", "types")
    assert types["text"] == "text" and types["i16"] == "bigint" and types["u64"] == "numeric"
    assert types["f32"] == "double precision" and types["amount"] == "numeric"
    assert types["at"] == types["naive"] == "timestamp with time zone"
    assert types["clock"] == "time without time zone" and types["took"] == "interval"
    assert types["blob"] == "bytea" and types["tags"] == types["geo"] == types["doc"] == "jsonb"
    assert types["nothing"] == "text" and types["_loaded_at"] == "timestamp with time zone"
    got = rows(dw, "SELECT text, i16, i32, i64, u64, f32, f64, flag, amount, day, at, naive, clock, took, blob, "
                   "tags, geo, doc, nothing, _partition_date, f.run_id, f.lake_path "
                   "FROM types LEFT JOIN etl_lake_files f ON f.file_id = types._file_id ORDER BY i16")
    first, second = got
    assert first[:10] == ("héllo, \"world\"\n", -3, 2**31 - 1, 2**62, decimal.Decimal(2**64 - 1), 1.5,
                          3.141592653589793, True, decimal.Decimal("12345.67"), dt.date(2024, 2, 29))
    assert first[10] == ts
    assert first[11] == dt.datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert first[12] == dt.time(23, 59, 58, 999999)
    assert first[13] == dt.timedelta(days=1, seconds=5, microseconds=7)
    assert first[14] == b"\x00\xffbin"
    assert first[15] == ["a", "b"] and first[16] == {"lat": 1.5, "lng": -2.0}
    assert first[17] == {"k": [1, {"x": None}]} and first[18] is None
    assert first[19] == DAY and first[20] == "run-2024-03-01" and first[21].endswith(".parquet") and "/part-00000-" in first[21]
    assert all(v is None for v in second[:19])


def test_nul_bytes_become_replacement_characters(tmp_path: Path, dw: psycopg.Connection) -> None:
    batch = pa.record_batch({"s": ["a\x00b", "ok"], "j": pa.array(['{"v": "\\u0000"}', None]).cast(pa.json_())})
    result = load_manifest(dw, lake(tmp_path, batch), LoadSpec("public", "nul", "append"))
    assert result.nul_replaced == 2
    assert rows(dw, "SELECT s, j->>'v' FROM nul ORDER BY s") == [("a\ufffdb", "\ufffd"), ("ok", None)]


def test_identifiers_are_quoted(tmp_path: Path, dw: psycopg.Connection) -> None:
    batch = pa.record_batch({"select": [1], "order": ["x"]})
    load_manifest(dw, lake(tmp_path, batch), LoadSpec("Weird Schema", "user", "replace"))
    assert rows(dw, 'SELECT "select", "order" FROM "Weird Schema"."user"') == [(1, "x")]


# ------------------------------------------------------------------------- write modes


def test_append_adds_rows_each_time(tmp_path: Path, dw: psycopg.Connection) -> None:
    m = lake(tmp_path, pa.record_batch({"id": [1, 2, 3]}))
    spec = LoadSpec("public", "events", "append")
    load_manifest(dw, m, spec)
    load_manifest(dw, m, spec)
    assert count(dw, "events") == 6


def test_replace_swaps_in_the_new_rows(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("raw", "items", "replace")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2, 3]})), spec)
    dw.execute("CREATE INDEX items_id ON raw.items (id)")
    dw.commit()
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [7, 8]})), spec)
    assert rows(dw, "SELECT id FROM raw.items ORDER BY id") == [(7,), (8,)]
    indexes = rows(dw, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'raw' AND tablename = 'items'")
    assert len(indexes) == 1 and "(id)" in indexes[0][0]  # the table's index survives the swap
    assert rows(dw, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'items__sndw%'") == [(0,)]


def test_replace_keeps_views_on_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "items", "replace")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2, 3]})), spec)
    dw.execute("CREATE VIEW big_items AS SELECT id FROM items WHERE id > 1")
    dw.commit()
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [5, 6]})), spec)
    assert rows(dw, "SELECT id FROM big_items ORDER BY id") == [(5,), (6,)]


def test_replace_with_zero_rows_empties_the_table_only_when_allowed(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "items", "replace")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1]})), spec)
    empty = lake(tmp_path, pa.record_batch({"id": pa.array([], pa.int64())}))
    with pytest.raises(EmptyExtractError, match="0 rows"):  # more cases: tests/test_replace.py
        load_manifest(dw, empty, spec)
    assert count(dw, "items") == 1
    spec.allow_empty = True
    result = load_manifest(dw, empty, spec)
    assert result.rows_loaded == 0 and count(dw, "items") == 0


def test_merge_upserts_and_the_last_row_of_a_key_wins(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "users", "merge", ["id"])
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2], "name": ["a", "b"]})), spec)
    second = pa.record_batch({"id": [2, 3, 2], "name": ["b-old", "c", "b-new"]})
    load_manifest(dw, lake(tmp_path, second), spec)
    assert rows(dw, "SELECT id, name FROM users ORDER BY id") == [(1, "a"), (2, "b-new"), (3, "c")]


def test_merge_on_a_composite_key_and_a_table_other_tables_point_at(tmp_path: Path, dw: psycopg.Connection) -> None:
    """Composite keys, duplicates in two files of one load; a table that a foreign key points at is
    updated in place (its child rows stay, ON DELETE CASCADE included)."""
    spec = LoadSpec("public", "stock", "merge", ["site", "sku"])
    first = pa.record_batch({"site": ["a", "a", "b"], "sku": [1, 2, 1], "qty": [10, 20, 30]})
    load_manifest(dw, lake(tmp_path, first), spec)
    dw.execute("CREATE TABLE moves (site text, sku bigint, FOREIGN KEY (site, sku) REFERENCES stock (site, sku) "
               "ON DELETE CASCADE)")
    dw.execute("INSERT INTO moves VALUES ('a', 1), ('b', 1)")
    dw.commit()
    files = lake(tmp_path, pa.record_batch({"site": ["a", "b"], "sku": [1, 2], "qty": [11, 40]}),
                 pa.record_batch({"site": ["a"], "sku": [1], "qty": [12]}))
    load_manifest(dw, files, spec)
    assert rows(dw, "SELECT site, sku, qty FROM stock ORDER BY 1, 2") == [("a", 1, 12), ("a", 2, 20), ("b", 1, 30),
                                                                            ("b", 2, 40)]
    assert rows(dw, "SELECT site, sku FROM moves ORDER BY 1") == [("a", 1), ("b", 1)]
    dw.execute("DROP TABLE moves")
    dw.commit()
    load_manifest(dw, lake(tmp_path, pa.record_batch({"site": ["b", "b"], "sku": [1, 1], "qty": [31, 32]})), spec)
    assert rows(dw, "SELECT site, sku, qty FROM stock ORDER BY 1, 2") == [("a", 1, 12), ("a", 2, 20), ("b", 1, 32),
                                                                            ("b", 2, 40)]


def test_merge_without_repeated_keys_copies_the_rows_into_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    """The usual merge (no key twice in the load): only the keys go to a temporary table, the rows
    with those keys are deleted and the new rows COPYed in. Composite key with a date, and a key of
    a type that travels as text (uuid): each matched exactly, the other rows untouched."""
    spec = LoadSpec("public", "visits", "merge", ["site", "day"])
    day1, day2, day3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"site": ["a", "a", "b"], "day": [day1, day2, day1],
                                                      "n": [1, 2, 3]})), spec)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"site": ["a", "b"], "day": [day2, day3], "n": [20, 30]}),
                           pa.record_batch({"site": ["b"], "day": [day1], "n": [31]})), spec)
    assert rows(dw, "SELECT site, day, n FROM visits ORDER BY 1, 2") == [
        ("a", day1, 1), ("a", day2, 20), ("b", day1, 31), ("b", day3, 30)]
    # Lineage: the kept row points at the first load's file, the merged ones at the second's.
    assert rows(dw, "SELECT count(DISTINCT _file_id), count(DISTINCT _file_id) FILTER (WHERE n > 3) FROM visits") == [
        (2, 1)]

    ids = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"]
    uuid_field = pa.field("id", pa.string(), metadata={b"sndw.pg_type": b"uuid"})
    uuid_spec = LoadSpec("public", "things", "merge", ["id"])
    batch = pa.RecordBatch.from_arrays([pa.array(ids), pa.array(["x", "y"])], schema=pa.schema([uuid_field, ("v", pa.string())]))
    load_manifest(dw, lake(tmp_path, batch, table="things"), uuid_spec)
    update = pa.RecordBatch.from_arrays([pa.array(ids[1:]), pa.array(["y2"])], schema=pa.schema([uuid_field, ("v", pa.string())]))
    load_manifest(dw, lake(tmp_path, update, table="things"), uuid_spec)
    assert rows(dw, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'things'::regclass AND attname = 'id'") == [("uuid",)]
    assert rows(dw, "SELECT id::text, v FROM things ORDER BY 1") == [(ids[1], "y2"), (ids[0], "x")]


def test_merge_keeps_the_last_row_of_a_key_also_without_a_unique_key_index(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    """A table whose key index was replaced by hand by a non-unique one still gets one row per key:
    the merge's own duplicate handling decides, not the index."""
    spec = LoadSpec("public", "users", "merge", ["id"])
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2], "name": ["a", "b"]})), spec)
    dw.execute("DROP INDEX users__sndw_key")
    dw.execute("CREATE INDEX users__sndw_key ON users (id)")  # same name, not unique: not recreated
    dw.commit()
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [2, 3, 2, 3], "name": ["x", "c", "b-new", "c-new"]})),
                  spec)
    assert rows(dw, "SELECT id, name FROM users ORDER BY id") == [(1, "a"), (2, "b-new"), (3, "c-new")]


def test_merge_rejects_null_keys(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "users", "merge", ["id"])
    with pytest.raises(PermanentError, match=r"public.users: 1 rows have a NULL primary key \(id\)"):
        load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, None]})), spec)
    assert rows(dw, "SELECT to_regclass('public.users')") == [(None,)]
    # A compound key, the table there: counted over the files, a row with both parts NULL counted once.
    spec = LoadSpec("public", "pairs", "merge", ["a", "b"])
    load_manifest(dw, lake(tmp_path, pa.record_batch({"a": [1], "b": [1]}), table="pairs"), spec)
    with pytest.raises(PermanentError, match=r"public.pairs: 3 rows have a NULL primary key \(a, b\)"):
        load_manifest(dw, lake(tmp_path, pa.record_batch({"a": [1, None, None, 2], "b": [None, None, 3, 4]}),
                               day=dt.date(2024, 3, 2), table="pairs"), spec)
    assert rows(dw, "SELECT a, b FROM pairs") == [(1, 1)]


def test_partition_replaces_exactly_one_date(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "sales", "partition")
    day1, day2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"v": [1, 2, 3]}), day=day1), spec)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"v": [4, 5]}), day=day2), spec)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"v": [10]}), day=day1), spec)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"v": [10]}), day=day1), spec)
    assert rows(dw, "SELECT _partition_date, count(*), sum(v) FROM sales GROUP BY 1 ORDER BY 1") == [
        (day1, 1, 10), (day2, 2, 9)]
    assert rows(dw, "SELECT relkind FROM pg_class WHERE relname = 'sales'") == [("p",)]
    assert rows(dw, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'sales'::regclass") == [(2,)]


@pytest.mark.parametrize("mode", ["append", "replace", "merge", "partition"])
def test_a_failure_in_the_middle_of_a_load_leaves_the_table_as_before(
        tmp_path: Path, dw: psycopg.Connection, mode: str) -> None:
    spec = LoadSpec("public", "orders", mode, ["id"] if mode == "merge" else ())
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2], "amount": [10, 20]})), spec)
    dw.execute("ALTER TABLE orders ADD CONSTRAINT small CHECK (amount < 1000)")
    dw.commit()
    before = rows(dw, "SELECT id, amount, _loaded_at FROM orders ORDER BY id")
    # Two files: the first loads fine, the second breaks the constraint halfway through the load.
    good = pa.record_batch({"id": [1, 2, 3], "amount": [11, 21, 31], "extra": ["a", "b", "c"]})
    bad = pa.record_batch({"id": [4, 5], "amount": [40, 5000], "extra": [None, None], "more": [1.5, 2.5]})
    manifest = lake(tmp_path, good, bad)
    assert len(manifest.paths) == 2
    with pytest.raises(LoadError, match="rolled back.*small"):
        load_manifest(dw, manifest, spec, audit=AuditRecord("p", "src", "sql", "public.orders", "success",
                                                            dt.datetime.now(UTC)))
    assert rows(dw, "SELECT id, amount, _loaded_at FROM orders ORDER BY id") == before
    assert "extra" not in table_columns(dw.cursor(), "public", "orders")  # the ALTER was rolled back too
    assert rows(dw, "SELECT count(*) FROM etl_audit_log WHERE status = 'success'") == [(0,)]


def test_a_load_into_a_new_schema_survives_a_concurrent_creator(
        tmp_path: Path, dw: psycopg.Connection, dw_url: str) -> None:
    """Two first loads into one new schema at once (a backfill's parallel tasks): PostgreSQL's CREATE
    SCHEMA IF NOT EXISTS made the second fail on pg_namespace's unique index."""
    manifest = lake(tmp_path, pa.record_batch({"id": [1, 2]}))
    other = psycopg.connect(dw_url)
    other.execute("CREATE SCHEMA fresh")  # created, not yet committed: the concurrent load's schema
    outcome: list[BaseException | int] = []

    def load() -> None:
        with psycopg.connect(dw_url) as conn:
            try:
                outcome.append(load_manifest(conn, manifest, LoadSpec("fresh", "t", "append")).rows_loaded)
            except BaseException as exc:  # noqa: BLE001 (reported to the test below)
                outcome.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    with psycopg.connect(dw_url, autocommit=True) as watcher:  # wait until the load waits on the schema
        for _ in range(200):
            if watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the load never waited for the concurrent CREATE SCHEMA")
    other.commit()
    other.close()
    worker.join(30)
    assert outcome == [2]
    assert rows(dw, "SELECT count(*) FROM fresh.t") == [(2,)]


# --------------------------------------------------------------------- schema evolution


def test_new_columns_are_added_and_missing_ones_get_null(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "people", "append")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1], "name": ["a"]})), spec)
    result = load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [2], "email": ["b@x"]})), spec)
    assert result.schema_changes == [{"change": "add_column", "column": "email", "type": "text"}]
    assert rows(dw, "SELECT id, name, email FROM people ORDER BY id") == [(1, "a", None), (2, None, "b@x")]


def test_bigint_is_widened_to_numeric_when_decimals_arrive(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "prices", "append")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"p": [5]})), spec)
    wide = pa.record_batch({"p": pa.array([decimal.Decimal("2.50")], pa.decimal128(5, 2))})
    audit = AuditRecord("pipe", "src", "sql", "public.prices", "success", dt.datetime.now(UTC))
    result = load_manifest(dw, lake(tmp_path, wide), spec, audit=audit)
    assert result.schema_changes == [{"change": "widen_column", "column": "p", "from": "bigint", "to": "numeric"}]
    assert rows(dw, "SELECT p FROM prices ORDER BY p") == [(decimal.Decimal("2.50"),), (decimal.Decimal(5),)]
    recorded = rows(dw, "SELECT schema_changes FROM etl_audit_log")[0][0]
    assert recorded == json.loads(json.dumps(result.schema_changes))


def test_a_type_that_no_longer_fits_is_a_clear_error(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "codes", "append")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"code": [1, 2]})), spec)
    with pytest.raises(SchemaConflictError) as info:
        load_manifest(dw, lake(tmp_path, pa.record_batch({"code": ["A-1"]})), spec)
    err = info.value
    assert (err.table, err.column, err.old_type) == ("public.codes", "code", "bigint")
    assert "string" in err.new_type and "public.codes.code" in str(err)
    assert count(dw, "codes") == 2


def test_audit_row_commits_with_the_data(tmp_path: Path, dw: psycopg.Connection) -> None:
    audit = AuditRecord("pipe", "src", "sql", "public.t", "success", dt.datetime.now(UTC), dag_id="d",
                        task_id="load_t", airflow_run_id="r", try_number=1, partition_date=DAY)
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2]})), LoadSpec("public", "t", "append"), audit=audit)
    assert rows(dw, "SELECT status, rows_loaded, parquet_files, attempt_key FROM etl_audit_log") == [
        ("success", 2, 1, "d|load_t|r|1")]


def test_missing_lake_files_fail_before_touching_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    manifest = lake(tmp_path, pa.record_batch({"id": [1]}))
    Path(manifest.paths[0]).unlink()
    with pytest.raises(Exception, match="missing"):
        load_manifest(dw, manifest, LoadSpec("public", "t", "append"))
