"""Partitioned Assets under a real `airflow standalone` (scheduler, API server, DAG processor) on
PostgreSQL metadata: each load emits its table's event keyed by the partition date, and the sample
consumer (dags/manufacturing_daily_summary.py) runs once per loaded date, with that date; everything
read back through the REST API."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from sndw.demo import manufacturing

from tests.conftest import ROOT, TEST_AIRFLOW_HOME, TEST_DAGS, TEST_SOURCES, count, metadata_db
from tests.test_airflow_postgres import Airflow, _serialized, airflow_stack, wait_for

pytestmark = pytest.mark.slow

SUMMARY_DAG = "manufacturing_daily_summary"
DATES = [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (3, 4, 5)]
TABLES = ("refills", "bodies", "springs")


def mfg_config(name: str, conn_id: str) -> dict[str, Any]:
    """The sample manufacturing source (dags/sources/manufacturing.yaml) under another DAG id."""
    return {
        "name": name, "kind": "sql", "conn_id": conn_id, "target_schema": "raw", "start_date": "2024-01-01",
        "retries": 0, "tables": [
            {"name": "refills", "table": "public.refills", "write_mode": "replace"},
            {"name": "bodies", "query": "SELECT * FROM bodies", "write_mode": "merge", "primary_key": ["id"]},
            {"name": "springs", "write_mode": "partition", "query":
             "SELECT * FROM springs WHERE produced_at >= DATE '{{ partition_date }}' "
             "AND produced_at < DATE '{{ partition_date }}' + 1"},
        ],
    }


@pytest.fixture
def rest_source(airflow_db: Path, source_db: str, monkeypatch: pytest.MonkeyPatch, configs: list[Path]) -> str:
    """The manufacturing sample (ended 2024-01-05, so unpausing it schedules nothing) and the consumer
    DAG in the tests' DAG folder, before Airflow starts (it reads its connections from the environment)."""
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=300)
    monkeypatch.setenv("AIRFLOW_CONN_T_REST_SRC", source_db)
    name = f"t_rest_mfg_{uuid.uuid4().hex[:6]}"  # a backfill interrupted earlier stays active for its DAG
    path = TEST_SOURCES / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**mfg_config(name, "t_rest_src"), "schedule": "@daily",
                                    "catchup": False, "end_date": "2024-01-05"}))
    configs.append(path)
    summary = TEST_DAGS / f"{SUMMARY_DAG}.py"
    shutil.copy(ROOT / "dags" / f"{SUMMARY_DAG}.py", summary)
    configs.append(summary)
    with metadata_db() as db:  # partition runs left pending by other tests' loads or an interrupted session
        db.execute("DELETE FROM asset_partition_dag_run WHERE target_dag_id = %s AND created_dag_run_id IS NULL",
                   (SUMMARY_DAG,))
    return name


@pytest.fixture
def serial_standalone(airflow_db: Path, dw_url: str, tmp_path: Path) -> Iterator[Airflow]:
    """`airflow standalone` running one task at a time. Airflow 3.3 races when the asset events of
    one partition key arrive within milliseconds (it locks the producing asset, not the consumer's
    key): two pending consumer runs get part of the assets each and neither runs. Seen here when
    the 3 loads of a date finished 9 ms apart; README "Assets and lineage" says more."""
    with airflow_stack(dw_url, tmp_path, AIRFLOW__CORE__PARALLELISM="1") as airflow:
        yield airflow


def test_a_backfill_of_three_dates_runs_the_summary_three_times_read_through_rest(
        rest_source: str, serial_standalone: Airflow, dw_url: str) -> None:
    standalone = serial_standalone
    dag_id = rest_source
    started = dt.datetime.now(dt.UTC)
    for name in (dag_id, SUMMARY_DAG):
        wait_for(f"{name} to be parsed", lambda n=name: _serialized(n), 150)
    try:
        for name in (dag_id, SUMMARY_DAG):
            standalone.call("PATCH", f"/api/v2/dags/{name}", {"is_paused": False})
        check_backfill_and_summary(standalone, dag_id, dw_url, started)
    finally:  # other tests' loads of raw.* must not queue summary runs
        standalone.call("PATCH", f"/api/v2/dags/{SUMMARY_DAG}", {"is_paused": True})


