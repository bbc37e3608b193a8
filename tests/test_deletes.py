"""Deleted rows without change data capture (issue 22 part 1), through `etl.cli sync` and a DAG run on a
real PostgreSQL: hard and soft deletes on sql, http and file tables, the keys of incremental tables,
a partition table's date as the scope, NOT NULL columns, a key that comes back, and the guard against
mass deletes. After each scenario the warehouse equals the source, row for row (both ways)."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from tests.conftest import run, states
from tests.http_api import Req, Resp, TestApi
from tests.test_quality import asset_events, table_hash


def same_rows(left: Sequence[tuple[Any, ...]], right: Sequence[tuple[Any, ...]]) -> None:
    """Row for row, both ways (EXCEPT ALL each side)."""
    a, b = Counter(left), Counter(right)
    assert (a - b, b - a) == (Counter(), Counter())


def rows(url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def source_items(url: str, n: int = 20) -> None:
    with psycopg.connect(url) as src:
        src.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, "
                    "updated_at timestamptz NOT NULL)")
        src.execute("INSERT INTO items SELECT g, 'item ' || g, g * 10, TIMESTAMPTZ '2024-01-01' + g * INTERVAL '1 hour' "
                    "FROM generate_series(1, %s) g", (n,))


def write_config(tmp_path: Path, name: str, kind: str, tables: list[dict[str, Any]], **more: Any) -> Path:
    config = {"name": name, "kind": kind, "start_date": "2024-01-01", "retries": 0, "tables": tables, **more}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def audit(dw_url: str, table: str) -> list[tuple[Any, ...]]:
    return rows(dw_url, "SELECT status, rows_loaded, rows_deleted, error_message FROM etl_audit_log "
                        "WHERE target_table = %s AND step = 'load' ORDER BY id", (table,))


# ------------------------------------------------------------------------------------------ sql


def test_hard_deletes_of_a_merge_table_with_not_null_columns(cli: Any, tmp_path: Path, source_db: str,
                                                             dw_url: str) -> None:
    source_items(source_db)
    path = write_config(tmp_path, "shop", "sql", [{"name": "items", "table": "public.items", "write_mode": "merge",
                                                   "primary_key": ["id"], "deletes": "hard"}], conn_id="shop_src")
    env = {"AIRFLOW_CONN_SHOP_SRC": source_db}
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    assert out[0]["rows_loaded"] == 20 and out[0]["rows_deleted"] == 0
    with psycopg.connect(dw_url) as dw:  # the warehouse's own NOT NULL constraints: a delete by key ignores them
        dw.execute("ALTER TABLE items ALTER name SET NOT NULL, ALTER qty SET NOT NULL")
    with psycopg.connect(source_db) as src:
        src.execute("DELETE FROM items WHERE id IN (3, 7)")
        src.execute("UPDATE items SET name = 'renamed' WHERE id = 5")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    assert (out[0]["rows_loaded"], out[0]["rows_deleted"]) == (18, 2)
    assert "18 rows, 2 deleted" in err
    same_rows(rows(source_db, "SELECT id, name, qty, updated_at FROM items"), rows(dw_url, "SELECT id, name, qty, updated_at FROM items"))
    assert [a[:3] for a in audit(dw_url, "public.items")] == [("success", 20, 0), ("success", 18, 2)]
    code, out, err = cli("check", str(path), "--json", env=env)
    assert code == 0, err
    assert [(r["rows"], r["source_rows"], r["agrees"], r["rows_deleted"]) for r in out] == [(18, 18, True, 2)]
    code, text, err = cli("check", str(path), env=env)
    assert code == 0 and "public.items" in text and text.splitlines()[1].rstrip().endswith("success  2"), text


def test_soft_deletes_of_an_incremental_table_and_a_key_that_comes_back(cli: Any, tmp_path: Path, source_db: str,
                                                                        dw_url: str) -> None:
    """Rows deleted at the source while the incremental read sees no change: the keys read finds
    them. A key back at the source with an old cursor (the incremental read never sees it) is live again."""
    source_items(source_db)
    path = write_config(tmp_path, "shop", "sql", [{
        "name": "items", "table": "public.items", "write_mode": "merge", "primary_key": ["id"], "deletes": "soft",
        "incremental": {"cursor": "updated_at"}}], conn_id="shop_src")
    env = {"AIRFLOW_CONN_SHOP_SRC": source_db}
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    with psycopg.connect(source_db) as src:
        gone = src.execute("SELECT * FROM items WHERE id IN (2, 4)").fetchall()
        src.execute("DELETE FROM items WHERE id IN (2, 4)")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    assert (out[0]["rows_loaded"], out[0]["rows_deleted"]) == (0, 2)
    partition = Path(out[0]["lake_paths"][0]).parent
    keys = sorted(partition.glob("keys-*.parquet"))
    assert len(keys) == 1  # the run's key set, in the lake with its rows
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(keys[0]).column("id").to_pylist()) == [i for i in range(1, 21) if i not in (2, 4)]
    live = "SELECT id, name, qty, updated_at FROM items WHERE _deleted_at IS NULL"
    same_rows(rows(source_db, "SELECT id, name, qty, updated_at FROM items"), rows(dw_url, live))
    marked = rows(dw_url, "SELECT id, name, qty, updated_at FROM items WHERE _deleted_at IS NOT NULL")
    same_rows(marked, gone)  # the rows stay, as they were, marked
    # Again: nothing more is marked, the marks stay.
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0 and out[0]["rows_deleted"] == 0, err
    assert rows(dw_url, "SELECT count(*) FROM items WHERE _deleted_at IS NOT NULL") == [(2,)]
    with psycopg.connect(source_db) as src:
        src.execute("INSERT INTO items VALUES (%s, %s, %s, %s)", gone[0])  # back, with its old cursor
        src.execute("INSERT INTO items VALUES (4, 'item 4 again', 41, TIMESTAMPTZ '2024-02-01')")  # back, changed
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    assert (out[0]["rows_loaded"], out[0]["rows_deleted"]) == (1, 0)
    assert rows(dw_url, "SELECT count(*) FROM items WHERE _deleted_at IS NOT NULL") == [(0,)]
    same_rows(rows(source_db, "SELECT id, name, qty, updated_at FROM items"), rows(dw_url, live))
    assert [a[2] for a in audit(dw_url, "public.items")] == [0, 2, 0, 0]


def test_keys_query_of_an_incremental_query_table(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    source_items(source_db)
    path = write_config(tmp_path, "shop", "sql", [{
        "name": "stock", "query": "SELECT * FROM items WHERE qty > 0", "keys_query": "SELECT id FROM items WHERE qty > 0",
        "write_mode": "merge", "primary_key": ["id"], "deletes": "hard", "incremental": {"cursor": "updated_at"}}],
        conn_id="shop_src")
    env = {"AIRFLOW_CONN_SHOP_SRC": source_db}
    assert cli("sync", str(path), "--lake", str(tmp_path / "lake"), env=env)[0] == 0
    with psycopg.connect(source_db) as src:
        src.execute("DELETE FROM items WHERE id = 11")
        src.execute("UPDATE items SET qty = 0 WHERE id = 12")  # leaves the query's rows; its cursor is unchanged
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0, err
    assert (out[0]["rows_loaded"], out[0]["rows_deleted"]) == (0, 2)
    same_rows(rows(source_db, "SELECT id, name, qty, updated_at FROM items WHERE qty > 0"), rows(dw_url, "SELECT id, name, qty, updated_at FROM stock"))


def test_the_guard_refuses_a_mass_delete_until_the_table_allows_it(cli: Any, tmp_path: Path, source_db: str,
                                                                   dw_url: str) -> None:
    source_items(source_db, 10)
    table = {"name": "items", "table": "public.items", "write_mode": "merge", "primary_key": ["id"], "deletes": "hard"}
    path = write_config(tmp_path, "shop", "sql", [table], conn_id="shop_src")
    env = {"AIRFLOW_CONN_SHOP_SRC": source_db}
    assert cli("sync", str(path), "--lake", str(tmp_path / "lake"), env=env)[0] == 0
    with psycopg.connect(source_db) as src:
        src.execute("DELETE FROM items WHERE id <= 6")
        src.execute("UPDATE items SET qty = -1 WHERE id = 10")
    with psycopg.connect(dw_url) as dw:
        before = table_hash(dw, "items")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 1 and out[0]["status"] == "failure"
    assert "would delete 6 of the 10 rows of the table, 60%, more than max_delete_fraction 0.5" in out[0]["error"]
    with psycopg.connect(dw_url) as dw:
        assert table_hash(dw, "items") == before  # nothing deleted, nothing loaded (id 10 unchanged)
    status, _, deleted, error = audit(dw_url, "public.items")[-1]
    assert (status, deleted) == ("failure", None) and "would delete 6 of the 10 rows" in error
    # Allowed: the same run goes through.
    write_config(tmp_path, "shop", "sql", [{**table, "max_delete_fraction": 1.0}], conn_id="shop_src")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0 and out[0]["rows_deleted"] == 6, err
    same_rows(rows(source_db, "SELECT id, name, qty, updated_at FROM items"), rows(dw_url, "SELECT id, name, qty, updated_at FROM items"))
    # Every row gone: refused under any share below 1.
    with psycopg.connect(source_db) as src:
        src.execute("DELETE FROM items")
    write_config(tmp_path, "shop", "sql", [{**table, "max_delete_fraction": 0.99}], conn_id="shop_src")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 1 and "would delete 4 of the 4 rows of the table (every row), 100%" in out[0]["error"]
    assert rows(dw_url, "SELECT count(*) FROM items") == [(4,)]


# ------------------------------------------------------------------------------------------ http


def api_route(records: list[dict[str, Any]]) -> Any:
    """The current records; ``since`` filters on ``updated`` (the incremental parameter)."""
    def route(req: Req) -> Resp:
        since = req.query.get("since")
        return Resp(body={"data": [r for r in records if since is None or r["updated"] > since]})
    return route


def test_http_tables_full_and_incremental(cli: Any, tmp_path: Path, dw_url: str) -> None:
    records = [{"id": i, "name": f"n{i}", "updated": f"2024-01-{i:02d}"} for i in range(1, 11)]
    with TestApi({"/whole": api_route(records), "/inc": api_route(records)}) as api:
        env = {"AIRFLOW_CONN_SHOP_API": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": api.port})}
        path = write_config(tmp_path, "shop", "http", [
            {"name": "whole", "endpoint": "/whole", "records_path": "data", "write_mode": "merge", "primary_key": ["id"],
             "deletes": "hard"},
            {"name": "inc", "endpoint": "/inc", "records_path": "data", "write_mode": "merge", "primary_key": ["id"],
             "deletes": "soft", "incremental": {"cursor": "updated", "param": "since"}}], conn_id="shop_api")
        code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
        assert code == 0, err
        del records[2]
        del records[5]
        records.append({"id": 11, "name": "n11", "updated": "2024-02-01"})
        code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
        assert code == 0, err
        assert [(r["rows_loaded"], r["rows_deleted"]) for r in out] == [(9, 2), (1, 2)]
        # The incremental table's keys read: the same request without its incremental parameter.
        assert [r.query.get("since") for r in api.requests_to("/inc")] == [None, None, "2024-01-10", None]
    expected = [(r["id"], r["name"], r["updated"]) for r in records]
    same_rows(expected, rows(dw_url, "SELECT id, name, updated FROM whole"))
    same_rows(expected, rows(dw_url, "SELECT id, name, updated FROM inc WHERE _deleted_at IS NULL"))
    assert sorted(r[0] for r in rows(dw_url, "SELECT id FROM inc WHERE _deleted_at IS NOT NULL")) == [3, 7]


# ------------------------------------------------------------------------------------------ file


def test_file_table_soft_deletes_and_a_returning_key(cli: Any, tmp_path: Path, dw_url: str) -> None:
    data = tmp_path / "files"
    data.mkdir()
    csv = data / "items.csv"
    csv.write_text("id,name,qty\n1,a,10\n2,b,20\n3,c,30\n4,d,40\n")
    path = write_config(tmp_path, "files_src", "file", [{"name": "items", "path": "items.csv", "write_mode": "merge",
                                                         "primary_key": ["id"], "deletes": "soft"}],
                        base_path=str(data))
    assert cli("sync", str(path), "--lake", str(tmp_path / "lake"))[0] == 0
    csv.write_text("id,name,qty\n1,a,10\n3,c,31\n4,d,40\n")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json")
    assert code == 0 and out[0]["rows_deleted"] == 1, err
    assert rows(dw_url, "SELECT id, name, qty FROM items WHERE _deleted_at IS NOT NULL") == [(2, "b", 20)]
    csv.write_text("id,name,qty\n1,a,10\n2,b,22\n3,c,31\n4,d,40\n")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json")
    assert code == 0 and out[0]["rows_deleted"] == 0, err
    same_rows([(1, "a", 10), (2, "b", 22), (3, "c", 31), (4, "d", 40)],
              rows(dw_url, "SELECT id, name, qty FROM items WHERE _deleted_at IS NULL"))
    assert rows(dw_url, "SELECT count(*) FROM items") == [(4,)]


def test_a_partition_tables_scope_is_its_date(cli: Any, tmp_path: Path, dw_url: str) -> None:
    data = tmp_path / "files"
    data.mkdir()
    for day in ("2024-01-02", "2024-01-03"):
        (data / f"orders-{day}.csv").write_text(f"id,amount\n1,{day[-1]}0\n2,20\n3,30\n")
    path = write_config(tmp_path, "files_src", "file", [{
        "name": "orders", "path": "orders-{{ partition_date }}.csv", "write_mode": "partition", "primary_key": ["id"],
        "deletes": "soft"}], base_path=str(data))
    for day in ("2024-01-02", "2024-01-03"):
        assert cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", day)[0] == 0
    (data / "orders-2024-01-02.csv").write_text("id,amount\n1,20\n3,30\n4,40\n")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", "2024-01-02", "--json")
    assert code == 0 and out[0]["rows_deleted"] == 1, err
    day = dt.date(2024, 1, 2)
    assert rows(dw_url, "SELECT _partition_date, id, amount FROM orders WHERE _deleted_at IS NOT NULL") == [(day, 2, 20)]
    same_rows([(day, 1, 20), (day, 3, 30), (day, 4, 40)] + [(dt.date(2024, 1, 3), i, a) for i, a in [(1, 30), (2, 20), (3, 30)]],
              rows(dw_url, "SELECT _partition_date, id, amount FROM orders WHERE _deleted_at IS NULL"))
    # The guard counts the date's rows: 2 of the 3 rows of 2024-01-03 is too many.
    (data / "orders-2024-01-03.csv").write_text("id,amount\n1,30\n")
    with psycopg.connect(dw_url) as dw:
        before = table_hash(dw, "orders")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", "2024-01-03", "--json")
    assert code == 1 and "would delete 2 of the 3 rows of its partition 2024-01-03, 67%" in out[0]["error"], out
    with psycopg.connect(dw_url) as dw:
        assert table_hash(dw, "orders") == before


def test_hard_deletes_of_a_partition_date_and_an_append_table(cli: Any, tmp_path: Path, dw_url: str) -> None:
    data = tmp_path / "files"
    data.mkdir()
    (data / "events.csv").write_text("id,kind\n1,a\n2,b\n3,c\n")
    path = write_config(tmp_path, "files_src", "file", [
        {"name": "events", "path": "events.csv", "write_mode": "append", "primary_key": ["id"], "deletes": "hard"},
        {"name": "days", "path": "events.csv", "write_mode": "partition", "primary_key": ["id"], "deletes": "hard"}],
        base_path=str(data))
    assert cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", "2024-01-02")[0] == 0
    (data / "events.csv").write_text("id,kind\n1,a\n3,c\n4,d\n")
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", "2024-01-03", "--json")
    assert code == 0, err
    assert [r["rows_deleted"] for r in out] == [1, 0]  # the partition table's new date had no rows to lose
    # append keeps each date's rows, less those whose key left the source
    same_rows([(1, "a"), (3, "c"), (1, "a"), (3, "c"), (4, "d")], rows(dw_url, "SELECT id, kind FROM events"))
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--date", "2024-01-02", "--json")
    assert code == 0 and [r["rows_deleted"] for r in out] == [0, 1], err


# ---------------------------------------------------------------------------------- through Airflow


@pytest.mark.slow
def test_a_dag_run_deletes_and_its_guard(env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "items.csv").write_text("id,name\n1,a\n2,b\n3,c\n4,d\n")
    source = {"name": "deletes_dag", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 2, "retry_delay_seconds": 0,
              "tables": [{"name": "items", "path": "items.csv", "write_mode": "merge", "primary_key": ["id"],
                          "deletes": "hard"}]}
    earlier = len(asset_events("deletes_dag"))  # the metadata DB outlives a test session: count from here
    assert set(states(run(source, configs)).values()) == {"success"}
    (data / "items.csv").write_text("id,name\n1,a\n2,b\n4,d\n")
    assert set(states(run(source, configs)).values()) == {"success"}
    events = asset_events("deletes_dag")[earlier:]
    assert [e.get("rows_deleted") for e in events] == [0, 1], events
    same_rows([(1, "a"), (2, "b"), (4, "d")], rows(env["dw_url"], "SELECT id, name FROM items"))
    (data / "items.csv").write_text("id,name\n1,a\n")
    with psycopg.connect(env["dw_url"]) as dw:
        before = table_hash(dw, "items")
    dag_run = run(source, configs)
    assert states(dag_run) == {"extract_items": "success", "load_items": "failed"}
    load = next(t for t in dag_run.get_task_instances() if t.task_id == "load_items")
    assert load.try_number == 1  # no retry: the source will not grow its rows back
    with psycopg.connect(env["dw_url"]) as dw:
        assert table_hash(dw, "items") == before
        assert dw.execute("SELECT status, rows_deleted FROM etl_audit_log WHERE task_id = 'load_items' "
                          "ORDER BY id").fetchall() == [("success", 0), ("success", 1), ("failure", None)]
        error = dw.execute("SELECT error_message FROM etl_audit_log WHERE status = 'failure'").fetchone()
    assert error and "would delete 2 of the 3 rows of the table" in error[0]
    assert len(asset_events("deletes_dag")) == earlier + 2


# ---------------------------------------------------------------------------------- Pagila


def test_pagila_rentals_deleted_at_the_source(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    """The issue's scenario: rental synced as a merge table, 10 rentals deleted at the source, synced
    again: the counts agree (before deletes, the warehouse kept all 16,044)."""
    from sndw.demo import pagila

    if pagila.unavailable():
        pytest.skip(pagila.unavailable() or "")
    with psycopg.connect(source_db) as src:
        pagila.load(source_db, src)
    path = write_config(tmp_path, "pagila", "sql", [{
        "name": "rental", "table": "public.rental", "write_mode": "merge", "primary_key": ["rental_id"],
        "deletes": "hard"}], conn_id="pagila_src")
    env = {"AIRFLOW_CONN_PAGILA_SRC": source_db}
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0 and out[0]["rows_loaded"] == 16044, err
    with psycopg.connect(source_db) as src:
        ids = [r[0] for r in src.execute("SELECT rental_id FROM rental ORDER BY rental_id DESC LIMIT 10").fetchall()]
        src.execute("DELETE FROM payment WHERE rental_id = ANY(%s)", (ids,))
        src.execute("DELETE FROM rental WHERE rental_id = ANY(%s)", (ids,))
    code, out, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env=env)
    assert code == 0 and out[0]["rows_deleted"] == 10, err
    code, out, err = cli("check", str(path), "--json", env=env)
    assert code == 0 and [(r["rows"], r["source_rows"], r["agrees"]) for r in out] == [(16034, 16034, True)], out
    columns = sql.SQL("rental_id, rental_date, inventory_id, customer_id, return_date, staff_id, last_update")
    with psycopg.connect(source_db) as src, psycopg.connect(dw_url) as dw:
        same_rows(src.execute(sql.SQL("SELECT {} FROM rental").format(columns)).fetchall(),
                  dw.execute(sql.SQL("SELECT {} FROM rental").format(columns)).fetchall())
