"""Quality checks: every kind passing and failing through the real load path on a real PostgreSQL,
a failing block check leaving everything as it was, warn, quarantine, a 0-row partition, the
command line (sync, check --quality, validate) and a DAG run through dag.test()."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from sndw.audit import AuditRecord
from sndw.checks_config import Check
from sndw.config import parse_source
from sndw.errors import ConfigError, PermanentError
from sndw.lake import Manifest, write_partition
from sndw.quality import QualityCheckError
from sndw.state import get_watermark
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import metadata_db, run, states

DAY = dt.date(2024, 3, 1)


def lake(tmp_path: Path, batch: pa.RecordBatch, day: dt.date = DAY, table: str = "orders") -> Manifest:
    return write_partition([batch], tmp_path / "lake", "sql", "src", table, day, run_id=f"run-{day}-{table}")


def orders(ids: list[int], amounts: list[Any], status: list[Any] | None = None, emails: list[Any] | None = None,
           customers: list[Any] | None = None, at: list[Any] | None = None) -> pa.RecordBatch:
    n = len(ids)
    now = dt.datetime.now(dt.UTC)
    return pa.record_batch({
        "id": pa.array(ids, pa.int64()),
        "amount": pa.array(amounts, pa.int64()),
        "status": pa.array(status or ["open"] * n),
        "email": pa.array(emails or [f"u{i}@x.org" for i in ids]),
        "customer_id": pa.array(customers or [1] * n, pa.int64()),
        "placed_at": pa.array(at or [now] * n, pa.timestamp("us", tz="UTC")),
    })


def checks(*raw: dict[str, Any]) -> list[Check]:
    return [Check.model_validate(c) for c in raw]


def audit_record(table: str = "public.orders") -> AuditRecord:
    return AuditRecord(pipeline_name="p", source_name="src", protocol="sql", target_table=table, status="success",
                       started_at=dt.datetime.now(dt.UTC), step="load", partition_date=DAY)


def table_hash(conn: psycopg.Connection, table: str) -> str | None:
    """Every row of the table, its metadata columns included, as one digest (None: no table)."""
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
        return None
    schema, _, name = table.rpartition(".")
    row = conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t").format(
        sql.Identifier(schema or "public", name))).fetchone()
    assert row is not None
    return str(row[0])


def results(conn: psycopg.Connection, table: str = "public.orders") -> list[tuple[Any, ...]]:
    return conn.execute("SELECT check_name, status, column_name, failing_rows, sample_keys, committed "
                        "FROM etl_check_results WHERE target_table = %s ORDER BY id", (table,)).fetchall()


# ------------------------------------------------------------------------- every kind, both ways

GOOD = orders([1, 2, 3], [10, 20, 30], ["open", "paid", "open"])
KINDS = {
    # check, a batch that fails it, the failing rows (None: a table-level check), the column named
    "not_null": ({"not_null": ["amount", "status"]}, orders([1, 2, 3], [10, None, 30], ["open", "paid", None]), 2,
                 "amount, status"),
    "unique": ({"unique": ["id"]}, orders([1, 2, 2], [10, 20, 30]), 2, "id"),
    "accepted_values": ({"accepted_values": {"column": "status", "values": ["open", "paid"]}},
                        orders([1, 2, 3], [1, 2, 3], ["open", "lost", "gone"]), 2, "status"),
    "range": ({"range": {"column": "amount", "min": 0, "max": 100}}, orders([1, 2, 3], [-1, 20, 101]), 2, "amount"),
    "regex": ({"regex": {"column": "email", "pattern": "^[^@ ]+@[^@ ]+$"}},
              orders([1, 2, 3], [1, 2, 3], emails=["a@b", "no at sign", "c@d"]), 1, "email"),
    "relationships": ({"relationships": {"column": "customer_id", "to": "public.customers.id"}},
                      orders([1, 2, 3], [1, 2, 3], customers=[1, 7, 8]), 2, "customer_id"),
    "row_count": ({"row_count": {"min": 3, "max": 5}}, orders([1, 2], [1, 2]), None, None),
    "freshness": ({"freshness": {"column": "placed_at", "max_age": "2d"}},
                  orders([1, 2, 3], [1, 2, 3], at=[dt.datetime(2020, 1, 1, tzinfo=dt.UTC)] * 3), None, "placed_at"),
    "sql": ({"sql": "SELECT id FROM {{ table }} WHERE amount > 10 * (SELECT min(amount) FROM {{ target }}) "
                    "AND _partition_date = '{{ partition_date }}'"},
            orders([1, 2, 3], [1, 20, 30]), 2, None),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_check_kind_passes_then_blocks_a_bad_partition(kind: str, tmp_path: Path, dw: psycopg.Connection) -> None:
    raw, bad, failing, column = KINDS[kind]
    dw.execute("CREATE TABLE customers (id bigint PRIMARY KEY)")
    dw.execute("INSERT INTO customers VALUES (1), (2)")
    dw.commit()
    spec = LoadSpec("public", "orders", "partition", ["id"], checks=checks(raw))
    loaded = load_manifest(dw, lake(tmp_path, GOOD), spec, audit=audit_record())
    assert loaded.rows_loaded == 3 and loaded.checks is not None
    assert [r["status"] for r in loaded.checks["results"]] == ["pass"], loaded.checks
    before = table_hash(dw, "orders")

    with pytest.raises(QualityCheckError) as failed:
        load_manifest(dw, lake(tmp_path, bad), spec, audit=audit_record())
    assert isinstance(failed.value, PermanentError)  # the operators fail the task without retries
    message = str(failed.value)
    assert Check.model_validate(raw).label in message and "rolled back" in message, message
    assert table_hash(dw, "orders") == before
    assert dw.execute("SELECT count(*) FROM etl_audit_log").fetchone() == (1,)  # the first load's only
    name, status, recorded_column, rows, keys, committed = results(dw)[-1]
    assert (status, committed, recorded_column) == ("fail", False, column), results(dw)
    assert rows == failing
    if failing:
        assert f"{failing} row" in message and keys, (message, keys)
        assert len(keys) <= 5


def test_row_count_change_against_the_previous_load(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "replace", ["id"],
                    checks=checks({"row_count_change": {"max_drop_pct": 50, "max_growth_pct": 100}}))
    ids = list(range(1, 11))
    first = load_manifest(dw, lake(tmp_path, orders(ids, ids)), spec, audit=audit_record())
    assert first.checks and first.checks["results"][0]["status"] == "pass"  # nothing to compare with yet
    grown = list(range(1, 16))  # +50%: allowed
    load_manifest(dw, lake(tmp_path, orders(grown, grown), day=DAY + dt.timedelta(1)), spec, audit=audit_record())
    before = table_hash(dw, "orders")
    with pytest.raises(QualityCheckError, match=r"5 rows against 15 \(-66.7%\), a fall of more than 50%"):
        load_manifest(dw, lake(tmp_path, orders([1, 2, 3, 4, 5], [1] * 5), day=DAY + dt.timedelta(2)), spec,
                      audit=audit_record())
    assert table_hash(dw, "orders") == before
    with pytest.raises(QualityCheckError, match=r"a rise of more than 100%"):
        load_manifest(dw, lake(tmp_path, orders(list(range(40)), [1] * 40), day=DAY + dt.timedelta(3)), spec,
                      audit=audit_record())


# --------------------------------------------------------------------- what a blocked load leaves


def test_a_blocked_load_keeps_the_watermark_and_the_previous_rows(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "append", ["id"], checks=checks({"range": {"column": "amount", "min": 0}}))
    first = lake(tmp_path, orders([1, 2], [5, 6]))
    first.watermark = {"cursor": "id", "value": "2", "value_type": "number"}
    load_manifest(dw, first, spec, audit=audit_record(), state_key=("p", "orders"))
    before = table_hash(dw, "orders")
    second = lake(tmp_path, orders([3, 4], [7, -8]), day=DAY + dt.timedelta(1))
    second.watermark = {"cursor": "id", "value": "4", "value_type": "number"}
    with pytest.raises(QualityCheckError, match=r"range\(amount\).*1 row out of range; sample keys: id=4"):
        load_manifest(dw, second, spec, audit=audit_record(), state_key=("p", "orders"))
    assert table_hash(dw, "orders") == before
    watermark = get_watermark(dw, "p", "orders")
    assert watermark is not None and watermark.value == "2"


def test_append_checks_see_only_the_new_rows_and_unique_sees_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    load_manifest(dw, lake(tmp_path, orders([1, 2], [5, None])), LoadSpec("public", "orders", "append", ["id"]))
    spec = LoadSpec("public", "orders", "append", ["id"], checks=checks({"not_null": ["amount"]}, {"unique": ["id"]}))
    # The NULL of the first load is not this load's: the not_null check passes.
    loaded = load_manifest(dw, lake(tmp_path, orders([3, 4], [7, 8]), day=DAY + dt.timedelta(1)), spec)
    assert loaded.checks and [r["status"] for r in loaded.checks["results"]] == ["pass", "pass"]
    # A new row repeating an earlier load's key fails unique.
    with pytest.raises(QualityCheckError, match=r"unique\(id\).*1 row repeats a value of \(id\); sample keys: id=3"):
        load_manifest(dw, lake(tmp_path, orders([3, 5], [1, 1]), day=DAY + dt.timedelta(2)), spec)


def test_merge_checks_the_new_and_changed_rows(tmp_path: Path, dw: psycopg.Connection) -> None:
    load_manifest(dw, lake(tmp_path, orders([1, 2, 3], [-5, 2, 3])), LoadSpec("public", "orders", "merge", ["id"]))
    spec = LoadSpec("public", "orders", "merge", ["id"], checks=checks({"range": {"column": "amount", "min": 0}},
                                                                       {"row_count": {"max": 2}}))
    # Row 1 (negative, loaded before) is not touched: the two changed rows pass.
    load_manifest(dw, lake(tmp_path, orders([2, 3], [20, 30]), day=DAY + dt.timedelta(1)), spec)
    assert dw.execute("SELECT id, amount FROM orders ORDER BY id").fetchall() == [(1, -5), (2, 20), (3, 30)]
    with pytest.raises(QualityCheckError, match="sample keys: id=3"):
        load_manifest(dw, lake(tmp_path, orders([3, 4], [-1, 1]), day=DAY + dt.timedelta(2)), spec)
    assert dw.execute("SELECT id, amount FROM orders ORDER BY id").fetchall() == [(1, -5), (2, 20), (3, 30)]


def scans_of(conn: psycopg.Connection, table: str = "orders") -> int:
    """Sequential scans of ``table`` so far in the current transaction."""
    row = conn.execute("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = %s", (table,)).fetchone()
    return int(row[0]) if row else 0


def test_the_row_checks_are_one_scan_and_only_a_failing_one_reads_samples(tmp_path: Path,
                                                                           dw: psycopg.Connection) -> None:
    from sndw.quality import CheckScope, run_checks

    load_manifest(dw, lake(tmp_path, orders([1, 2, 3, 4], [10, 20, 30, 40])), LoadSpec("public", "orders", "replace"))
    dw.commit()
    typical = checks({"not_null": ["id", "amount", "status"]}, {"range": {"column": "amount", "min": 0, "max": 100}},
                     {"accepted_values": {"column": "status", "values": ["open"]}},
                     {"regex": {"column": "email", "pattern": "@"}}, {"row_count": {"min": 1}},
                     {"unique": ["id"]}, {"unique": ["status", "email"], "severity": "warn"})
    with dw.cursor() as cur:
        before = scans_of(dw)
        passed, _ = run_checks(cur, typical, CheckScope("public", "orders"))
        assert [r.status for r in passed] == ["pass"] * 7 and scans_of(dw) - before == 1
        dw.execute("UPDATE orders SET amount = 500 WHERE id = 3")
        before = scans_of(dw)
        failed, _ = run_checks(cur, typical, CheckScope("public", "orders"))
        # The scan, then the failing range check's sample keys: nothing else reads the table again.
        assert [r.status for r in failed] == ["pass", "fail", "pass", "pass", "pass", "pass", "pass"], failed
        assert failed[1].failing_rows == 1 and failed[1].sample_keys == [{"amount": "500"}]
        assert scans_of(dw) - before == 2
        dw.execute("UPDATE orders SET id = 1, email = 'u1@x.org' WHERE id = 4")  # a repeated key, both ways
        repeated, _ = run_checks(cur, typical, CheckScope("public", "orders"))
        assert [(r.status, r.failing_rows) for r in repeated[5:]] == [("fail", 2), ("warn", 2)], repeated
    dw.rollback()


def test_unique_on_a_key_a_unique_index_guarantees_is_not_scanned(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "merge", ["id"], checks=checks(
        {"unique": ["id"]}, {"unique": ["status", "id"]}, {"unique": ["status"], "severity": "warn"}))
    loaded = load_manifest(dw, lake(tmp_path, orders([1, 2, 3], [1, 2, 3], ["open", "paid", "open"])), spec)
    assert loaded.checks is not None
    assert [(r["name"], r["status"], r["failing_rows"]) for r in loaded.checks["results"]] == [
        ("unique(id)", "pass", 0), ("unique(status, id)", "pass", 0), ("unique(status)", "warn", 2)]
    messages = dict(dw.execute("SELECT check_name, message FROM etl_check_results").fetchall())
    # The merge's unique index on id: a key set holding id cannot repeat either; status alone can.
    assert messages["unique(id)"] == messages["unique(status, id)"] == (
        "guaranteed by the unique index orders__sndw_key: not scanned")
    assert "repeat a value of (status)" in messages["unique(status)"]


def test_unique_is_scanned_when_no_index_truly_guarantees_it(dw: psycopg.Connection) -> None:
    from sndw.quality import CheckScope, run_checks

    dw.execute("CREATE TABLE orders (id bigint, status text, _partition_date date, _file_id integer)")
    # Partial, deferred, or on more columns than the check: none of them keeps id from repeating.
    dw.execute("CREATE UNIQUE INDEX partial ON orders (id) WHERE status = 'open'")
    dw.execute("CREATE UNIQUE INDEX wider ON orders (id, status)")
    dw.execute("ALTER TABLE orders ADD CONSTRAINT deferred UNIQUE (id) DEFERRABLE INITIALLY DEFERRED")
    dw.execute("INSERT INTO orders (id, status) VALUES (1, 'open'), (1, 'paid'), (2, 'open')")
    with dw.cursor() as cur:
        [result], _ = run_checks(cur, checks({"unique": ["id"]}), CheckScope("public", "orders"))
    assert (result.status, result.failing_rows, result.sample_keys) == ("fail", 2, [{"id": "1"}])
    dw.rollback()


# ------------------------------------------------------- checks proved from the rows as they were copied


def test_typical_checks_pass_on_the_copied_rows_without_reading_the_table(tmp_path: Path,
                                                                           dw: psycopg.Connection) -> None:
    """not_null, unique, range, accepted_values and regex the copied rows pass are not read back
    (sndw.checkstats); a check the copy cannot decide (row_count) still runs its SQL, and
    `check --quality` (no copy) reaches the same outcome from the table alone."""
    from sndw.quality import CheckScope, run_checks

    typical = checks({"not_null": ["id", "amount", "placed_at"]}, {"unique": ["id"]},
                     {"range": {"column": "amount", "min": 0, "max": 100}},
                     {"range": {"column": "placed_at", "min": "2000-01-01T00:00:00Z"}},
                     {"accepted_values": {"column": "status", "values": ["open", "paid"]}},
                     {"accepted_values": {"column": "amount", "values": [10, 20, 30, 40]}},
                     {"regex": {"column": "email", "pattern": "^u[0-9]+@x[.]org$"}},
                     {"row_count": {"min": 3}})
    spec = LoadSpec("public", "orders", "append", checks=typical)
    loaded = load_manifest(dw, lake(tmp_path, GOOD), spec)
    assert loaded.checks is not None and loaded.checks["counts"] == {"pass": 8}, loaded.checks
    messages = dw.execute("SELECT check_name, message FROM etl_check_results ORDER BY id").fetchall()
    assert [m for _, m in messages[:7]] == ["checked on the 3 rows as they were copied"] * 7, messages
    assert messages[7][1] == "3 rows"  # row_count: read from the table
    with dw.cursor() as cur:
        again, _ = run_checks(cur, typical, CheckScope("public", "orders"), apply=False)
    assert [(r.status, r.failing_rows) for r in again][:7] == [("pass", 0)] * 7
    assert not any("copied" in r.message for r in again)
    dw.rollback()


def test_unique_keys_proved_in_key_order_or_by_hashing_and_a_repeat_across_batches_is_not(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    from sndw.checkstats import RowStats
    from sndw.typeplan import ColumnPlan

    plans = [ColumnPlan("id", "bigint", pa.int64(), "native")]
    unique = checks({"unique": ["id"]})

    def stats(*batches: list[int | None]) -> RowStats:
        seen = RowStats(unique, alone=True)
        for ids in batches:
            seen.observe(pa.record_batch({"id": pa.array(ids, pa.int64())}), plans)
        return seen

    assert stats([1, 2, None], [3, 4]).rising[("id",)]
    assert stats([1, 2, None], [3, 4]).distinct(["id"], [])
    assert stats([3, 1], [4, 2]).distinct(["id"], []) and not stats([3, 1], [4, 2]).rising[("id",)]
    assert not stats([1, 2], [2, 3]).distinct(["id"], [])  # in order within each batch, repeated across them
    assert not stats([5, 1], [7, 5]).distinct(["id"], [])
    assert not RowStats(unique).distinct(["id"], [])  # not alone: earlier rows may hold the key
    # Through a load: keys out of order, all distinct, proved by hashing them.
    loaded = load_manifest(dw, lake(tmp_path, orders([3, 1, 2], [1, 2, 3])),
                           LoadSpec("public", "orders", "replace", checks=unique))
    assert loaded.checks is not None and loaded.checks["counts"] == {"pass": 1}
    assert dw.execute("SELECT message FROM etl_check_results").fetchone() == (
        "checked on the 3 rows as they were copied",)


def nan_amounts() -> pa.RecordBatch:
    return orders([1, 2, 3], [1, 2, 3]).set_column(1, "amount", pa.array([1.5, float("nan"), 3.0]))


# Rows the copy cannot vouch for: each check must still fail, by its SQL, exactly as PostgreSQL sees the rows.
UNPROVABLE = {
    # PostgreSQL orders NaN above every number: out of range, though Arrow's min/max skip it.
    "nan_in_range": (lambda: nan_amounts(), {"range": {"column": "amount", "min": 0, "max": 100}}, 1),
    # -0.0 and 0.0 are one value to PostgreSQL, two bit patterns to Arrow.
    "signed_zero_key": (lambda: orders([1, 2], [1, 2]).set_column(
        1, "amount", pa.array([0.0, -0.0])), {"unique": ["amount"]}, 2),
    # Two texts that differ only by a NUL byte are the same text once the load replaces the NUL.
    "nul_text_key": (lambda: orders([1, 2], [1, 2], emails=["a\x00b", "a\ufffdb"]), {"unique": ["email"]}, 2),
    # The copy saw a NUL byte; the table holds the U+FFFD that replaced it.
    "nul_text_pattern": (lambda: orders([1], [1], emails=["a\x00b"]), {"regex": {"column": "email", "pattern": "^[^\ufffd]*$"}}, 1),
}


@pytest.mark.parametrize("case", sorted(UNPROVABLE))
def test_rows_the_copy_cannot_vouch_for_are_checked_in_the_table(case: str, tmp_path: Path,
                                                                  dw: psycopg.Connection) -> None:
    make, raw, failing = UNPROVABLE[case]
    spec = LoadSpec("public", "orders", "replace", checks=checks(raw))
    with pytest.raises(QualityCheckError):
        load_manifest(dw, lake(tmp_path, make()), spec)
    assert results(dw)[-1][1:4] == ("fail", Check.model_validate(raw).columns[0], failing), results(dw)
    assert table_hash(dw, "orders") is None


def test_unique_under_char_n_is_checked_in_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    """char(n) ignores trailing blanks: 'a' and 'a ' repeat a key there, though their bytes differ."""
    load_manifest(dw, lake(tmp_path, GOOD), LoadSpec("public", "orders", "replace"))
    dw.execute("ALTER TABLE orders ALTER COLUMN status TYPE character(4)")
    dw.commit()
    spec = LoadSpec("public", "orders", "replace", checks=checks({"unique": ["status"]}))
    with pytest.raises(QualityCheckError, match="2 rows repeat a value of"):
        load_manifest(dw, lake(tmp_path, orders([1, 2], [1, 2], ["a", "a "])), spec)


def test_regex_under_a_column_collation_is_checked_in_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    """A pattern's character classes follow the column's collation: under "C.utf8" 'é' is a letter,
    under the database's default "C" it is not. The copied values would pass; the table's fail."""
    load_manifest(dw, lake(tmp_path, GOOD), LoadSpec("public", "orders", "replace"))
    dw.execute('ALTER TABLE orders ALTER COLUMN email TYPE text COLLATE "C.utf8"')
    dw.commit()
    spec = LoadSpec("public", "orders", "replace", checks=checks({"regex": {"column": "email", "pattern": "^[^[:alpha:]]+$"}}))
    with pytest.raises(QualityCheckError, match="1 row not matching the pattern"):
        load_manifest(dw, lake(tmp_path, orders([1], [1], emails=["é"])), spec)


def test_accepted_values_over_many_distinct_values_are_checked_in_the_table(tmp_path: Path,
                                                                            dw: psycopg.Connection) -> None:
    from sndw.checkstats import MAX_DISTINCT

    n = MAX_DISTINCT + 1
    spec = LoadSpec("public", "orders", "replace", checks=checks(
        {"accepted_values": {"column": "status", "values": [f"s{i}" for i in range(n)]}}))
    loaded = load_manifest(dw, lake(tmp_path, orders(list(range(n)), list(range(n)), [f"s{i}" for i in range(n)])), spec)
    assert loaded.checks is not None and loaded.checks["counts"] == {"pass": 1}
    assert dw.execute("SELECT message FROM etl_check_results").fetchone() == ("",)


def test_checks_of_a_table_with_soft_deletes_read_the_rows_kept(tmp_path: Path, dw: psycopg.Connection) -> None:
    """Soft deletes keep, marked, rows the load did not copy among the rows checked (the partition):
    the copy cannot speak for them, so the checks read the table."""
    spec = LoadSpec("public", "orders", "partition", ["id"], deletes="soft")
    load_manifest(dw, lake(tmp_path, orders([1, 2], [None, 5])), spec)
    checked = LoadSpec("public", "orders", "partition", ["id"], deletes="soft",
                       checks=checks({"not_null": ["amount"]}))
    with pytest.raises(QualityCheckError, match="1 row NULL.*id=1"):
        load_manifest(dw, lake(tmp_path, orders([2], [5])), checked)


def test_not_null_on_a_column_a_file_lacks_is_checked_in_the_table(tmp_path: Path, dw: psycopg.Connection) -> None:
    """The rows of a file without the column hold NULL there: the copy saw no NULL, the table has them."""
    spec = LoadSpec("public", "orders", "append", checks=checks({"not_null": ["customer_id"]}))
    load_manifest(dw, lake(tmp_path, GOOD), spec)
    without = orders([4, 5], [4, 5]).drop_columns(["customer_id"])
    with pytest.raises(QualityCheckError, match="2 rows have a NULL|2 rows NULL"):
        load_manifest(dw, lake(tmp_path, without, day=DAY + dt.timedelta(1)), spec)


# ----------------------------------------------------------------------------- warn, quarantine


def test_a_warn_check_commits_and_records_the_failure(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "partition", ["id"],
                    checks=checks({"not_null": ["amount"], "severity": "warn", "name": "amount_present"}))
    loaded = load_manifest(dw, lake(tmp_path, orders([1, 2, 3], [1, None, None])), spec, audit=audit_record())
    assert loaded.rows_loaded == 3 and loaded.checks == {
        "counts": {"warn": 1},
        "results": [{"name": "amount_present", "kind": "not_null", "status": "warn", "failing_rows": 2}]}
    assert dw.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert results(dw) == [("amount_present", "warn", "amount", 2, [{"id": "2"}, {"id": "3"}], True)]
    assert dw.execute("SELECT status, rows_loaded, rows_rejected FROM etl_audit_log").fetchall() == [("success", 3, 0)]


def test_quarantine_splits_the_rows_exactly(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "partition", ["id"], checks=checks(
        {"range": {"column": "amount", "min": 0}, "on_fail": "quarantine"},
        {"accepted_values": {"column": "status", "values": ["open", "paid"]}, "on_fail": "quarantine"},
        {"row_count": {"min": 1}}))
    ids = list(range(1, 101))
    amounts = [-i if i % 7 == 0 else i for i in ids]
    status = ["lost" if i % 11 == 0 else "open" for i in ids]
    batch = orders(ids, amounts, status)
    loaded = load_manifest(dw, lake(tmp_path, batch), spec, audit=audit_record())
    negative = {i for i in ids if i % 7 == 0}
    lost = {i for i in ids if i % 11 == 0} - negative  # moved by the first check already
    assert loaded.rows_rejected == len(negative) + len(lost) and loaded.rows_loaded == 100 - loaded.rows_rejected
    kept = {r[0] for r in dw.execute("SELECT id FROM orders").fetchall()}
    rejected = dict(dw.execute("SELECT id, _check FROM _rejected_orders").fetchall())
    assert kept == set(ids) - negative - lost
    assert rejected == {**{i: "range(amount)" for i in negative}, **{i: "accepted_values(status)" for i in lost}}
    # Together they are the extract, row for row (every column).
    extract = "SELECT * FROM unnest(%(i)s::bigint[], %(a)s::bigint[], %(s)s::text[]) AS v(id, amount, status)"
    both = "SELECT id, amount, status FROM orders UNION ALL SELECT id, amount, status FROM _rejected_orders"
    values = {"i": ids, "a": amounts, "s": status}
    assert dw.execute(f"({both}) EXCEPT ALL {extract}", values).fetchall() == []
    assert dw.execute(f"{extract} EXCEPT ALL ({both})", values).fetchall() == []
    assert dw.execute("SELECT rows_loaded, rows_rejected FROM etl_audit_log").fetchall() == [
        (loaded.rows_loaded, loaded.rows_rejected)]
    # Loading the partition again replaces its rejections too (no duplicates).
    load_manifest(dw, lake(tmp_path, batch), spec, audit=audit_record())
    assert dw.execute("SELECT count(*) FROM _rejected_orders").fetchone() == (len(negative) + len(lost),)


def test_checks_on_a_partition_of_zero_rows(tmp_path: Path, dw: psycopg.Connection) -> None:
    load_manifest(dw, lake(tmp_path, GOOD), LoadSpec("public", "orders", "partition", ["id"]))
    empty = orders([], [])
    spec = LoadSpec("public", "orders", "partition", ["id"], allow_empty=True,
                    checks=checks({"not_null": ["amount"]}, {"unique": ["id"]}, {"row_count": {"max": 10}}))
    loaded = load_manifest(dw, lake(tmp_path, empty, day=DAY + dt.timedelta(1)), spec)
    assert loaded.checks and [(r["status"], r["failing_rows"]) for r in loaded.checks["results"]] == [
        ("pass", 0), ("pass", 0), ("pass", None)]
    before = table_hash(dw, "orders")
    blocking = LoadSpec("public", "orders", "partition", ["id"], allow_empty=True,
                        checks=checks({"row_count": {"min": 1}}))
    with pytest.raises(QualityCheckError, match=r"0 rows, outside 1\.\.-"):
        load_manifest(dw, lake(tmp_path, empty, day=DAY + dt.timedelta(2)), blocking)
    assert table_hash(dw, "orders") == before


def test_a_check_naming_a_missing_column_fails_the_load_by_name(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "orders", "replace", ["id"],
                    checks=checks({"not_null": ["amount"], "severity": "warn"},
                                  {"not_null": ["amuont"], "name": "typo", "severity": "warn"}))
    with pytest.raises(QualityCheckError, match=r"check 'typo' \(not_null, column amuont\): the check names column "
                                                r"'amuont', which public.orders does not have"):
        load_manifest(dw, lake(tmp_path, GOOD), spec)
    assert table_hash(dw, "public.orders") is None
    assert [r[:2] for r in results(dw)] == [("not_null(amount)", "pass"), ("typo", "error")]


# ----------------------------------------------------------------------------------- config


def config(checks: list[dict[str, Any]], **table: Any) -> dict[str, Any]:
    return {"name": "q", "kind": "sql", "conn_id": "src", "start_date": "2024-01-01",
            "tables": [{"name": "orders", "query": "SELECT id, amount AS total FROM orders", "checks": checks,
                        **table}]}


@pytest.mark.parametrize(("checks_", "field", "text"), [
    ([{"not_null": ["amount"]}], "tables[0]", "names column 'amount', which the query does not return"),
    ([{"regex": {"column": "total", "pattern": "([0-9]"}}], "tables[0].checks[0].regex.pattern",
     "not a valid regular expression"),
    ([{"not_null": ["id"], "unique": ["id"]}], "tables[0].checks[0]", "exactly one kind"),
    ([{"range": {"column": "total"}}], "tables[0].checks[0].range", "needs min, max or both"),
    ([{"row_count": {"min": 1}, "on_fail": "quarantine"}], "tables[0].checks[0]", "only not_null"),
    ([{"sql": "SELECT * FROM {{ tabel }}"}], "tables[0].checks[0].sql", "unknown placeholder {{ tabel }}"),
    ([{"freshness": {"column": "total", "max_age": "soon"}}], "tables[0].checks[0].freshness.max_age",
     "is not a duration"),
    ([{"unique": ["id"]}, {"unique": ["id"]}], "tables[0]", "two checks are called 'unique(id)'"),
    ([{"nut_null": ["id"]}], "tables[0].checks[0].nut_null", "unknown key"),
])
def test_validate_refuses_bad_checks(checks_: list[dict[str, Any]], field: str, text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_source(config(checks_), "q.yaml")
    assert refused.value.field == field and text in refused.value.detail, str(refused.value)


def test_quarantine_is_refused_on_merge() -> None:
    with pytest.raises(ConfigError, match="not available on write_mode 'merge'"):
        parse_source(config([{"not_null": ["total"], "on_fail": "quarantine"}], write_mode="merge",
                            primary_key=["id"]), "q.yaml")


# ----------------------------------------------------------------------------- command line


def _file_source(tmp_path: Path, checks_: list[dict[str, Any]], write_mode: str = "replace") -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(json.dumps({
        "name": "shop", "kind": "file", "base_path": str(tmp_path / "files"), "start_date": "2024-01-01",
        "tables": [{"name": "orders", "path": "orders.csv", "write_mode": write_mode, "primary_key": ["id"],
                    "checks": checks_}]}))
    return path


def test_sync_and_check_quality_on_the_command_line(tmp_path: Path, cli: Any, dw_url: str) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "orders.csv").write_text("id,amount\n1,10\n2,20\n")
    path = _file_source(tmp_path, [{"range": {"column": "amount", "min": 0}}, {"not_null": ["amount"],
                                                                               "severity": "warn"}])
    code, out, err = cli("sync", str(path), "--json")
    assert code == 0, err
    assert out[0]["checks"]["counts"] == {"pass": 2}
    (tmp_path / "files" / "orders.csv").write_text("id,amount\n1,10\n2,-20\n3,\n")
    with psycopg.connect(dw_url) as dw:
        before = table_hash(dw, "orders")
    code, out, err = cli("sync", str(path), "--json")
    assert code == 1 and out[0]["status"] == "failure"
    with psycopg.connect(dw_url) as dw:
        assert table_hash(dw, "orders") == before
        failures = dw.execute("SELECT error_message FROM etl_audit_log WHERE status = 'failure'").fetchall()
        assert len(failures) == 1
        assert "check 'range(amount)' (range, column amount): 1 row out of range; sample keys: id=2" in failures[0][0]
    # check --quality: the checks on what is loaded (it passes), then on a table changed by hand (it fails).
    code, out, err = cli("check", "--quality", str(path))
    assert code == 0, (out, err)
    assert "range(amount)" in out and "pass" in out
    with psycopg.connect(dw_url) as dw:
        dw.execute("UPDATE orders SET amount = -1 WHERE id = 1")
    code, out, err = cli("check", "--quality", str(path), "--json")
    assert code == 1
    assert [(r["name"], r["status"], r["failing_rows"]) for r in out] == [("range(amount)", "fail", 1),
                                                                         ("not_null(amount)", "pass", 0)]
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT amount FROM orders WHERE id = 1").fetchone() == (-1,)  # nothing changed
        assert dw.execute("SELECT count(*) FROM etl_check_results WHERE run_id LIKE 'check:%'").fetchone() == (4,)


def test_validate_on_the_command_line_names_the_check(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(json.dumps(config([{"not_null": ["amount"]}])))
    code, _, err = cli("validate", str(path))
    assert code == 1 and "check 'not_null(amount)' names column 'amount', which the query does not return" in err


# ------------------------------------------------------------------------------ through Airflow


def asset_events(dag_id: str) -> list[dict[str, Any]]:
    with metadata_db() as meta:
        rows = meta.execute("SELECT extra FROM asset_event WHERE source_dag_id = %s ORDER BY id", (dag_id,)).fetchall()
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0] or "{}") for r in rows]


@pytest.mark.slow
def test_a_dag_run_blocked_by_a_check_publishes_nothing(env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "orders.csv").write_text("id,amount,status\n1,10,open\n2,20,paid\n")
    source = {"name": "quality_dag", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 3, "retry_delay_seconds": 0,
              "tables": [{"name": "orders", "path": "orders.csv", "write_mode": "partition", "primary_key": ["id"],
                          "checks": [{"range": {"column": "amount", "min": 0}},
                                     {"accepted_values": {"column": "status", "values": ["open", "paid"]},
                                      "severity": "warn"},
                                     {"sql": "SELECT * FROM {{ table }} WHERE _partition_date <> "
                                             "'{{ partition_date }}'"}]}]}
    earlier = len(asset_events("quality_dag"))  # the metadata DB outlives a test session: count from here
    assert set(states(run(source, configs)).values()) == {"success"}
    events = asset_events("quality_dag")[earlier:]
    assert len(events) == 1 and events[0]["checks"]["counts"] == {"pass": 3}, events
    with psycopg.connect(env["dw_url"]) as dw:
        before = table_hash(dw, "orders")

    (data / "orders.csv").write_text("id,amount,status\n1,10,open\n2,-20,lost\n3,5,gone\n")
    dag_run = run(source, configs)
    assert states(dag_run) == {"extract_orders": "success", "load_orders": "failed"}
    load = next(t for t in dag_run.get_task_instances() if t.task_id == "load_orders")
    assert load.try_number == 1  # no retry: the data will not fix itself
    assert len(asset_events("quality_dag")) == earlier + 1  # no event for the blocked load
    with psycopg.connect(env["dw_url"]) as dw:
        assert table_hash(dw, "orders") == before
        failures = dw.execute("SELECT error_message FROM etl_audit_log WHERE task_id = 'load_orders' "
                              "AND status = 'failure'").fetchall()
        assert len(failures) == 1
        assert "check 'range(amount)' (range, column amount): 1 row out of range; sample keys: id=2" in failures[0][0]
        recorded = dw.execute("SELECT check_name, status, failing_rows, committed FROM etl_check_results "
                              "ORDER BY id").fetchall()
    assert recorded[3:] == [("range(amount)", "fail", 1, False), ("accepted_values(status)", "warn", 2, False),
                            ("sql", "pass", 0, False)], recorded


def test_an_empty_first_extract_of_an_append_table_passes_its_row_checks(tmp_path: Path,
                                                                          dw: psycopg.Connection) -> None:
    empty = write_partition([], tmp_path / "lake", "sql", "src", "orders", DAY, run_id="run-empty")
    spec = LoadSpec("public", "orders", "append", ["id"], checks=checks({"not_null": ["amount"]}, {"unique": ["id"]}))
    loaded = load_manifest(dw, empty, spec)
    assert loaded.checks and loaded.checks["counts"] == {"pass": 2}, loaded.checks
    with pytest.raises(QualityCheckError, match="0 rows, fewer than 1"):
        load_manifest(dw, empty, LoadSpec("public", "orders", "append", ["id"], checks=checks({"row_count": {"min": 1}})))


# -------------------------------------------------------------------------------- source_count


def _drop_first_row() -> Any:
    """A transform that loses a row of each batch: the rows the load writes fall short of the source's."""
    from sndw.transform import BatchTransform

    return BatchTransform("tests:drop_first_row", lambda batch: batch.slice(1), "arrow")


