"""Change data capture (sndw.cdc) on the tests' real PostgreSQL (wal_level=logical) as the source:
the first snapshot, then inserts, updates, deletes and truncates applied in commit order, exactly
once, through `etl.cli sync` and the core function the command line calls. After each scenario
the warehouse holds the source's rows, row for row."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from sndw.cdc import pgoutput
from sndw.cdc.run import sync_cdc
from sndw.config import load_source_file
from sndw.errors import LoadError
from sndw.sync import source_access

DAY = "2024-03-01"


class Cdc:
    """One CDC source on a fresh source database: its config file, and helpers to compare sides."""

    def __init__(self, source_db: str, dw_url: str, tmp_path: Path, name: str) -> None:
        self.source_db, self.dw_url, self.tmp_path, self.name = source_db, dw_url, tmp_path, name
        self.slot = f"sndw_{name}"
        self.lake = tmp_path / "lake"
        self.conn_id = f"{name}_src"
        self.env = {f"AIRFLOW_CONN_{self.conn_id.upper()}": source_db, "AIRFLOW_CONN_DW": dw_url}
        self.keys: dict[str, str] = {}

    def config(self, tables: list[dict[str, Any]], keys: dict[str, str]) -> Path:
        self.keys = keys
        path = self.tmp_path / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump({"name": self.name, "kind": "sql", "conn_id": self.conn_id,
                                        "start_date": "2024-01-01", "target_schema": "raw", "cdc": {},
                                        "tables": tables}))
        self.path = path
        return path

    def source(self, *statements: str) -> None:
        with psycopg.connect(self.source_db, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def source_rows(self, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with psycopg.connect(self.source_db) as conn:
            cur = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(
                sql.Identifier(table), sql.SQL(self.keys[table])))
            return [d.name for d in cur.description or []], cur.fetchall()

    def assert_same(self, *tables: str) -> None:
        """The warehouse equals the source, row for row (both sides fetched sorted into Python)."""
        for table in tables:
            columns, expected = self.source_rows(table)
            with psycopg.connect(self.dw_url) as dw:
                got = dw.execute(sql.SQL("SELECT {} FROM raw.{} ORDER BY {}").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table),
                    sql.SQL(self.keys[table]))).fetchall()
            assert len(got) == len(expected), f"{table}: {len(got)} rows in the warehouse, {len(expected)} at the source"
            for a, b in zip(got, expected, strict=True):
                assert a == b, f"{table}: warehouse {str(a)[:200]} != source {str(b)[:200]}"

    def slot_lsn(self) -> str | None:
        with psycopg.connect(self.source_db) as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (self.slot,)).fetchone()
        return row[0] if row else None

    def run(self, **kwargs: Any) -> list[dict[str, Any]]:
        """One run through the function `sync` calls, in this process."""
        source = load_source_file(self.path)
        access = source_access(source, self.path, None, environ=self.env)
        return sync_cdc(source, access, url=kwargs.pop("url", self.dw_url), lake=str(self.lake),
                        partition=datetime.fromisoformat(DAY).date(), **kwargs)


@pytest.fixture
def cdc(source_db: str, dw_url: str, tmp_path: Path) -> Iterator[Cdc]:
    helper = Cdc(source_db, dw_url, tmp_path, f"cdc_{uuid.uuid4().hex[:8]}")
    yield helper
    with psycopg.connect(source_db, autocommit=True) as conn:  # a slot keeps its database from being dropped
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (helper.slot,))


ITEMS = ["CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), "
         "seen timestamptz, doc text)",
         "ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTERNAL",  # out of line even when small enough to compress
         "CREATE TABLE lines (order_id int, line int, qty int NOT NULL, note varchar(20), PRIMARY KEY (order_id, line))"]
TABLES = [{"name": "items", "table": "public.items"}, {"name": "lines", "table": "lines"}]
KEYS = {"items": "id", "lines": "order_id, line"}
BIG = "(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 32768) g)"  # 1 MiB of text


def sync(cli: Any, cdc: Cdc, code: int = 0) -> tuple[list[dict[str, Any]], str]:
    got, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", DAY, "--json", env=cdc.env)
    assert got == code, err
    return out, err


def test_snapshot_then_inserts_updates_deletes_and_truncates(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS,
               "INSERT INTO items SELECT g, 'item ' || g, g * 1.25, TIMESTAMPTZ '2024-01-01 10:00+02' + g * interval '1 h', "
               "NULL FROM generate_series(1, 100) g",
               "INSERT INTO lines SELECT g % 10, g, g, 'n' || g FROM generate_series(1, 40) g")
    cdc.config(TABLES, KEYS)
    out, err = sync(cli, cdc)
    assert [(r["target_table"], r["rows_loaded"], r["write_mode"]) for r in out] == [
        ("raw.items", 100, "cdc snapshot"), ("raw.lines", 40, "cdc snapshot")]
    cdc.assert_same("items", "lines")
    assert cdc.slot_lsn() is not None

    cdc.source("INSERT INTO items VALUES (101, 'new', 9.99, now(), 'small doc')",
               "UPDATE items SET price = price + 1, name = name || ' (changed)' WHERE id <= 10",
               "UPDATE items SET price = 0 WHERE id = 3",  # a second change of one row in the same run
               "DELETE FROM items WHERE id BETWEEN 50 AND 59",
               "INSERT INTO items VALUES (200, 'short-lived', 1, NULL, NULL)",
               "DELETE FROM items WHERE id = 200",  # inserted and deleted within one run
               "UPDATE items SET id = 1000 WHERE id = 20",  # the key changes
               "UPDATE lines SET qty = qty * 10 WHERE order_id = 1",
               "DELETE FROM lines WHERE order_id = 2")
    before = cdc.slot_lsn()
    out, err = sync(cli, cdc)
    cdc.assert_same("items", "lines")
    items = out[0]
    assert items["write_mode"] == "cdc" and items["changes"] == 1 + 10 + 1 + 10 + 2 + 2
    assert items["rows_deleted"] == 11  # 50-59 and the old key 20; 200 never reached the warehouse
    assert out[1]["changes"] == 4 + 4 and out[1]["rows_deleted"] == 4
    assert cdc.slot_lsn() != before, "the slot is confirmed after the warehouse commit"
    assert sorted(p.name for p in (cdc.lake / "cdc" / cdc.name / "items").iterdir())[0].startswith("changes-")

    cdc.source("INSERT INTO lines VALUES (99, 1, 5, 'before')", "TRUNCATE lines",
               "INSERT INTO lines VALUES (7, 1, 70, 'after truncate'), (7, 2, 71, NULL)",
               "UPDATE items SET seen = NULL WHERE id = 1")
    out, err = sync(cli, cdc)
    assert out[1]["truncates"] == 1 and out[1]["rows_loaded"] == 2
    cdc.assert_same("items", "lines")
    with psycopg.connect(cdc.dw_url) as dw:
        audit = dw.execute("SELECT target_table, status, rows_extracted, rows_loaded FROM etl_audit_log "
                           "WHERE pipeline_name = %s ORDER BY id", (cdc.name,)).fetchall()
    assert [a[1] for a in audit] == ["success"] * 6
    assert audit[-1] == ("raw.lines", "success", 4, 2)

    out, err = sync(cli, cdc)  # nothing waits: nothing changes
    assert [r["changes"] for r in out] == [0, 0]
    cdc.assert_same("items", "lines")


def test_an_update_that_leaves_a_toasted_value_unchanged_keeps_it(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, f"INSERT INTO items VALUES (1, 'a', 1, now(), {BIG}), (2, 'b', 2, now(), {BIG})")  # noqa: S608 (our constant)
    cdc.config(TABLES, KEYS)
    sync(cli, cdc)
    cdc.assert_same("items")
    cdc.source("UPDATE items SET price = 10 WHERE id = 1",  # doc is not sent: unchanged TOAST
               "UPDATE items SET name = 'a2' WHERE id = 1",
               f"INSERT INTO items VALUES (3, 'c', 3, now(), {BIG})",  # noqa: S608
               "UPDATE items SET price = 30 WHERE id = 3",  # its value comes from the insert in the same run
               "UPDATE items SET id = 20, price = 20 WHERE id = 2")  # a key change that leaves doc unchanged
    out, err = sync(cli, cdc)
    cdc.assert_same("items")
    with psycopg.connect(cdc.dw_url) as dw:
        sizes = dw.execute("SELECT id, length(doc) FROM raw.items ORDER BY id").fetchall()
    assert sizes == [(1, 1 << 20), (3, 1 << 20), (20, 1 << 20)]
    # pgoutput really left it out: the change partition marks the column unchanged
    import pyarrow.parquet as pq

    marked = [json.loads(v) for path in sorted((cdc.lake / "cdc" / cdc.name / "items").rglob("*.parquet"))
              for v in pq.read_table(path, columns=["cdc_unchanged"]).column(0).to_pylist() if v]
    assert marked and all(m == ["doc"] for m in marked)


def test_a_rolled_back_transaction_applies_nothing(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, "INSERT INTO items VALUES (1, 'a', 1, now(), NULL)")
    cdc.config(TABLES, KEYS)
    sync(cli, cdc)
    with psycopg.connect(cdc.source_db) as conn:
        conn.execute("INSERT INTO items VALUES (2, 'rolled back', 2, now(), NULL)")
        conn.execute("UPDATE items SET name = 'rolled back' WHERE id = 1")
        conn.execute("DELETE FROM lines")
        conn.rollback()
    cdc.source("INSERT INTO lines VALUES (1, 1, 1, 'kept')")
    out, err = sync(cli, cdc)
    assert [r["changes"] for r in out] == [0, 1]
    cdc.assert_same("items", "lines")


def test_a_run_killed_between_commit_and_confirmation_applies_nothing_twice(cdc: Cdc) -> None:
    cdc.source(*ITEMS, "INSERT INTO items SELECT g, 'i' || g, g, NULL, NULL FROM generate_series(1, 10) g")
    cdc.config(TABLES, KEYS)
    assert {r["status"] for r in cdc.run()} == {"success"}
    cdc.source("INSERT INTO items VALUES (11, 'new', 11, NULL, NULL)", "UPDATE items SET price = 0 WHERE id <= 5")
    confirmed = cdc.slot_lsn()

    def killed() -> None:
        raise KeyboardInterrupt("killed after the warehouse commit, before the slot is confirmed")

    with pytest.raises(KeyboardInterrupt):
        cdc.run(before_confirm=killed)
    assert cdc.slot_lsn() == confirmed, "the slot was not confirmed"
    cdc.assert_same("items")  # the warehouse committed
    with psycopg.connect(cdc.dw_url) as dw:
        first = dw.execute("SELECT id, _file_id FROM raw.items WHERE id <= 5 OR id = 11 ORDER BY id").fetchall()
    cdc.source("DELETE FROM items WHERE id = 10")
    results = cdc.run()
    assert results[0]["status"] == "success"
    assert results[0]["changes"] == 1, "the changes applied before the kill are skipped, only the delete is new"
    cdc.assert_same("items")
    with psycopg.connect(cdc.dw_url) as dw:
        assert dw.execute("SELECT id, _file_id FROM raw.items WHERE id <= 5 OR id = 11 ORDER BY id").fetchall() == first
    assert cdc.slot_lsn() != confirmed


def test_the_warehouse_lost_while_applying_then_the_retry_applies_once(cdc: Cdc, dw_url: str) -> None:
    cdc.source(*ITEMS, "INSERT INTO items SELECT g, 'i' || g, g, NULL, NULL FROM generate_series(1, 10) g")
    cdc.config(TABLES, KEYS)
    cdc.run()
    cdc.source("UPDATE items SET name = 'changed' WHERE id = 1", "DELETE FROM items WHERE id = 2",
               "INSERT INTO lines VALUES (1, 1, 1, NULL)")
    confirmed = cdc.slot_lsn()
    down = dw_url.rsplit("@", 1)[0] + "@127.0.0.1:1/" + dw_url.rsplit("/", 1)[1]  # nothing listens on port 1
    with pytest.raises(LoadError, match="the warehouse cannot be reached"):
        cdc.run(url=down)
    assert cdc.slot_lsn() == confirmed
    # The apply's connection dies in the middle: it waits for a lock on raw.items and is terminated.
    with psycopg.connect(dw_url) as blocker:
        blocker.execute("LOCK TABLE raw.items IN ACCESS EXCLUSIVE MODE")
        stop = threading.Event()

        def terminate_the_waiting_apply() -> None:
            with psycopg.connect(dw_url, autocommit=True) as admin:
                while not stop.is_set():
                    row = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                        "datname = current_database() AND wait_event_type = 'Lock' AND pid <> %s",
                                        (blocker.info.backend_pid,)).fetchone()
                    if row:
                        return
                    time.sleep(0.05)

        killer = threading.Thread(target=terminate_the_waiting_apply)
        killer.start()
        try:
            failed = cdc.run()
        finally:
            stop.set()
            killer.join()
        blocker.rollback()
    assert {r["status"] for r in failed} == {"failure"}, failed
    assert "terminat" in failed[0]["error"]
    assert cdc.slot_lsn() == confirmed
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT name FROM raw.items WHERE id = 1").fetchone() == ("i1",)
    results = cdc.run()
    assert [(r["status"], r["changes"]) for r in results] == [("success", 2), ("success", 1)]
    cdc.assert_same("items", "lines")
    with psycopg.connect(dw_url) as dw:
        statuses = dw.execute("SELECT status, count(*) FROM etl_audit_log WHERE pipeline_name = %s "
                              "AND attempt_key LIKE 'cdc|%%' GROUP BY 1 ORDER BY 1", (cdc.name,)).fetchall()
    assert statuses == [("failure", 2), ("success", 2)]


def test_a_column_added_at_the_source_is_added_in_the_warehouse(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, "INSERT INTO items SELECT g, 'i' || g, g, NULL, NULL FROM generate_series(1, 5) g")
    cdc.config(TABLES, KEYS)
    sync(cli, cdc)
    cdc.source("UPDATE items SET name = 'before the column' WHERE id = 1",
               "ALTER TABLE items ADD COLUMN colour varchar(12)",
               "ALTER TABLE items ADD COLUMN weight numeric(6,3)",
               "UPDATE items SET colour = 'red', weight = 1.5 WHERE id <= 2",
               "INSERT INTO items VALUES (6, 'six', 6, now(), NULL, 'blue', 0.125)")
    out, err = sync(cli, cdc)
    assert [c["column"] for c in out[0]["schema_changes"] if c["change"] == "add_column"] == ["colour", "weight"]
    cdc.assert_same("items")
    with psycopg.connect(cdc.dw_url) as dw:
        types = dict(dw.execute("SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns "
                                "JOIN pg_attribute ON attrelid = 'raw.items'::regclass AND attname = column_name "
                                "WHERE table_schema = 'raw' AND table_name = 'items'").fetchall())
    assert types["colour"] == "character varying(12)" and types["weight"] == "numeric(6,3)"


def test_a_column_retyped_at_the_source_fails_the_apply_and_changes_nothing(cli: Any, cdc: Cdc) -> None:
    """ALTER TABLE ... TYPE ... USING rewrites every row at the source and sends none of them: widening
    the warehouse column and applying the changes would keep old values beside new ones."""
    cdc.source(*ITEMS, "INSERT INTO items SELECT g, 'i' || g, g + 0.25, NULL, NULL FROM generate_series(1, 3) g")
    cdc.config(TABLES, KEYS)
    sync(cli, cdc)
    cdc.source("ALTER TABLE items ALTER COLUMN price TYPE numeric(12,1) USING price * 10",
               "UPDATE items SET name = 'touched' WHERE id = 2")
    code, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", "2024-01-03", env=cdc.env)
    assert code == 1
    text = err + json.dumps(out)
    assert "the source retyped column 'price' (the warehouse's numeric(10,2) would become numeric(13,2))" in text, text
    assert "sndw cdc reset" in text, text
    with psycopg.connect(cdc.dw_url) as dw:
        assert dw.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                          "'raw.items'::regclass AND attname = 'price'").fetchone() == ("numeric(10,2)",)
        assert dw.execute("SELECT id, name, price::text FROM raw.items ORDER BY id").fetchall() == [
            (1, "i1", "1.25"), (2, "i2", "2.25"), (3, "i3", "3.25")]


def test_a_table_without_a_key_is_refused_by_name_before_anything_runs(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, "CREATE TABLE events (at timestamptz, what text)")
    cdc.config([*TABLES, {"name": "events", "table": "events"}], KEYS)
    code, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", DAY, env=cdc.env)
    assert code == 1
    assert "events (source table events): no primary key or replica identity" in err
    assert "REPLICA IDENTITY FULL" in err
    assert cdc.slot_lsn() is None
    with psycopg.connect(cdc.source_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    with psycopg.connect(cdc.dw_url) as dw:
        assert dw.execute("SELECT to_regclass('raw.items')").fetchone() == (None,)
        # the refused attempt leaves one failure row per table, saying why
        audits = dw.execute("SELECT target_table, status, error_message LIKE '%%no primary key or replica identity%%' "
                            "FROM etl_audit_log WHERE pipeline_name = %s ORDER BY id", (cdc.name,)).fetchall()
        assert audits == [("raw.items", "failure", True), ("raw.lines", "failure", True),
                          ("raw.events", "failure", True)], audits
    # REPLICA IDENTITY FULL and a primary_key in the config that nothing keeps unique: two source rows
    # of one key would become one warehouse row; refused by name
    cdc.source("ALTER TABLE events REPLICA IDENTITY FULL", "INSERT INTO events VALUES ('2024-01-01', 'a')")
    cdc.config([*TABLES, {"name": "events", "table": "events", "primary_key": ["at"]}], {**KEYS, "events": "at"})
    code, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", DAY, env=cdc.env)
    assert code == 1 and "REPLICA IDENTITY FULL and primary_key ['at'], but no unique index" in err, err
    assert 'CREATE UNIQUE INDEX ON "events" ("at")' in err, err
    assert cdc.slot_lsn() is None
    # ... and with a unique index on it: followed
    cdc.source("CREATE UNIQUE INDEX ON events (at)")
    sync(cli, cdc)
    cdc.source("UPDATE events SET what = 'b'", "INSERT INTO events VALUES ('2024-01-02', 'c')",
               "DELETE FROM events WHERE at = '2024-01-01'")
    sync(cli, cdc)
    cdc.assert_same("events")


def test_status_and_reset(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, "INSERT INTO items VALUES (1, 'a', 1, NULL, NULL)")
    cdc.config(TABLES, KEYS)
    code, out, err = cli("cdc", "status", str(cdc.path), "--json", env=cdc.env)
    assert code == 0 and out["exists"] is False and out["stored_position"] is None
    sync(cli, cdc)
    cdc.source("INSERT INTO items SELECT g, 'i', 1, NULL, NULL FROM generate_series(2, 2000) g")
    code, out, err = cli("cdc", "status", str(cdc.path), "--json", env=cdc.env)
    assert code == 0 and out["exists"] is True and out["slot"] == cdc.slot
    assert out["pending_wal_bytes"] > 0 and out["retained_wal_bytes"] >= out["pending_wal_bytes"]
    assert out["seconds_since_confirmed"] >= 0 and out["tables"] == ["items", "lines"]
    code, text, err = cli("cdc", "status", str(cdc.path), env=cdc.env)
    assert "of WAL" in text and "not confirmed" in text
    code, text, err = cli("cdc", "reset", str(cdc.path), env=cdc.env)
    assert code == 0 and "dropped" in text and cdc.slot_lsn() is None
    out, err = sync(cli, cdc)  # a new snapshot, visibly
    assert [r["write_mode"] for r in out] == ["cdc snapshot"] * 2 and out[0]["rows_loaded"] == 2000
    cdc.assert_same("items")


def test_a_lost_slot_or_a_new_table_fails_and_says_to_reset(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS)
    cdc.config(TABLES[:1], KEYS)
    sync(cli, cdc)
    cdc.config(TABLES, KEYS)
    code, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", DAY, env=cdc.env)
    assert code == 1 and "lines were added after the snapshot" in err and "sndw cdc reset" in err
    cdc.source(f"SELECT pg_drop_replication_slot('{cdc.slot}')")
    code, out, err = cli("sync", str(cdc.path), "--lake", str(cdc.lake), "--date", DAY, env=cdc.env)
    assert code == 1 and f"replication slot {cdc.slot} is gone" in err


def test_pgoutput_lsn_text() -> None:
    assert pgoutput.lsn_text(pgoutput.parse_lsn("16/B374D848")) == "16/B374D848"
    assert pgoutput.parse_lsn("0/0") == 0
    assert pgoutput.PG_EPOCH == datetime(2000, 1, 1, tzinfo=UTC)


@pytest.mark.slow
def test_a_dag_run_takes_the_snapshot_then_applies_changes(cdc: Cdc, env: dict[str, Any], configs: list[Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The source's DAG runs one task, cdc_sync, through the same core function."""
    from tests.conftest import run, states

    cdc.source(*ITEMS, "INSERT INTO items SELECT g, 'i' || g, g, NULL, NULL FROM generate_series(1, 20) g")
    cdc.config(TABLES, KEYS)
    monkeypatch.setenv(f"AIRFLOW_CONN_{cdc.conn_id.upper()}", cdc.source_db)
    cdc.dw_url = env["dw_url"]
    config = yaml.safe_load(cdc.path.read_text()) | {"retries": 0}
    assert states(run(config, configs)) == {"cdc_sync": "success"}
    cdc.assert_same("items", "lines")
    cdc.source("UPDATE items SET name = 'x' WHERE id < 5", "DELETE FROM items WHERE id > 15",
               "INSERT INTO lines VALUES (1, 1, 1, 'a')")
    assert states(run(config, configs, logical_date=datetime(2024, 1, 3, tzinfo=UTC))) == {"cdc_sync": "success"}
    cdc.assert_same("items", "lines")


