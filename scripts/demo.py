"""`make demo`: create the sample sources, run every sample DAG with `airflow dags test`, report.

Runs after `. scripts/dev-env` and scripts/airflow-init, so AIRFLOW_HOME, AIRFLOW_CONN_DW,
SNDW_DEMO_DATA and the PostgreSQL metadata DB are set. The sample connections (manufacturing_src,
demo_api) go into that metadata DB (Admin > Connections) from $SNDW_DEMO_DATA/connections.json,
mode 600, made here; the JSON API listens on a fixed port (SNDW_DEMO_API_PORT, default 8790) that
scripts/airflow-up serves again while Airflow runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from sndw.cdc.run import forget_position
from sndw.config import iter_sources
from sndw.demo import files, manufacturing, pagila
from sndw.demo.api import served_by
from sndw.naming import qualified

ROOT = Path(__file__).resolve().parent.parent
# Yesterday (UTC): the runs sit next to the ones the scheduler makes, so the UI's charts stay readable.
DEMO_DATE = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
DEMO_API_PORT = int(os.environ.get("SNDW_DEMO_API_PORT", "8790"))
SOURCE_DB = "sndw_demo_source"
PAGILA_DB = "sndw_demo_pagila"
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
        # The documented week (the README's and docs/' dates) and the last two weeks up to now: the demo
        # date's springs partition has rows, and so do the runs `make up` makes; nothing in the future.
        counts = manufacturing.create(conn)
    first, last = manufacturing.DOCUMENTED_DAYS
    recent = (datetime.now(UTC) - timedelta(days=manufacturing.RECENT_DAYS)).date()
    print(f"- PostgreSQL source {_safe(source_url)}: " + ", ".join(f"{t} {n} rows" for t, n in counts.items())
          + f"; production on {first}..{last} and {recent}..now")
    rows = files.write_inspections(data_dir / "inspections.csv")
    print(f"- CSV file {data_dir / 'inspections.csv'}: {rows} rows")
    return source_url


def api_serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/users", timeout=3) as response:
            return isinstance(json.load(response), list)
    except (OSError, ValueError):
        return False


def start_api(port: int) -> tuple[subprocess.Popen[str] | None, str]:
    """The demo API on ``port``; the one `make up` serves when it already answers there."""
    url = f"http://127.0.0.1:{port}"
    if api_serves(url):
        if not served_by(url, os.environ.get("SNDW_ROOT", str(ROOT))):
            raise SystemExit(f"port {port} serves another checkout's demo API (or another program): "
                             "set SNDW_DEMO_API_PORT to a free port")
        print(f"- JSON API already served on {url} (by make up of this checkout)")
        return None, url
    proc = subprocess.Popen([sys.executable, "-m", "sndw.demo.api", "--port", str(port)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(timeout=10)
        raise SystemExit(f"the demo API could not listen on port {port}: set SNDW_DEMO_API_PORT to a free port")
    print(f"- JSON API on {line} (users, paged todos)")
    return proc, url


def write_connections(data_dir: Path, source_url: str, api_port: int) -> Path:
    """The sample connections as `airflow connections import` reads them; mode 600 (a password)."""
    source = urlsplit(source_url)
    connections = {
        "manufacturing_src": {"conn_type": "postgres", "host": source.hostname, "port": source.port,
                              "login": unquote(source.username or ""), "password": unquote(source.password or ""),
                              "schema": source.path.lstrip("/"), "description": "make demo: sample PostgreSQL source"},
        "demo_api": {"conn_type": "http", "host": "127.0.0.1", "port": api_port, "schema": "http",
                     "description": "make demo: sample JSON API (served by make up)"},
    }
    path = data_dir / "connections.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(connections, out, indent=2)
    os.chmod(path, 0o600)
    (data_dir / "api.port").write_text(f"{api_port}\n")
    return path


def import_connections(path: Path, env: dict[str, str]) -> None:
    result = subprocess.run(["airflow", "connections", "import", "--overwrite", str(path)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"airflow connections import {path} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    stamp = Path(env["AIRFLOW_HOME"]) / ".demo-connections-imported"
    stamp.touch()
    print("- connections manufacturing_src and demo_api in Airflow's metadata DB (Admin > Connections)")


def create_pagila(dw_url: str) -> str | None:
    """Pagila from ../shared/datasets/pagila into a fresh source database; None (and why) when the
    dataset or psql is not here: the pagila sample is then skipped, not failed."""
    reason = pagila.unavailable()
    if reason:
        print(f"- Pagila sample skipped: {reason}")
        return None
    with psycopg.connect(dw_url, autocommit=True) as conn:
        # The CDC sample's slot lives in the Pagila database (a slot keeps its database from being
        # dropped); the position the warehouse stored belongs to it and goes with it.
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                     (PAGILA_DB,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PAGILA_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PAGILA_DB)))
    forget_position(dw_url, _pagila_cdc())
    url = _with_database(dw_url, PAGILA_DB)
    with psycopg.connect(url) as conn:
        counts = pagila.load(url, conn)
    print(f"- Pagila in {_safe(url)}: " + ", ".join(f"{t} {n} rows" for t, n in counts.items()))
    return url


def _pagila_cdc() -> Any:
    from sndw.config import load_source_file

    return load_source_file(ROOT / "dags" / "sources" / "pagila_cdc.yaml")


def run_pagila_cdc(dw_url: str, pagila_url: str, env: dict[str, str]) -> bool:
    """The CDC sample: a run takes the snapshot, the source changes, the next day's run applies the
    changes; then the warehouse must equal the source row for row."""
    ok = run_dag("pagila_cdc", env)
    with psycopg.connect(pagila_url) as conn:
        pagila.cdc_changes(conn)
    print(f"  changed Pagila's rental and payment ({len(pagila.CDC_CHANGES)} statements)")
    ok = run_dag("pagila_cdc", env, (date.fromisoformat(DEMO_DATE) + timedelta(days=1)).isoformat()) and ok
    with psycopg.connect(pagila_url) as source, psycopg.connect(dw_url) as dw:
        compared = pagila.cdc_compare(source, dw, _pagila_cdc().target_schema)
    for table, (at_source, in_dw, differ) in compared.items():
        print(f"  pagila_cdc.{table}: {at_source} rows at the source, {in_dw} in the warehouse, {differ} differ")
    return ok and all(differ == 0 for _, _, differ in compared.values())


def import_pagila_connection(data_dir: Path, url: str, env: dict[str, str]) -> None:
    """The connection pagila_src in Airflow's metadata DB, so the DAG also runs from the UI."""
    parts = urlsplit(url)
    path = data_dir / "pagila-connection.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pagila_src": {"conn_type": "postgres", "host": parts.hostname, "port": parts.port,
                                  "login": unquote(parts.username or ""), "password": unquote(parts.password or ""),
                                  "schema": PAGILA_DB, "description": "make demo: Pagila sample source"}}, out)
    result = subprocess.run(["airflow", "connections", "import", "--overwrite", str(path)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"airflow connections import {path} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    print("- connection pagila_src in Airflow's metadata DB")


def run_dag(dag_id: str, env: dict[str, str], day: str = DEMO_DATE) -> bool:
    started = time.monotonic()
    log_path = Path(env["AIRFLOW_HOME"]) / f"demo-{dag_id}{'' if day == DEMO_DATE else '-' + day}.log"
    with open(log_path, "w") as log:
        result = subprocess.run(["airflow", "dags", "test", dag_id, day], env=env, stdout=log,
                                stderr=subprocess.STDOUT, check=False)
    status = "ok" if result.returncode == 0 else f"FAILED (log: {log_path})"
    print(f"  airflow dags test {dag_id} {day}: {status} in {time.monotonic() - started:.0f}s")
    return result.returncode == 0


def report(dw_url: str) -> None:
    targets = []
    for _path, source in iter_sources(ROOT / "dags" / "sources"):
        if isinstance(source, Exception):
            continue
        targets += [(source.target_schema, t.target) for t in source.tables]
    targets += [("staging", "api_users"), ("analytics", "film_dim")]
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
    pagila_url = create_pagila(dw_url)
    api, _api_url = start_api(DEMO_API_PORT)
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in ("AIRFLOW_CONN_MANUFACTURING_SRC", "AIRFLOW_CONN_DEMO_API")}
        (data_dir / "env").unlink(missing_ok=True)  # older demos kept the connections there
        import_connections(write_connections(data_dir, source_url, DEMO_API_PORT), env)
        print(f"\nRunning the sample DAGs for {DEMO_DATE}:")
        ok = all([run_dag(dag_id, env) for dag_id in DEMO_DAGS])
        if pagila_url:  # raw Pagila tables, then the film_dim SQL step
            import_pagila_connection(data_dir, pagila_url, env)
            ok = run_dag("pagila", env) and ok
            ok = run_pagila_cdc(dw_url, pagila_url, env) and ok  # change data capture of rental and payment
    finally:
        if api is not None:
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
