"""Scale-out on one machine: `make up EXECUTOR=celery` (scripts/airflow-up with SNDW_EXECUTOR=celery)
runs the scheduler, API server, DAG processor and two Celery workers on Redis, with the lake on the
local S3 server. A 4-table source runs on both workers and the warehouse equals a local run of the
same source row for row; a worker killed mid-extract has its task retried on the other worker, and
the warehouse still holds exactly one copy."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql
from sndw import storage
from sndw.demo import manufacturing
from sndw.lake import partition_files

from tests.conftest import (
    ROOT,
    TEMPLATE_DB,
    TEST_AIRFLOW_HOME,
    TEST_DB_PREFIX,
    TEST_S3_DIR,
    TEST_SOURCES,
    _s3fs,
    run,
    states,
    with_database,
)
from tests.test_airflow_postgres import Airflow, _serialized, airflow_stack, free_port, wait_for
from tests.test_assets import mfg_config

pytestmark = pytest.mark.slow

DAY = dt.date(2024, 1, 3)
LOCAL_LINEAGE = {"_loaded_at", "_file_id", "_run_id"}  # differ between any two runs by design
SUFFIX = uuid.uuid4().hex[:6]
FOUR = f"cel4_{SUFFIX}"
SLOW = f"celkill_{SUFFIX}"
SLOW_ROWS = 1000


def four_tables(name: str, schema: str) -> dict[str, Any]:
    """The sample manufacturing source (replace, merge, partition tables) and an append table,
    run only when triggered (unpausing schedules nothing)."""
    config = mfg_config(name, "t_cel_src")
    config["tables"].append({"name": "readings", "write_mode": "append", "query": "SELECT * FROM readings"})
    return {**config, "target_schema": schema, "schedule": None}


def slow_table(name: str) -> dict[str, Any]:
    """One table whose query sleeps 15 s before its rows come: time to kill the worker running it."""
    return {
        "name": name, "kind": "sql", "conn_id": "t_cel_src", "target_schema": name, "start_date": "2024-01-01", "schedule": None,
        "retries": 1, "retry_delay_seconds": 1, "tables": [{
            "name": "slow", "write_mode": "replace",
            "query": f"WITH pause AS (SELECT pg_sleep(15)) SELECT g AS id, md5(g::text) AS h "  # noqa: S608
                     f"FROM generate_series(1, {SLOW_ROWS}) AS g, pause"}],
    }


@pytest.fixture(scope="module")
def databases(pg_url: str) -> Iterator[tuple[str, str]]:
    """A warehouse and a source database for the module (the Celery stack outlives one test)."""
    names = [f"{TEST_DB_PREFIX}cel_{SUFFIX}", f"{TEST_DB_PREFIX}celsrc_{SUFFIX}"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(names[0]),
                                                                     sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[1])))
    dw_url, src_url = (with_database(pg_url, n) for n in names)
    with psycopg.connect(src_url) as src:
        manufacturing.create(src, rows_per_table=300)
        src.execute("CREATE TABLE readings AS SELECT g AS id, g * 0.5 AS value, "
                    "timestamptz '2024-01-03 00:00Z' + g * interval '1 minute' AS at, "
                    "ARRAY[g, g + 1] AS pair FROM generate_series(1, 500) AS g")
    yield dw_url, src_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def celery(airflow_db: Path, databases: tuple[str, str], s3_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Airflow, str]]:
    dw_url, src_url = databases
    written = []
    for config in (four_tables(FOUR, "cel"), slow_table(SLOW)):
        path = TEST_SOURCES / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        written.append(path)
    lake = f"s3://{s3_env['SNDW_S3_BUCKET']}/celery-{SUFFIX}"
    storage.use_filesystem("s3", _s3fs(s3_env))  # this process reads the lake to check it
    try:
        with airflow_stack(dw_url, tmp_path_factory.mktemp("celery"), SNDW_EXECUTOR="celery",
                           SNDW_LAKE_ROOT=lake, S3_LOCAL_DIR=str(TEST_S3_DIR),
                           REDIS_LOCAL_DIR=os.environ.get("SNDW_TEST_REDIS_DIR", str(ROOT / ".local" / "redis-test")),
                           AIRFLOW_CONN_T_CEL_SRC=src_url,
                           # the task log server's port: a free one, not 8793 of another checkout's stack
                           AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
                           # a killed worker's task is noticed after 20 s without a heartbeat
                           AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
                           AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5") as airflow:
            yield airflow, lake
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def trigger(airflow: Airflow, dag_id: str) -> str:
    wait_for(f"{dag_id} to be parsed", lambda: _serialized(dag_id), 150)
    airflow.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run = airflow.call("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                       {"logical_date": f"{DAY.isoformat()}T00:00:00Z"})
    return str(run["dag_run_id"])


def task_instances(airflow: Airflow, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return list(airflow.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"])


def run_state(airflow: Airflow, dag_id: str, run_id: str) -> str | None:
    state = airflow.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
    if state == "failed":
        raise AssertionError(f"{dag_id} {run_id} failed: {task_instances(airflow, dag_id, run_id)}")
    return state if state == "success" else None


def user_columns(dw: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = dw.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                      "AND table_name = %s ORDER BY ordinal_position", (schema, table)).fetchall()
    return [r[0] for r in rows if r[0] not in LOCAL_LINEAGE]


def listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* has them) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def test_one_task_log_server_on_localhost_and_no_worker_fails_to_start_one(celery: tuple[Airflow, str]) -> None:
    """Two workers on one host each started Airflow's log server on port 8793 of every interface:
    the second failed with "address already in use". One server on 127.0.0.1 serves the log folder."""
    airflow, _ = celery
    home = Path(airflow.env["AIRFLOW_HOME"])
    for worker in (1, 2):
        log = (home / f"celery-worker-{worker}.log").read_text(errors="replace")
        assert "address already in use" not in log.lower(), log[-2000:]
    port = int(airflow.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"])
    wait_for("the task log server to listen", lambda: listening(port), 120)
    assert listening(port) == ["0100007F"], listening(port)  # 127.0.0.1 only


def test_four_tables_run_on_both_workers_and_equal_a_local_run(
        celery: tuple[Airflow, str], databases: tuple[str, str], configs: list[Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    airflow, lake = celery
    dw_url, src_url = databases
    run_id = trigger(airflow, FOUR)
    wait_for(f"{FOUR} to succeed", lambda: run_state(airflow, FOUR, run_id), 300)
    tis = task_instances(airflow, FOUR, run_id)
    assert {t["task_id"] for t in tis} == {f"{step}_{t}" for step in ("extract", "load")
                                           for t in ("refills", "bodies", "springs", "readings")}
    hosts = {t["hostname"].split("@")[0] for t in tis}
    assert hosts == {"worker-1", "worker-2"}, [(t["task_id"], t["hostname"]) for t in tis]
    # the lake is on the S3 server: each table's partition published there
    for table in ("refills", "bodies", "springs", "readings"):
        paths = partition_files(lake, "sql", FOUR, table, DAY)
        assert paths and all(p.startswith(f"{lake}/sql/{FOUR}/{table}/{DAY}/") for p in paths)

    # The same source run locally by dag.test() (tasks in this process), with a local lake, into
    # another schema.
    monkeypatch.setenv("AIRFLOW_CONN_DW", dw_url)
    monkeypatch.setenv("AIRFLOW_CONN_T_CEL_SRC", src_url)
    monkeypatch.setenv("SNDW_LAKE_ROOT", str(tmp_path / "lake"))
    local = run(four_tables(f"cel4_local_{SUFFIX}", "cel_local"), configs,
                logical_date=dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=dt.UTC))
    assert set(states(local).values()) == {"success"}, states(local)
    with psycopg.connect(dw_url) as dw:
        for table in ("refills", "bodies", "springs", "readings"):
            columns = user_columns(dw, "cel", table)
            assert columns == user_columns(dw, "cel_local", table)
            select = sql.SQL("SELECT {} FROM {}.{}")
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            a = sql.Composed([select.format(cols, sql.Identifier("cel"), sql.Identifier(table))])
            b = sql.Composed([select.format(cols, sql.Identifier("cel_local"), sql.Identifier(table))])
            # row for row, duplicates included: EXCEPT ALL both ways, and the same count
            assert dw.execute(sql.SQL("({}) EXCEPT ALL ({})").format(a, b)).fetchall() == [], table
            assert dw.execute(sql.SQL("({}) EXCEPT ALL ({})").format(b, a)).fetchall() == [], table
            n = dw.execute(sql.SQL("SELECT count(*) FROM ({}) AS x").format(a)).fetchone()
            assert n is not None and n[0] > 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def test_a_worker_killed_mid_extract_is_retried_on_the_other_and_loads_once(
        celery: tuple[Airflow, str], databases: tuple[str, str]) -> None:
    airflow, lake = celery
    dw_url, _ = databases
    run_id = trigger(airflow, SLOW)

    def running_extract() -> dict[str, Any] | None:
        for ti in task_instances(airflow, SLOW, run_id):
            if ti["task_id"] == "extract_slow" and ti["state"] == "running" and ti["hostname"]:
                return ti
        return None

    first = wait_for("the extract to run on a worker", running_extract, 180)
    worker = first["hostname"].split("@")[0]
    time.sleep(3)  # inside the 15 s query: mid-extract
    pid = int((TEST_AIRFLOW_HOME / f"celery-{worker}.pid").read_text())
    for process in descendants(pid):  # the worker, its pool and the task it runs, like a lost machine
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(f"{SLOW} to succeed after the retry", lambda: run_state(airflow, SLOW, run_id), 300)
    extract = next(t for t in task_instances(airflow, SLOW, run_id) if t["task_id"] == "extract_slow")
    other = {"worker-1": "worker-2", "worker-2": "worker-1"}[worker]
    assert extract["try_number"] == 2 and extract["hostname"].split("@")[0] == other, extract
    with psycopg.connect(dw_url) as dw:
        rows = dw.execute(sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}.slow").format(
            sql.Identifier(SLOW))).fetchone()
    assert rows == (SLOW_ROWS, SLOW_ROWS)  # exactly one copy
    assert len(partition_files(lake, "sql", SLOW, "slow", DAY)) >= 1