def _warehouse_rows(dw_url: str, table: str, key: str) -> list[tuple[Any, ...]]:
    """The table's rows without the load's own columns (the file ids and load times differ by design)."""
    with psycopg.connect(dw_url) as dw:
        columns = [r[0] for r in dw.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attname NOT LIKE '\\_%%' ORDER BY attnum", (f"raw.{table}",))]
        return dw.execute(sql.SQL("SELECT {} FROM raw.{} ORDER BY {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table), sql.SQL(key))).fetchall()


def test_replay_rebuilds_the_tables_from_the_snapshot_and_the_change_partitions(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS, f"INSERT INTO items SELECT g, 'i' || g, g, now(), CASE WHEN g < 3 THEN {BIG} END "  # noqa: S608
                       "FROM generate_series(1, 50) g",
               "INSERT INTO lines SELECT g % 5, g, g, NULL FROM generate_series(1, 20) g")
    cdc.config(TABLES, KEYS)
    sync(cli, cdc)
    cdc.source("UPDATE items SET price = 0 WHERE id = 1",  # leaves the TOASTed doc unchanged
               "DELETE FROM items WHERE id BETWEEN 10 AND 19", "INSERT INTO lines VALUES (9, 1, 1, 'x')")
    sync(cli, cdc)
    # A run whose apply fails leaves its change partition in the lake; the next run re-reads the same
    # changes and more: replay must apply them once (a key change applied twice would take the
    # unchanged doc from the old key's row, gone by then).
    cdc.source("UPDATE items SET id = 500 WHERE id = 2", "UPDATE items SET name = name || '!' WHERE id < 30",
               "TRUNCATE lines",
               "INSERT INTO lines VALUES (1, 1, 10, 'after')")
    confirmed = cdc.slot_lsn()
    impatient = cdc.dw_url + ("&" if "?" in cdc.dw_url else "?") + "options=-c%20lock_timeout%3D300"
    with psycopg.connect(cdc.dw_url) as blocker:
        blocker.execute("LOCK TABLE raw.items IN ACCESS EXCLUSIVE MODE")
        failed = cdc.run(url=impatient)  # the changes are in the lake; their apply times out on the lock
        blocker.rollback()
    assert {r["status"] for r in failed} == {"failure"} and "lock timeout" in failed[0]["error"], failed
    assert cdc.slot_lsn() == confirmed
    cdc.source("ALTER TABLE items ADD COLUMN colour text", "UPDATE items SET colour = 'red', name = name || '?' "
               "WHERE id < 5", "INSERT INTO items VALUES (51, 'new', 1, NULL, NULL, 'blue')")
    sync(cli, cdc)
    cdc.assert_same("items", "lines")
    folders = sorted(p.name for p in (cdc.lake / "cdc" / cdc.name / "items").iterdir())
    assert [f for f in folders if f.startswith("snapshot-")] and len([f for f in folders if f.startswith("changes-")]) >= 2
    live = {t: _warehouse_rows(cdc.dw_url, t, KEYS[t]) for t in ("items", "lines")}

    with psycopg.connect(cdc.dw_url, autocommit=True) as dw:
        dw.execute("DROP TABLE raw.items, raw.lines")
    code, text, err = cli("replay", str(cdc.path), "--lake", str(cdc.lake), env=cdc.env)
    assert code == 0, err
    assert "snapshot (50 rows) and" in text and "change partitions replayed into raw.items" in text
    for table in ("items", "lines"):
        assert _warehouse_rows(cdc.dw_url, table, KEYS[table]) == live[table], table
    cdc.assert_same("items", "lines")
    with psycopg.connect(cdc.dw_url) as dw:
        assert dw.execute("SELECT id, length(doc) FROM raw.items WHERE doc IS NOT NULL ORDER BY id").fetchall() == [
            (1, 1 << 20), (500, 1 << 20)]
    # replayed on top of the live table, as well: the same rows
    code, text, err = cli("replay", str(cdc.path), "--lake", str(cdc.lake), "--table", "items", env=cdc.env)
    assert code == 0, err
    assert _warehouse_rows(cdc.dw_url, "items", "id") == live["items"]
    code, text, err = cli("replay", str(cdc.path), "--lake", str(cdc.lake), "--from", DAY, env=cdc.env)
    assert code == 1 and "leave out --from" in err


def test_replay_without_a_recorded_snapshot_says_so(cli: Any, cdc: Cdc) -> None:
    cdc.source(*ITEMS)
    cdc.config(TABLES, KEYS)
    code, text, err = cli("replay", str(cdc.path), "--lake", str(cdc.lake), env=cdc.env)
    assert code == 1 and f"no recorded snapshot of the cdc table {cdc.name}.items" in err


def test_slot_figures_and_max_slot_lag(cli: Any, cdc: Cdc, dw_url: str) -> None:
    """What /sndw/health and /sndw/stats show of a slot (sndw.stats.cdc_slots, read-only on the warehouse)."""
    from sndw import stats

    cdc.source(*ITEMS, "INSERT INTO items VALUES (1, 'a', 1, NULL, NULL)")
    path = cdc.config(TABLES, KEYS)
    config = yaml.safe_load(path.read_text())

    def figures(lag: Any, conninfo: Any = None) -> dict[str, Any]:
        source = load_source_file(path) if lag is None else load_source_file(_write(path, config, lag))
        with psycopg.connect(dw_url, options="-c default_transaction_read_only=on", autocommit=True) as dw:
            return stats.cdc_slots(dw, [source], conninfo or (lambda s: cdc.source_db))[cdc.name]

    before = figures(None)
    assert before["status"] == "not_started" and before["exists"] is False and before["reachable"] is True
    sync(cli, cdc)
    cdc.source("INSERT INTO items SELECT g, 'i', 1, NULL, NULL FROM generate_series(2, 5000) g")
    ok = figures(None)
    assert ok["status"] == "ok" and ok["exists"] is True and ok["problems"] == []
    assert ok["retained_wal_bytes"] >= ok["pending_wal_bytes"] > 0
    assert ok["seconds_since_confirmed"] >= 0 and ok["stored_position"]
    over = figures({"wal": ok["retained_wal_bytes"] // 2})
    assert over["status"] == "lagging" and "retains" in over["problems"][0]
    assert figures("1GB")["status"] == "ok"
    time.sleep(1.2)
    aged = figures("1s")
    assert aged["status"] == "lagging" and "last confirmed" in aged["problems"][0]
    assert aged["max_slot_lag"] == {"wal_bytes": None, "age_seconds": 1.0}
    down = figures(None, lambda s: cdc.source_db.rsplit("@", 1)[0] + "@127.0.0.1:1/x")
    assert down["status"] == "unreachable" and down["reachable"] is False and "cannot connect" in down["error"]
    assert "password" not in down["error"].lower() or "***" in down["error"]
    cdc.source(f"SELECT pg_drop_replication_slot('{cdc.slot}')")
    gone = figures(None)
    assert gone["status"] == "missing" and "sndw cdc reset" in gone["problems"][0]


def _write(path: Path, config: dict[str, Any], lag: Any) -> Path:
    other = path.with_name(f"lag_{path.name}")
    other.write_text(yaml.safe_dump({**config, "cdc": {"max_slot_lag": lag}}))
    return other


def test_pagila_cdc_sample_as_shipped_with_a_partitioned_payment(cdc: Cdc, dw_url: str) -> None:
    """dags/sources/pagila_cdc.yaml on the real Pagila: payment is partitioned by month at the source
    (its changes arrive under the root's name), and one update moves a payment to another partition."""
    from sndw.demo import pagila

    if pagila.unavailable():
        pytest.skip(str(pagila.unavailable()))
    with psycopg.connect(cdc.source_db) as conn:
        pagila.load(cdc.source_db, conn)
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "dags" / "sources" / "pagila_cdc.yaml").read_text())
    cdc.path = cdc.tmp_path / "pagila_cdc.yaml"
    cdc.path.write_text(yaml.safe_dump({**shipped, "name": cdc.name, "conn_id": cdc.conn_id}))
    assert [r["rows_loaded"] for r in cdc.run()] == [16044, 16049]
    with psycopg.connect(cdc.source_db) as conn:
        pagila.cdc_changes(conn)
    results = cdc.run()
    assert [r["status"] for r in results] == ["success", "success"], results
    assert results[1]["changes"] >= 50 and results[1]["rows_deleted"] >= 1
    with psycopg.connect(cdc.source_db) as source, psycopg.connect(dw_url) as dw:
        compared = pagila.cdc_compare(source, dw, shipped["target_schema"])
    assert compared == {"rental": (16044, 16044, 0), "payment": (16049, 16049, 0)}, compared
