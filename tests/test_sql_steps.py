"""SQL steps after a source's loads (common-sql's operator on the dw connection), end to end through dag.test()."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sndw.config import parse_source
from sndw.demo import pagila
from sndw.errors import ConfigError

from tests.conftest import DAY, ROOT, TEST_SOURCES, count, run, states

pytestmark = pytest.mark.slow


def audit_rows(conn: psycopg.Connection, pipeline: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT step, status, target_table, partition_date, error_message FROM etl_audit_log "
                        "WHERE pipeline_name = %s ORDER BY id", (pipeline,)).fetchall()


@pytest.fixture
def sql_folder() -> Iterator[Path]:
    """dags/sources/sql beside the configs the tests write (``file:`` paths start at the config)."""
    target = TEST_SOURCES / "sql"
    shutil.copytree(ROOT / "dags" / "sources" / "sql", target, dirs_exist_ok=True)
    yield target
    shutil.rmtree(target, ignore_errors=True)


# film_dim computed straight from the source database, to compare with what the step built.
SOURCE_FILM_DIM = """
SELECT f.film_id, f.title, btrim(l.name),
       coalesce((SELECT array_agg(c.name ORDER BY c.name) FROM film_category fc
                 JOIN category c USING (category_id) WHERE fc.film_id = f.film_id), '{}'),
       coalesce((SELECT array_agg(a.first_name || ' ' || a.last_name ORDER BY a.last_name, a.first_name)
                 FROM film_actor fa JOIN actor a USING (actor_id) WHERE fa.film_id = f.film_id), '{}')
FROM film f JOIN language l USING (language_id)
"""


@pytest.mark.skipif(pagila.unavailable() is not None, reason=str(pagila.unavailable()))
def test_pagila_film_dim_built_by_the_sql_step(env: dict[str, Any], source_db: str, configs: list[Path],
                                               sql_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dags/sources/pagila.yaml as shipped, on the real Pagila tables: the raw tables land in
    pagila_raw, then sql_film_dim upserts analytics.film_dim; a second run after a source change
    updates the dimension in place."""
    with psycopg.connect(source_db) as conn:
        counts = pagila.load(source_db, conn)
    monkeypatch.setenv("AIRFLOW_CONN_PAGILA_SRC", source_db)
    config = yaml.safe_load((ROOT / "dags" / "sources" / "pagila.yaml").read_text())
    config["retries"] = 0
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(source_db) as src:
        films = int(src.execute("SELECT count(*) FROM film").fetchone()[0])  # type: ignore[index]
        expected = {r[0]: r[1:] for r in src.execute(SOURCE_FILM_DIM).fetchall()}
    assert films == counts["film"] and films > 0
    with psycopg.connect(env["dw_url"]) as dw:
        for table, rows in counts.items():  # the raw tables are kept as loaded
            assert count(dw, f"pagila_raw.{table}") == rows
        assert count(dw, "analytics.film_dim") == films
        built = {r[0]: r[1:] for r in dw.execute(
            "SELECT film_id, title, language, categories, actors FROM analytics.film_dim").fetchall()}
        assert built == expected
        assert dw.execute("SELECT min(partition_date), max(partition_date), sum(actor_count) "
                          "FROM analytics.film_dim").fetchone() == (DAY.date(), DAY.date(), counts["film_actor"])
        steps = [r for r in audit_rows(dw, "pagila") if r[0] == "sql"]
    assert steps == [("sql", "success", "analytics.film_dim", DAY.date(), None)]

    with psycopg.connect(source_db) as src:  # a renamed film and one actor fewer: the upsert follows
        film_id, actor_id = src.execute("SELECT film_id, actor_id FROM film_actor ORDER BY film_id, actor_id "
                                        "LIMIT 1").fetchone()  # type: ignore[misc]
        src.execute("UPDATE film SET title = 'RENAMED FILM' WHERE film_id = %s", (film_id,))
        src.execute("DELETE FROM film_actor WHERE film_id = %s AND actor_id = %s", (film_id, actor_id))
        expected = {r[0]: r[1:] for r in src.execute(SOURCE_FILM_DIM).fetchall()}
    second = run(config, configs)
    assert set(states(second).values()) == {"success"}, states(second)
    with psycopg.connect(env["dw_url"]) as dw:
        built = {r[0]: r[1:] for r in dw.execute(
            "SELECT film_id, title, language, categories, actors FROM analytics.film_dim").fetchall()}
        assert built == expected and built[film_id][0] == "RENAMED FILM"
        assert count(dw, "analytics.film_dim") == films
        steps = [r for r in audit_rows(dw, "pagila") if r[0] == "sql"]
    assert [r[1] for r in steps] == ["success", "success"]