def check_backfill_and_summary(airflow: Airflow, dag_id: str, dw_url: str, started: dt.datetime) -> None:
    keys = [d.date().isoformat() for d in DATES]
    airflow.call("POST", "/api/v2/backfills", {
        "dag_id": dag_id, "from_date": f"{keys[0]}T00:00:00Z", "to_date": f"{keys[-1]}T00:00:00Z",
        "max_active_runs": 1, "reprocess_behavior": "completed"})

    def new(items: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
        return [i for i in items if dt.datetime.fromisoformat(i[field]) >= started]

    def summary_runs() -> list[dict[str, Any]] | None:
        runs = new(airflow.call("GET", f"/api/v2/dags/{SUMMARY_DAG}/dagRuns?limit=100")["dag_runs"], "queued_at")
        loads = airflow.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
        failed = [r for r in runs + loads if r["state"] == "failed"]
        if failed:  # say which task failed and why, instead of waiting out the timeout
            raise AssertionError(f"failed runs: {failed}\n{failed_tasks(dag_id)}")
        return runs if len([r for r in runs if r["state"] == "success"]) >= 3 else None

    runs = wait_for("3 successful summary runs", summary_runs, 480)  # a busy 2-core machine: minutes
    # one consumer run per loaded date, keyed by that date
    assert sorted((r["partition_key"], r["run_type"]) for r in runs) == [(k, "asset_triggered") for k in keys]

    events = new(airflow.call("GET", f"/api/v2/assets/events?source_dag_id={dag_id}&limit=100")["asset_events"],
                 "timestamp")
    # one event per table and date, keyed by the run's partition date
    assert sorted((e["uri"], e["partition_key"]) for e in events) == sorted(
        (f"x-sndw://dw/raw.{t}", k) for t in TABLES for k in keys)
    url = urlsplit(dw_url)
    with psycopg.connect(dw_url) as dw:
        for e in events:
            table, extra = e["uri"].rsplit(".", 1)[1], e["extra"]
            assert extra["table"] == f"raw.{table}" and extra["partition"] == e["partition_key"]
            assert len(extra["manifest_id"]) == 32 and extra["source"] == dag_id
            if table == "springs":  # a partition table: the event's rows are that date's rows
                assert extra["rows"] == dw.execute("SELECT count(*) FROM raw.springs WHERE _partition_date = %s",
                                                   (e["partition_key"],)).fetchone()[0]
            else:
                assert extra["rows"] == 300 == count(dw, f"raw.{table}")
            assert extra["openlineage"] == {  # where the table is, in OpenLineage's form; no credentials
                "namespace": f"postgres://{url.hostname}:{url.port}", "name": f"{url.path.lstrip('/')}.raw.{table}",
                "uri": f"postgres://{url.hostname}:{url.port}{url.path}/raw/{table}"}
            assert "@" not in str(extra) and (not url.password or url.password not in str(extra))
        springs = {e["partition_key"]: e["extra"]["rows"] for e in events if e["uri"].endswith("springs")}
        summary = dw.execute("SELECT day::text, springs, refills FROM analytics.daily_production_summary "
                             "WHERE day = ANY(%s::date[])", (keys,)).fetchall()
        refills = dict(dw.execute("SELECT (produced_at AT TIME ZONE 'UTC')::date::text, count(*) FROM raw.refills "
                                  "GROUP BY 1").fetchall())
    # each run summarized its own date: its SQL used the partition key
    assert sorted(summary) == [(k, springs[k], refills[k]) for k in keys] and all(springs.values())
    summarized = new(airflow.call("GET", f"/api/v2/assets/events?source_dag_id={SUMMARY_DAG}")["asset_events"],
                     "timestamp")
    assert sorted(e["partition_key"] for e in summarized) == keys  # the summary's own asset, same partitions


def failed_tasks(dag_id: str) -> str:
    """The failed tasks of ``dag_id`` with the end of each one's log."""
    lines = []
    for log in sorted((TEST_AIRFLOW_HOME / "logs" / f"dag_id={dag_id}").glob("*/*/attempt=*.log")):
        text = log.read_text(errors="replace")
        if '"level":"error"' in text:
            lines.append(f"{log.relative_to(TEST_AIRFLOW_HOME)}:\n{text[-1500:]}")
    return "\n".join(lines)


def test_the_summary_refuses_a_partition_key_that_is_not_a_date() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("summary_dag", ROOT / "dags" / f"{SUMMARY_DAG}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.partition_day("2024-01-03") == dt.date(2024, 1, 3)
    # a run triggered by hand has no key: the day it was due to run
    due = dt.datetime(2024, 1, 6, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert module.partition_day(None, due) == dt.date(2024, 1, 7)
    for key in ("eu", None, "2024-13-01"):
        with pytest.raises(ValueError, match=f"partition key must be a date.*got {key!r}"):
            module.partition_day(key)