def _extract(tmp_path: Path, table: dict[str, Any], kind: str, access: Any, run_id: str) -> Manifest:
    from sndw.config import FileTable, SqlTable
    from sndw.pipeline import ExtractRequest, extract_table

    spec = (SqlTable if kind == "sql" else FileTable).model_validate(table)
    return extract_table(ExtractRequest(pipeline="p", source="src", kind=kind, table=spec, partition=DAY,
                                        lake_root=str(tmp_path / "lake"), run_id=run_id), access)


@pytest.mark.parametrize("driver", ["postgres", "sqlite"])
def test_source_count_of_a_sql_table_passes_then_catches_lost_rows(driver: str, source_db: str, tmp_path: Path,
                                                                   dw: psycopg.Connection) -> None:
    import sqlite3

    from sndw.pipeline import SourceAccess

    rows = [(i, i * 10) for i in range(1, 6)]
    if driver == "postgres":
        with psycopg.connect(source_db) as src:
            src.execute("CREATE TABLE orders (id bigint, amount bigint)")
            src.cursor().executemany("INSERT INTO orders VALUES (%s, %s)", rows)
        access = SourceAccess(postgres_conninfo=source_db)
    else:
        path = tmp_path / "src.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE orders (id integer, amount integer)")
            db.executemany("INSERT INTO orders VALUES (?, ?)", rows)
        access = SourceAccess(dbapi_connect=lambda: sqlite3.connect(path))
    table = {"name": "orders", "query": "SELECT id, amount FROM orders WHERE id > 1",
             "checks": [{"source_count": True}]}
    manifest = _extract(tmp_path, table, "sql", access, "run-1")
    assert (manifest.rows, manifest.source_count) == (4, 4)
    spec = LoadSpec("public", "orders", "replace", checks=checks({"source_count": True}))
    loaded = load_manifest(dw, manifest, spec)
    assert loaded.checks and loaded.checks["counts"] == {"pass": 1}
    assert dw.execute("SELECT message FROM etl_check_results").fetchone() == (
        "the source counted 4 rows, the load wrote 4",)
    before = table_hash(dw, "orders")
    with pytest.raises(QualityCheckError, match=r"check 'source_count' \(source_count\): the source counted 4 rows, "
                                                r"the load wrote 3 \(-1\)"):
        load_manifest(dw, _extract(tmp_path, table, "sql", access, "run-2"),
                      LoadSpec("public", "orders", "replace", transform=_drop_first_row(), checks=spec.checks))
    assert table_hash(dw, "orders") == before