def test_steps_run_in_order_templated_and_a_failing_step_leaves_nothing(
        env: dict[str, Any], configs: list[Path], tmp_path: Path) -> None:
    """Inline steps after a file source's load: the first builds a summary for the run's
    {{ partition_date }}; the second fails half-way, so none of its statements stay, and both
    attempts are in etl_audit_log with step 'sql'."""
    data = tmp_path / "orders.csv"
    data.write_text("id,amount\n" + "".join(f"{i},{i * 2}\n" for i in range(1, 41)))
    config = {
        "name": "steps_demo", "kind": "file", "start_date": "2024-01-01", "retries": 0, "target_schema": "raw",
        "tables": [{"name": "orders", "path": str(data)}],
        "sql_steps": [
            {"name": "daily", "target": "mart.daily_orders", "sql":
             "CREATE SCHEMA IF NOT EXISTS mart;\n"
             "CREATE TABLE IF NOT EXISTS mart.daily_orders (day date PRIMARY KEY, orders bigint, amount numeric);\n"
             "INSERT INTO mart.daily_orders SELECT DATE '{{ partition_date }}', count(*), sum(amount) FROM raw.orders\n"
             "ON CONFLICT (day) DO UPDATE SET orders = EXCLUDED.orders, amount = EXCLUDED.amount;"},
            {"name": "broken", "sql":
             "CREATE TABLE mart.half_done AS SELECT * FROM mart.daily_orders;\n"
             "SELECT 1 / (SELECT count(*) - count(*) FROM raw.orders);"},
        ],
    }
    dag_run = run(config, configs)
    assert states(dag_run) == {"extract_orders": "success", "load_orders": "success", "sql_daily": "success",
                               "sql_broken": "failed"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT day, orders, amount FROM mart.daily_orders").fetchall() == [
            (DAY.date(), 40, sum(i * 2 for i in range(1, 41)))]
        assert dw.execute("SELECT to_regclass('mart.half_done')").fetchone() == (None,)
        steps = [r for r in audit_rows(dw, "steps_demo") if r[0] == "sql"]
    assert [r[:4] for r in steps] == [("sql", "success", "mart.daily_orders", DAY.date()),
                                      ("sql", "failure", "sql:steps_demo/broken", DAY.date())]
    assert "division by zero" in steps[1][4]


def test_sql_step_config_errors(tmp_path: Path) -> None:
    base = {"name": "steps_cfg", "kind": "file", "start_date": "2024-01-01", "tables": [{"name": "t", "path": "t.csv"}]}
    cases = [
        ([{"name": "a", "file": "sql/missing.sql"}], "sql_steps[0].file", "no file"),
        ([{"name": "a", "sql": "SELECT 1", "file": "x.sql"}], "sql_steps[0]", "exactly one of 'sql' or 'file'"),
        ([{"name": "a", "sql": "SELECT 1"}, {"name": "a", "sql": "SELECT 2"}], "sql_steps", "a repeated"),
        ([{"name": "a", "sql": "SELECT 1", "query": "x"}], "sql_steps[0].query", "unknown key"),
    ]
    for steps, field, message in cases:
        with pytest.raises(ConfigError) as exc:
            parse_source({**base, "sql_steps": steps}, str(tmp_path / "steps_cfg.yaml"))
        assert f"{field}:" in str(exc.value) and message in str(exc.value), str(exc.value)
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "ok.sql").write_text("SELECT '{{ partition_date }}'")
    source = parse_source({**base, "sql_steps": [{"name": "a", "file": "sql/ok.sql"}]}, str(tmp_path / "steps_cfg.yaml"))
    assert source.sql_steps[0].text(tmp_path) == "SELECT '{{ partition_date }}'"
