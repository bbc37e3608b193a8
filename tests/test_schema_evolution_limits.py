"""Schema evolution that PostgreSQL itself would refuse: a widening of a column that views use, and
new columns past the 1,600-column limit. The load fails before any DDL, naming what is in the way
and what to do; the warehouse is unchanged."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from sndw.audit import AuditRecord
from sndw.errors import PermanentError
from sndw.lake import Manifest, write_partition
from sndw.warehouse import LoadSpec, load_manifest, table_columns

from tests.conftest import run, states

DAY = dt.date(2024, 1, 2)


def lake(tmp_path: Path, batch: pa.RecordBatch, table: str = "prices") -> Manifest:
    return write_partition([batch], tmp_path / "lake", "sql", "src", table, DAY, run_id=f"run-{DAY}")


def decimals() -> pa.RecordBatch:
    return pa.record_batch({"id": [3], "p": pa.array([decimal.Decimal("2.50")], pa.decimal128(5, 2))})


def test_a_widening_blocked_by_views_names_them_and_changes_nothing(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("raw", "prices", "append")
    load_manifest(dw, lake(tmp_path, pa.record_batch({"id": [1, 2], "p": [5, 7]})), spec)
    dw.execute("CREATE SCHEMA reports")
    dw.execute("CREATE VIEW reports.\"Price list\" AS SELECT id, p FROM raw.prices")
    dw.execute("CREATE VIEW reports.cheap AS SELECT * FROM reports.\"Price list\" WHERE p < 6")  # on the view
    dw.execute("CREATE MATERIALIZED VIEW raw.price_total AS SELECT sum(p) AS total FROM raw.prices")
    dw.execute("CREATE VIEW raw.ids AS SELECT id FROM raw.prices")  # does not use p: not in the way
    dw.commit()
    audit = AuditRecord("pipe", "src", "sql", "raw.prices", "success", dt.datetime.now(dt.UTC))
    with pytest.raises(PermanentError) as info:
        load_manifest(dw, lake(tmp_path, decimals()), spec, audit=audit)
    message = str(info.value)
    for part in ("raw.prices.p", "from bigint to numeric", 'view reports."Price list"',
                 "materialized view raw.price_total", "Drop them", "ALTER TABLE raw.prices ALTER COLUMN p TYPE numeric",
                 "column_types: {p: numeric}"):
        assert part in message, (part, message)
    assert "raw.ids" not in message and "reports.cheap" not in message  # only what PostgreSQL refuses for
    assert table_columns(dw.cursor(), "raw", "prices")["p"] == "bigint"
    assert dw.execute("SELECT id, p FROM raw.prices ORDER BY id").fetchall() == [(1, 5), (2, 7)]
    assert dw.execute("SELECT count(*) FROM etl_audit_log").fetchone() == (0,)  # no success row
    assert dw.execute("SELECT count(*) FROM reports.cheap").fetchone() == (1,)
    # What the message says to do: drop the views, load again (the column widens), recreate them.
    dw.execute("DROP VIEW reports.\"Price list\" CASCADE")
    dw.execute("DROP MATERIALIZED VIEW raw.price_total")
    dw.commit()
    result = load_manifest(dw, lake(tmp_path, decimals()), spec)
    assert {"change": "widen_column", "column": "p", "from": "bigint", "to": "numeric"} in result.schema_changes
    assert dw.execute("SELECT p::text FROM raw.prices ORDER BY id").fetchall() == [("5",), ("7",), ("2.50",)]


def test_new_columns_past_the_column_limit_are_refused_before_any_ddl(tmp_path: Path, dw: psycopg.Connection) -> None:
    """Dropped columns keep their place in PostgreSQL's count: they are counted too."""
    spec = LoadSpec("raw", "wide", "append")
    first = pa.RecordBatch.from_arrays([pa.array([True])] * 1590, names=[f"c{i}" for i in range(1, 1591)])
    load_manifest(dw, lake(tmp_path, first, "wide"), spec)  # 1590 + 3 added = 1593
    dw.execute("ALTER TABLE raw.wide DROP COLUMN c1590")
    dw.commit()
    more = pa.RecordBatch.from_arrays([pa.array([False])] * 1597, names=[f"c{i}" for i in range(1, 1598)])
    with pytest.raises(PermanentError) as info:  # 1593 places used, 8 new: one too many
        load_manifest(dw, lake(tmp_path, more, "wide"), spec)
    message = str(info.value)
    for part in ("raw.wide", "uses 1593 of PostgreSQL's 1600 columns", "add 8 more", "c1590, c1591", "dropped"):
        assert part in message, (part, message)
    assert len(table_columns(dw.cursor(), "raw", "wide")) == 1592
    assert dw.execute("SELECT count(*) FROM raw.wide").fetchone() == (1,)


@pytest.mark.slow
def test_a_blocked_widening_fails_its_dag_task_once_and_is_audited(env: dict[str, Any], source_db: str,
                                                                     configs: list[Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A permanent error: the load task fails on its first attempt despite retries, and its audit
    row names the view."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE prices (id integer, p numeric(5,2)); INSERT INTO prices VALUES (1, 2.50)")
    with psycopg.connect(env["dw_url"], autocommit=True) as dw:
        dw.execute("CREATE SCHEMA raw; CREATE TABLE raw.prices (id integer, p bigint); "
                   "INSERT INTO raw.prices VALUES (1, 5); CREATE VIEW raw.price_view AS SELECT p FROM raw.prices")
    monkeypatch.setenv("AIRFLOW_CONN_VIEWS_PG", source_db)
    config = {"name": "views_pg", "kind": "sql", "conn_id": "views_pg", "target_schema": "raw",
              "start_date": "2024-01-01", "retries": 2, "retry_delay_seconds": 0,
              "tables": [{"name": "prices", "table": "public.prices", "write_mode": "append"}]}
    dag_run = run(config, configs)
    assert states(dag_run) == {"extract_prices": "success", "load_prices": "failed"}
    with psycopg.connect(env["dw_url"]) as dw:
        audit = dw.execute("SELECT status, try_number, error_message FROM etl_audit_log WHERE step = 'load'").fetchall()
        assert dw.execute(sql.SQL("SELECT id, p FROM raw.prices")).fetchall() == [(1, 5)]
    assert len(audit) == 1 and audit[0][0] != "success" and audit[0][1] == 1, audit
    assert "view raw.price_view" in audit[0][2] and "raw.prices.p" in audit[0][2], audit
