"""`make demo`: create the sample sources, run every sample DAG with `airflow dags test`, report.

Runs after `. scripts/dev-env`, so AIRFLOW_HOME, AIRFLOW_CONN_DW and SNDW_DEMO_DATA are set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from sndw.config import iter_sources
from sndw.demo import files, manufacturing
from sndw.naming import qualified

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATE = "2024-01-02"
SOURCE_DB = "sndw_demo_source"
DEMO_DAGS = ["manufacturing", "demo_api", "demo_csv", "example_manual_pipeline"]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}"


def create_sources(dw_url: str, data_dir: Path) -> str:
    with psycopg.connect(dw_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SOURCE_DB,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE_DB)))
    source_url = _with_database(dw_url, SOURCE_DB)
    with psycopg.connect(source_url) as conn:
        counts = manufacturing.create(conn)
    print(f"- PostgreSQL source {_safe(source_url)}: " + ", ".join(f"{t} {n} rows" for t, n in counts.items()))
    rows = files.write_inspections(data_dir / "inspections.csv")
    print(f"- CSV file {data_dir / 'inspections.csv'}: {rows} rows")
    return source_url


def start_api() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "sndw.demo.api", "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    print(f"- JSON API on {url} (users, paged todos)")
    return proc, url


def run_dag(dag_id: str, env: dict[str, str]) -> bool:
    started = time.monotonic()
    log_path = Path(env["AIRFLOW_HOME"]) / f"demo-{dag_id}.log"
    with open(log_path, "w") as log:
        result = subprocess.run(["airflow", "dags", "test", dag_id, DEMO_DATE], env=env, stdout=log,
                                stderr=subprocess.STDOUT, check=False)
    status = "ok" if result.returncode == 0 else f"FAILED (log: {log_path})"
    print(f"  airflow dags test {dag_id} {DEMO_DATE}: {status} in {time.monotonic() - started:.0f}s")
    return result.returncode == 0


def report(dw_url: str) -> None:
    targets = []
    for _path, source in iter_sources(ROOT / "dags" / "sources"):
        if isinstance(source, Exception):
            continue
        targets += [(source.target_schema, t.target) for t in source.tables]
    targets.append(("staging", "api_users"))
    with psycopg.connect(dw_url) as conn:
        print("\nWarehouse tables:")
        for schema, table in targets:
            row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
            if not row or row[0] is None:
                print(f"  {qualified(schema, table):32s} (missing)")
                continue
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table))).fetchone()
            print(f"  {qualified(schema, table):32s} {count[0] if count else 0:>7} rows")
        print("\nLatest audit rows (etl_audit_log):")
        rows = conn.execute(
            """SELECT id, pipeline_name, step, target_table, status, rows_extracted, rows_loaded,
                      partition_date, round(extract(epoch FROM finished_at - started_at)::numeric, 1)
               FROM etl_audit_log ORDER BY id DESC LIMIT 16""").fetchall()
        print(f"  {'id':>4} {'pipeline':24s} {'step':7s} {'target':34s} {'status':8s} {'extracted':>9} {'loaded':>7} partition   secs")
        for r in reversed(rows):
            print(f"  {r[0]:>4} {r[1]:24s} {r[2] or '':7s} {r[3]:34s} {r[4]:8s} {r[5] if r[5] is not None else '':>9} "
                  f"{r[6] if r[6] is not None else '':>7} {r[7]} {r[8]}")


def main() -> int:
    dw_url = os.environ["AIRFLOW_CONN_DW"]
    data_dir = Path(os.environ["SNDW_DEMO_DATA"])
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"Warehouse: {_safe(dw_url)}   lake: {os.environ['SNDW_LAKE_ROOT']}")
    print("Creating the sample sources:")
    source_url = create_sources(dw_url, data_dir)
    api, api_url = start_api()
    try:
        env = dict(os.environ)
        env["AIRFLOW_CONN_MANUFACTURING_SRC"] = source_url
        env["AIRFLOW_CONN_DEMO_API"] = api_url
        (data_dir / "env").write_text(f"AIRFLOW_CONN_MANUFACTURING_SRC='{source_url}'\n")
        os.chmod(data_dir / "env", 0o600)
        print(f"\nRunning the sample DAGs for {DEMO_DATE}:")
        ok = all([run_dag(dag_id, env) for dag_id in DEMO_DAGS])
    finally:
        api.terminate()
        api.wait(timeout=10)
    report(dw_url)
    if not ok:
        print("\nSome sample DAGs failed: see the logs named above.", file=sys.stderr)
        return 1
    print("\nDone. Open the UI with `make up`; run the tests with `make test`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