def test_source_count_of_a_file_table_is_the_rows_read(tmp_path: Path, dw: psycopg.Connection) -> None:
    from sndw.pipeline import SourceAccess

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "orders.csv").write_text("id,amount\n1,10\n2,20\n3,30\n")
    table = {"name": "orders", "path": "orders.csv", "checks": [{"source_count": True}]}
    access = SourceAccess(base_path=str(tmp_path / "files"))
    manifest = _extract(tmp_path, table, "file", access, "run-1")
    assert manifest.source_count == 3
    spec = LoadSpec("public", "orders", "append", checks=checks({"source_count": True}))
    assert load_manifest(dw, manifest, spec).checks == {
        "counts": {"pass": 1}, "results": [{"name": "source_count", "kind": "source_count", "status": "pass",
                                            "failing_rows": None}]}
    with pytest.raises(QualityCheckError, match=r"the source counted 3 rows, the load wrote 2 \(-1\)"):
        load_manifest(dw, _extract(tmp_path, table, "file", access, "run-2"),
                      LoadSpec("public", "orders", "append", transform=_drop_first_row(), checks=spec.checks))
    assert dw.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    # An extract made without the check carries no count: the check cannot run, and says why.
    bare = _extract(tmp_path, {"name": "orders", "path": "orders.csv"}, "file", access, "run-3")
    assert bare.source_count is None
    with pytest.raises(QualityCheckError, match="carries no source count"):
        load_manifest(dw, bare, spec)


