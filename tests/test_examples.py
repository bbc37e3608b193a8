"""The examples/ scripts run as a user runs them, against a real warehouse and real demo sources."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from sndw.demo import manufacturing

from tests.conftest import ROOT, count


def example(name: str, dw_url: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_", "PG_"))}
    base.update({"AIRFLOW_CONN_DW": dw_url, "SNDW_LAKE_ROOT": str(tmp_path / "lake"), **(env or {})})
    return subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=tmp_path, env=base,
                          capture_output=True, text=True, timeout=180, check=False)


def pg_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"PG_HOST": parts.hostname or "", "PG_PORT": str(parts.port), "PG_DATABASE": parts.path.lstrip("/"),
            "PG_USERNAME": parts.username or "", "PG_PASSWORD": parts.password or ""}


def test_postgres_examples(dw_url: str, source_db: str, tmp_path: Path) -> None:
    with psycopg.connect(source_db) as src:  # rows dated ahead of now(), as sample data may run
        counts = manufacturing.create(src, rows_per_table=200, start=dt.date.today() + dt.timedelta(days=30))
    done = example("postgres_to_dw.py", dw_url, tmp_path, pg_env(source_db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "success: 200 rows -> raw.refills" in done.stdout
    done = example("incremental_postgres_to_dw.py", dw_url, tmp_path, pg_env(source_db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first run: 200 rows read" in done.stdout and "after 3 updates: 3 rows read" in done.stdout
    with psycopg.connect(dw_url) as dw, psycopg.connect(source_db) as src:
        assert count(dw, "raw.refills") == counts["refills"]
        query = "SELECT id, defects, updated_at, volume_ml FROM {} ORDER BY id"
        assert dw.execute("SELECT id, defects, updated_at FROM raw.bodies_incremental ORDER BY id").fetchall() == \
            src.execute("SELECT id, defects, updated_at FROM bodies ORDER BY id").fetchall()
        assert dw.execute(query.replace("defects, updated_at", "batch_code, ink_color").format("raw.refills")).fetchall() == \
            src.execute(query.replace("defects, updated_at", "batch_code, ink_color").format("refills")).fetchall()
        assert dw.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'raw.refills'::regclass "
                          "AND attname = 'volume_ml'").fetchone() == ("numeric(6,2)",)
        assert dw.execute("SELECT count(*) FROM etl_audit_log WHERE status = 'success'").fetchone() == (3,)


def test_rest_api_example(dw_url: str, tmp_path: Path) -> None:
    done = example("rest_api_to_dw.py", dw_url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 rows -> staging.api_users" in done.stdout
    with psycopg.connect(dw_url) as dw:
        assert count(dw, "staging.api_users") == 10
        # users i have i % 3 tags: 1, 2, 0, 1, 2, 0, 1, 2, 0, 1 -> 10 child rows
        assert dw.execute("SELECT parent__id, parent__index, value FROM staging.api_users__tags "
                          "WHERE parent__id = 2 ORDER BY parent__index").fetchall() == [(2, 0, "t0"), (2, 1, "t1")]
        assert count(dw, "staging.api_users__tags") == sum(i % 3 for i in range(1, 11))
        assert dw.execute("SELECT address__city IS NOT NULL FROM staging.api_users WHERE id = 1").fetchone() == (True,)


def test_make_run_pipeline_on_the_example_connector_without_pg_settings(dw_url: str, tmp_path: Path) -> None:
    """The documented `make run-pipeline CONFIG=examples/postgres_connector.json ...` with no PG_*
    set reads the demo's source database on the warehouse's server, as the examples do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_", "PG_", "MAKE"))}
    env["AIRFLOW_CONN_DW"] = dw_url
    done = subprocess.run(["make", "--no-print-directory", "run-pipeline", "CONFIG=examples/postgres_connector.json",
                           "QUERY=SELECT 1 AS n", "SOURCE=test", "TABLE=dw_test", f"LAKE={tmp_path / 'lake'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reading the demo source sndw_demo_source" in done.stderr
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT n FROM public.dw_test").fetchall() == [(1,)]
        assert dw.execute("SELECT source_name, status, rows_loaded FROM etl_audit_log").fetchall() == [
            ("test", "success", 1)]
    password = urlsplit(dw_url).password
    assert not password or password not in done.stdout + done.stderr
