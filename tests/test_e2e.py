"""Every source kind end to end through Airflow's dag.test(), on a real PostgreSQL, HTTP server and files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.demo import files as demo_files
from sndw.demo import manufacturing
from sndw.demo.api import DemoApi, default_routes

from tests.conftest import DAY, count, run, states

pytestmark = pytest.mark.slow


def audit(conn: psycopg.Connection, pipeline: str) -> list[tuple]:
    return conn.execute(
        "SELECT step, status, rows_extracted, rows_loaded, partition_date, try_number, error_message "
        "FROM etl_audit_log WHERE pipeline_name = %s ORDER BY id", (pipeline,)).fetchall()


def test_sql_source_all_modes_and_templated_partition_query(env: dict[str, Any], source_db: str,
                                                             configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=300)
    monkeypatch.setenv("AIRFLOW_CONN_E2E_MFG", source_db)
    config = {
        "name": "e2e_mfg", "kind": "sql", "conn_id": "e2e_mfg", "target_schema": "raw", "start_date": "2024-01-01",
        "retries": 0, "tables": [
            {"name": "refills", "table": "public.refills", "write_mode": "replace"},
            {"name": "bodies", "query": "SELECT * FROM bodies", "write_mode": "merge", "primary_key": ["id"]},
            {"name": "springs", "write_mode": "partition", "query":
             "SELECT * FROM springs WHERE produced_at >= DATE '{{ partition_date }}' "
             "AND produced_at < DATE '{{ partition_date }}' + 1"},
        ],
    }
    first = run(config, configs)
    assert set(states(first).values()) == {"success"}, states(first)
    second = run(config, configs)  # the same partition again: still exactly one copy
    assert set(states(second).values()) == {"success"}
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "raw.refills") == 300 and count(dw, "raw.bodies") == 300
        springs = dw.execute("SELECT count(*), min(produced_at)::date, max(produced_at)::date, "
                             "min(_partition_date) FROM raw.springs").fetchone()
        assert springs == (39, dt.date(2024, 1, 2), dt.date(2024, 1, 2), dt.date(2024, 1, 2))
        rows = audit(dw, "e2e_mfg")
    assert len(rows) == 12  # 2 runs x 3 tables x (extract + load)
    assert {r[1] for r in rows} == {"success"}
    loads = [r for r in rows if r[0] == "load"]
    assert sorted(r[3] for r in loads) == [39, 39, 300, 300, 300, 300]
    assert all(r[4] == dt.date(2024, 1, 2) for r in rows)


def test_http_source_nested_and_paged(env: dict[str, Any], configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with DemoApi() as api:
        monkeypatch.setenv("AIRFLOW_CONN_E2E_API", api.url)
        config = {
            "name": "e2e_api", "kind": "http", "conn_id": "e2e_api", "start_date": "2024-01-01", "retries": 0,
            "tables": [
                {"name": "users", "endpoint": "/users", "write_mode": "merge", "primary_key": ["id"]},
                {"name": "todos", "endpoint": "/todos-linked", "records_path": "results",
                 "pagination": {"type": "next_link"}, "write_mode": "append"},
            ],
        }
        dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        user = dw.execute("SELECT user_name, address__geo__lat, tags, company__catch_phrase FROM users WHERE id = 2").fetchone()
        assert user is not None and user[0] == "user2" and isinstance(user[2], list) and "quotes" in user[3]
        assert count(dw, "todos") == 200
        assert dw.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'users' "
                          "AND column_name = 'tags'").fetchone() == ("jsonb",)


def test_file_source_and_a_run_without_logical_date(env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    demo_files.write_inspections(data / "inspections.csv", rows=120)
    config = {"name": "e2e_csv", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "inspections", "path": "*.csv", "write_mode": "replace"}]}
    dag_run = run(config, configs, logical_date=None)  # like a REST-triggered run in Airflow 3
    assert dag_run.logical_date is None
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    today = dag_run.run_after.astimezone(dt.UTC).date()
    assert (env["lake"] / "file" / "e2e_csv" / "inspections" / today.isoformat()).is_dir()
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "inspections") == 120
        assert {r[4] for r in audit(dw, "e2e_csv")} == {today}
        checked = dw.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'inspections' "
                             "AND column_name = 'checked_at'").fetchone()
        assert checked == ("timestamp with time zone",)


def test_failures_are_audited_with_the_error_and_no_secret(env: dict[str, Any], configs: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    routes = default_routes()
    routes["/broken"] = lambda query, base: (200, b"<html><body>Maintenance</body></html>")
    with DemoApi(routes=routes) as api:
        monkeypatch.setenv("AIRFLOW_CONN_E2E_BAD", api.url.replace("http://", "http://robot:hunter2-secret@"))
        config = {"name": "e2e_bad", "kind": "http", "conn_id": "e2e_bad", "start_date": "2024-01-01",
                  "retries": 0, "tables": [{"name": "broken", "endpoint": "/broken"}]}
        dag_run = run(config, configs)
    assert states(dag_run) == {"extract_broken": "failed", "load_broken": "upstream_failed"}
    with psycopg.connect(env["dw_url"]) as dw:
        rows = audit(dw, "e2e_bad")
        assert [(r[0], r[1]) for r in rows] == [("extract", "failure")]
        assert "is not JSON" in rows[0][6] and "Maintenance" in rows[0][6]
        everything = json.dumps(dw.execute("SELECT * FROM etl_audit_log").fetchall(), default=str)
        assert "hunter2" not in everything
        assert dw.execute("SELECT to_regclass('public.broken')").fetchone() == (None,)


def test_a_load_that_fails_leaves_the_table_and_is_audited(env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "a.csv").write_text("id,code\n1,10\n2,20\n")
    config = {"name": "e2e_conflict", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "codes", "path": "a.csv", "write_mode": "append"}]}
    assert set(states(run(config, configs)).values()) == {"success"}
    (data / "a.csv").write_text("id,code\n3,X-30\n")
    dag_run = run(config, configs)
    assert states(dag_run)["load_codes"] == "failed"
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT id, code FROM codes ORDER BY id").fetchall() == [(1, 10), (2, 20)]
        last = audit(dw, "e2e_conflict")[-1]
        assert last[:2] == ("load", "failure") and "public.codes.code" in last[6] and "bigint" in last[6]


def test_the_hand_written_example_dag(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import TEST_DAGS

    dag = DagBag(dag_folder=str(TEST_DAGS / "example_manual_pipeline.py")).dags["example_manual_pipeline"]
    with DemoApi() as api:
        monkeypatch.setenv("AIRFLOW_CONN_DEMO_API", api.url)
        dag_run = dag.test(logical_date=DAY)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "staging.api_users") == 10


def test_sqlite_source_through_an_airflow_connection(env: dict[str, Any], configs: list[Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    db = env["tmp"] / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER, price REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", [(i, f"item {i}", i % 4, i * 0.5) for i in range(1, 251)])
    monkeypatch.setenv("AIRFLOW_CONN_E2E_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    config = {"name": "e2e_sqlite", "kind": "sql", "conn_id": "e2e_sqlite", "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "orders", "query": "SELECT * FROM orders WHERE qty > 0",
                                        "write_mode": "merge", "primary_key": ["id"], "batch_rows": 100}]}
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*), sum(qty) FROM orders").fetchone() == (188, 375)