def test_source_count_is_refused_for_an_http_table() -> None:
    raw = {"name": "api", "kind": "http", "conn_id": "api", "start_date": "2024-01-01",
           "tables": [{"name": "users", "endpoint": "/users", "checks": [{"source_count": True}]}]}
    with pytest.raises(ConfigError, match=r"tables\[0\].*source_count is not available for an http table: an API "
                                          r"gives no count of its own"):
        parse_source(raw, "api.yaml")


def test_a_relationship_to_a_table_of_the_same_source_orders_the_loads() -> None:
    from sndw_airflow.factory import build_dag

    raw = config([{"relationships": {"column": "id", "to": "customers.id"}}])
    raw["tables"].insert(0, {"name": "items", "query": "SELECT id FROM items",
                             "checks": [{"relationships": {"column": "id", "to": "orders.id"}}]})
    raw["tables"].append({"name": "customers", "query": "SELECT id FROM customers"})
    source = parse_source(raw, "q.yaml")
    assert [t.name for t in source.load_order()] == ["customers", "orders", "items"]
    dag = build_dag(source)
    assert dag.get_task("load_orders").upstream_task_ids == {"extract_orders", "load_customers"}
    assert dag.get_task("load_items").upstream_task_ids == {"extract_items", "load_orders"}
    # The loads cannot be ordered when the checks relate the tables to each other in a circle.
    raw["tables"][2]["checks"] = [{"relationships": {"column": "id", "to": "items.id"}}]
    with pytest.raises(ConfigError, match="relate to each other in a circle"):
        parse_source(raw, "q.yaml")
