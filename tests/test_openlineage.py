"""OpenLineage through the provider's operator hooks: real dag.test() runs of a SQL, an HTTP and a
file source in a fresh Python process with the provider's file transport, then the events checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from sndw.demo import files as demo_files
from sndw.demo import manufacturing
from sndw.demo.api import DemoApi

from tests.conftest import TEST_SOURCES

pytestmark = pytest.mark.slow

# A fresh process: the provider registers its listener when plugins load, if a transport is configured.
RUNNER = """
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sndw.config import parse_source
from sndw_airflow.factory import build_dag

for path in sys.argv[1:]:
    dag = build_dag(parse_source(yaml.safe_load(Path(path).read_text()), path), path)
    dag_run = dag.test(logical_date=datetime(2024, 1, 2, tzinfo=UTC))
    print(dag.dag_id, dag_run.state)
"""


def by_job(events: list[dict[str, Any]], dag_id: str, task_id: str, event_type: str) -> dict[str, Any]:
    found = [e for e in events if e["job"]["name"] == f"{dag_id}.{task_id}" and e["eventType"] == event_type]
    assert len(found) == 1, [(e["job"]["name"], e["eventType"]) for e in events]
    return found[0]


def test_both_operators_report_source_lake_and_warehouse(env: dict[str, Any], source_db: str,
                                                        configs: list[Path]) -> None:
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=120)
    files = env["tmp"] / "files"
    demo_files.write_inspections(files / "inspections.csv", rows=40)
    sources = {
        "t_ol_sql": {"kind": "sql", "conn_id": "t_ol_src", "target_schema": "raw", "tables": [
            {"name": "refills", "table": "public.refills"},
            {"name": "bodies", "query": "SELECT b.* FROM bodies b WHERE b.defects >= 0"}]},
        "t_ol_api": {"kind": "http", "conn_id": "t_ol_api", "tables": [{"name": "users", "endpoint": "/users"}]},
        "t_ol_csv": {"kind": "file", "base_path": str(files), "tables": [{"name": "inspections", "path": "*.csv"}]},
    }
    paths = []
    for name, config in sources.items():
        path = TEST_SOURCES / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "start_date": "2024-01-01", "retries": 0, **config}))
        configs.append(path)
        paths.append(str(path))
    events_file = env["tmp"] / "openlineage.jsonl"
    with DemoApi() as api:
        proc_env = {**os.environ, "AIRFLOW_CONN_T_OL_SRC": source_db, "AIRFLOW_CONN_T_OL_API": api.url,
                    "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                        {"type": "file", "log_file_path": str(events_file), "append": True}),
                    "AIRFLOW__OPENLINEAGE__NAMESPACE": "sndw-test"}
        result = subprocess.run([sys.executable, "-c", RUNNER, *paths], env=proc_env, capture_output=True,
                                text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    finished = sorted(line for line in result.stdout.splitlines() if line.startswith("t_ol_"))
    assert finished == ["t_ol_api success", "t_ol_csv success", "t_ol_sql success"], result.stdout[-4000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    lake = env["lake"].absolute()
    src, dw = urlsplit(source_db), urlsplit(env["dw_url"])
    src_ns, dw_ns = f"postgres://{src.hostname}:{src.port}", f"postgres://{dw.hostname}:{dw.port}"
    src_db, dw_db = src.path.lstrip("/"), dw.path.lstrip("/")

    # SQL source: a table, and a query whose tables the SQL parser finds; the query as the job's SQL facet
    start = by_job(events, "t_ol_sql", "extract_refills", "START")
    assert [(d["namespace"], d["name"]) for d in start["inputs"]] == [(src_ns, f"{src_db}.public.refills")]
    complete = by_job(events, "t_ol_sql", "extract_bodies", "COMPLETE")
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [(src_ns, f"{src_db}.public.bodies")]
    assert complete["job"]["facets"]["sql"]["query"] == "SELECT b.* FROM bodies b WHERE b.defects >= 0"
    (out,) = complete["outputs"]  # the lake partition, with its columns, rows and bytes
    assert (out["namespace"], out["name"]) == ("file", str(lake / "sql" / "t_ol_sql" / "bodies" / "2024-01-02"))
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 120
    assert out["outputFacets"]["outputStatistics"]["size"] > 0
    assert {f["name"] for f in out["facets"]["schema"]["fields"]} >= {"id", "defects", "updated_at"}

    # load: the lake partition -> the warehouse table, with its warehouse columns and the rows loaded
    load = by_job(events, "t_ol_sql", "load_bodies", "COMPLETE")
    assert [(d["namespace"], d["name"]) for d in load["inputs"]] == [(out["namespace"], out["name"])]
    (table,) = load["outputs"]
    assert (table["namespace"], table["name"]) == (dw_ns, f"{dw_db}.raw.bodies")
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == 120
    types = {f["name"]: f["type"] for f in table["facets"]["schema"]["fields"]}
    assert types["id"] == "bigint" and types["updated_at"] == "timestamp with time zone"
    load_start = by_job(events, "t_ol_sql", "load_bodies", "START")
    assert load_start["outputs"][0]["name"] == f"{dw_db}.raw.bodies"

    # HTTP: the connection's scheme, host and port as namespace, the endpoint as name
    api_url = urlsplit(api.url)
    http = by_job(events, "t_ol_api", "extract_users", "COMPLETE")
    assert [(d["namespace"], d["name"]) for d in http["inputs"]] == [
        (f"http://{api_url.hostname}:{api_url.port}", "/users")]
    users = by_job(events, "t_ol_api", "load_users", "COMPLETE")
    assert users["outputs"][0]["name"] == f"{dw_db}.public.users"
    assert users["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 10

    # file: the absolute path (glob) it reads
    csv = by_job(events, "t_ol_csv", "extract_inspections", "COMPLETE")
    assert [(d["namespace"], d["name"]) for d in csv["inputs"]] == [("file", str(files.absolute() / "*.csv"))]
    assert csv["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 40

    text = events_file.read_text()
    for secret in (src.password, dw.password):
        assert not secret or secret not in text
