"""A real `airflow standalone` (scripts/airflow-up) on PostgreSQL metadata: backfills back to back
and two DAGs at once, with no lock error and every date loaded once per backfill.

The issue this guards against: on SQLite metadata, `airflow backfill create` failed with
``database is locked`` while the scheduler, API server and DAG processor were up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from tests.conftest import AIRFLOW_METADATA_URL, ROOT, TEST_AIRFLOW_HOME, TEST_SOURCES, metadata_db

pytestmark = pytest.mark.slow

DATES = [dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]
ROWS = 5
LOCK_ERRORS = ("database is locked", "deadlock detected", "could not obtain lock", "AlreadyRunningBackfill")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Airflow:
    """`airflow standalone` started by scripts/airflow-up in the tests' AIRFLOW_HOME; REST helpers."""

    def __init__(self, env: dict[str, str], port: int, demo_api_port: int) -> None:
        self.env = env
        self.url = f"http://localhost:{port}"
        self.demo_api = f"http://127.0.0.1:{demo_api_port}"
        self.token = ""

    def login(self) -> None:
        passwords = TEST_AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        body = self.call("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)
        self.token = body["access_token"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if auth else {})})
        for attempt in range(3 if method == "GET" else 1):  # a busy 2-core machine: the API may lag
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.load(response)
            except TimeoutError:
                if attempt == 2 or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env, capture_output=True,
                              text=True, timeout=180, check=False)


def demo_script() -> Any:
    spec = importlib.util.spec_from_file_location("sndw_demo_script", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def airflow_stack(dw_url: str, tmp_path: Path, **extra_env: str) -> Iterator[Airflow]:
    """scripts/airflow-up in the tests' AIRFLOW_HOME on free ports, stopped by scripts/airflow-down
    afterwards; ``extra_env`` on top (``SNDW_EXECUTOR=celery`` for the Celery stack)."""
    port = free_port()
    env = {**os.environ,
           "SNDW_ROOT": str(ROOT),  # airflow-up then leaves the environment as it is (no .env)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "AIRFLOW_CONN_DW": dw_url, "SNDW_LAKE_ROOT": str(tmp_path / "lake"),
           "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": "127.0.0.1",
           "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
           "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
           "AIRFLOW_UP_TIMEOUT": "240", "SNDW_DEMO_DATA": str(tmp_path / "demo"),
           "PYTHONWARNINGS": "ignore", **extra_env}
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{port}/execution/"
    # What `make demo` leaves behind: the sample connections imported into the metadata DB, and the
    # demo API's port, which airflow-up serves while Airflow runs.
    demo_api_port = free_port()
    (tmp_path / "demo").mkdir()
    demo = demo_script()
    demo.import_connections(demo.write_connections(tmp_path / "demo", "postgresql://reader:s3cret@127.0.0.1:5/src",
                                                   demo_api_port), env)
    airflow = Airflow(env, port, demo_api_port)
    try:
        # As `make up` and `make demo` do: scripts/airflow-init first (the dw connection into the metadata DB).
        init = subprocess.run([str(ROOT / "scripts" / "airflow-init")], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert init.returncode == 0, f"airflow-init failed:\n{init.stdout[-3000:]}\n{init.stderr[-3000:]}"
        up = subprocess.run([str(ROOT / "scripts" / "airflow-up")], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
        assert up.returncode == 0, f"airflow-up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        airflow.login()
        yield airflow
    finally:
        subprocess.run([str(ROOT / "scripts" / "airflow-down")], env=env, capture_output=True, timeout=120,
                       check=False)
        pid_file = TEST_AIRFLOW_HOME / "standalone.pid"
        assert not pid_file.exists(), "airflow-down left standalone running"
        assert not answers(f"{airflow.demo_api}/users"), "airflow-down left the demo API running"


@pytest.fixture
def standalone(airflow_db: Path, dw_url: str, tmp_path: Path) -> Iterator[Airflow]:
    with airflow_stack(dw_url, tmp_path) as airflow:
        yield airflow


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_source(name: str, data: Path) -> None:
    (TEST_SOURCES / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "kind": "file", "base_path": str(data), "schedule": "@daily", "start_date": "2024-03-01",
        "catchup": False, "max_active_runs": 3, "retries": 0, "target_schema": name,
        "tables": [{"name": "events", "path": "events.csv", "write_mode": "partition"}],
    }))


def backfill_done(dag_id: str, backfill_id: int) -> bool:
    with metadata_db() as db:
        row = db.execute("SELECT completed_at FROM backfill WHERE id = %s", (backfill_id,)).fetchone()
        running = db.execute("SELECT count(*) FROM dag_run WHERE dag_id = %s AND backfill_id = %s "
                             "AND state NOT IN ('success', 'failed')", (dag_id, backfill_id)).fetchone()
    return bool(row and row[0] is not None and running and running[0] == 0)


def latest_backfill(dag_id: str) -> int | None:
    with metadata_db() as db:
        row = db.execute("SELECT max(id) FROM backfill WHERE dag_id = %s", (dag_id,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def test_backfills_back_to_back_and_two_dags_at_once_on_postgres_metadata(
        standalone: Airflow, dw_url: str, tmp_path: Path) -> None:
    assert AIRFLOW_METADATA_URL.startswith("postgresql+psycopg://")
    # The demo's connections are on the Connections page, and the API its demo_api names is served.
    connections = standalone.call("GET", "/api/v2/connections?limit=100")["connections"]
    by_id = {c["connection_id"]: c for c in connections}
    assert by_id["manufacturing_src"]["conn_type"] == "postgres" and by_id["manufacturing_src"]["login"] == "reader"
    assert by_id["demo_api"]["conn_type"] == "http"
    assert f"http://{by_id['demo_api']['host']}:{by_id['demo_api']['port']}" == standalone.demo_api
    assert answers(f"{standalone.demo_api}/users")
    assert (Path(standalone.env["SNDW_DEMO_DATA"]) / "connections.json").stat().st_mode & 0o777 == 0o600
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.csv").write_text("id,kind\n" + "".join(f"{i},k{i % 2}\n" for i in range(ROWS)))
    suffix = uuid.uuid4().hex[:6]
    dag_a, dag_b = f"pgbf_a_{suffix}", f"pgbf_b_{suffix}"
    try:
        for name in (dag_a, dag_b):
            write_source(name, data)
        for dag_id in (dag_a, dag_b):
            wait_for(f"{dag_id} to be parsed", lambda d=dag_id: _serialized(d), 150)
            standalone.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

        backfills_b: list[int] = []
        for round_ in range(3):
            if round_ == 0:
                # B through the REST API while A's backfill is created by the CLI: both DAGs run at once.
                created = standalone.call("POST", "/api/v2/backfills", {
                    "dag_id": dag_b, "from_date": "2024-03-01T00:00:00Z", "to_date": "2024-03-03T00:00:00Z",
                    "max_active_runs": 3, "reprocess_behavior": "completed"})
                backfills_b.append(int(created["id"]))
            before = latest_backfill(dag_a)
            result = standalone.cli("backfill", "create", "--dag-id", dag_a, "--from-date", "2024-03-01",
                                    "--to-date", "2024-03-03", "--max-active-runs", "3",
                                    "--reprocess-behavior", "completed")
            assert result.returncode == 0, f"backfill {round_ + 1}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            assert not any(e in result.stdout + result.stderr for e in LOCK_ERRORS), result.stderr[-2000:]
            backfill_id = latest_backfill(dag_a)
            assert backfill_id is not None and backfill_id != before
            wait_for(f"backfill {round_ + 1} of {dag_a}", lambda b=backfill_id: backfill_done(dag_a, b), 150)
        wait_for(f"the backfill of {dag_b}", lambda: backfill_done(dag_b, backfills_b[0]), 60)

        # A reprocessed date reuses its DAG run (cleared and run again): count through backfill_dag_run.
        with metadata_db() as db:
            done = db.execute(
                "SELECT b.dag_id, r.logical_date::date, r.exception_reason, d.state FROM backfill b "
                "JOIN backfill_dag_run r ON r.backfill_id = b.id LEFT JOIN dag_run d ON d.id = r.dag_run_id "
                "WHERE b.dag_id IN (%s, %s)", (dag_a, dag_b)).fetchall()
        assert sorted(r[1] for r in done if r[0] == dag_a) == sorted(DATES * 3), done
        assert sorted(r[1] for r in done if r[0] == dag_b) == DATES, done
        assert {(r[2], r[3]) for r in done} == {(None, "success")}, done

        with psycopg.connect(dw_url) as dw:
            for dag_id, loads in ((dag_a, 3), (dag_b, 1)):
                audit = dw.execute(
                    "SELECT partition_date, status, count(*) FROM etl_audit_log WHERE pipeline_name = %s "
                    "AND step = 'load' AND partition_date = ANY(%s) GROUP BY 1, 2 ORDER BY 1",
                    (dag_id, DATES)).fetchall()
                assert audit == [(d, "success", loads) for d in DATES], (dag_id, audit)
            spans = dw.execute("SELECT pipeline_name, started_at, finished_at FROM etl_audit_log "
                               "WHERE pipeline_name IN (%s, %s)", (dag_a, dag_b)).fetchall()
            a_spans = [(r[1], r[2]) for r in spans if r[0] == dag_a]
            b_spans = [(r[1], r[2]) for r in spans if r[0] == dag_b]
            assert any(a0 < b1 and b0 < a1 for a0, a1 in a_spans for b0, b1 in b_spans), "the DAGs never overlapped"
            for dag_id in (dag_a, dag_b):
                rows = dw.execute(f"SELECT _partition_date, count(*) FROM {dag_id}.events "  # noqa: S608
                                  "WHERE _partition_date = ANY(%s) GROUP BY 1 ORDER BY 1", (DATES,)).fetchall()
                assert rows == [(d, ROWS) for d in DATES], (dag_id, rows)
        log = (TEST_AIRFLOW_HOME / "standalone.log").read_text(errors="replace")
        assert not [e for e in LOCK_ERRORS if e in log], [line for line in log.splitlines()
                                                        if any(e in line for e in LOCK_ERRORS)][:5]
    finally:
        for name in (dag_a, dag_b):
            (TEST_SOURCES / f"{name}.yaml").unlink(missing_ok=True)


def _serialized(dag_id: str) -> bool:
    with metadata_db() as db:
        row = db.execute("SELECT 1 FROM serialized_dag WHERE dag_id = %s", (dag_id,)).fetchone()
    return row is not None



SLEEPY_TRANSFORM = """
import os, time
from pathlib import Path

import pyarrow as pa

MARKER = Path(os.environ["SNDW_TEST_KILL_MARKER"])


def first_attempt_hangs(batch: pa.RecordBatch) -> pa.RecordBatch:
    # The first attempt writes its pid and waits to be killed; the retry passes the rows through.
    if not MARKER.exists():
        MARKER.write_text(str(os.getpid()))
        time.sleep(600)
    return batch
"""


def test_a_task_killed_by_sigkill_is_audited_with_its_signal_and_the_retry_loads(
        airflow_db: Path, dw_url: str, tmp_path: Path) -> None:
    """A real run under the scheduler (LocalExecutor): the load's task process is killed with SIGKILL.
    Airflow 3.3 runs no callback for it (the supervisor marks it up for retry from the exit code);
    the retry records it with the signal, the retry that follows, and alerts; the `dw` connection
    that scripts/airflow-init made is listed by the REST API."""
    import signal
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from tests.conftest import TEST_DAGS

    posts: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            posts.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Thread(target=webhook.serve_forever, daemon=True).start()
    marker = tmp_path / "killed.pid"
    transform = TEST_DAGS / "transforms" / "sndw_test_kill.py"
    transform.write_text(SLEEPY_TRANSFORM)
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.csv").write_text("id,kind\n" + "".join(f"{i},k{i % 2}\n" for i in range(ROWS)))
    dag_id = f"killed_{uuid.uuid4().hex[:6]}"
    config = TEST_SOURCES / f"{dag_id}.yaml"
    try:
        with airflow_stack(dw_url, tmp_path, SNDW_TEST_KILL_MARKER=str(marker),
                           AIRFLOW_CONN_APPRISE_T=json.dumps({"conn_type": "apprise", "extra": {"config": {
                               "path": f"json://127.0.0.1:{webhook.server_address[1]}/"}}})) as airflow:
            connections = {c["connection_id"]: c for c in airflow.call("GET", "/api/v2/connections?limit=100")[
                "connections"]}
            dw = urlsplit(dw_url)
            assert connections["dw"]["conn_type"] == "postgres", connections.get("dw")
            assert (connections["dw"]["host"], connections["dw"]["port"], connections["dw"]["schema"],
                    connections["dw"]["login"]) == (dw.hostname, dw.port, dw.path.lstrip("/"), dw.username)
            config.write_text(yaml.safe_dump({
                "name": dag_id, "kind": "file", "base_path": str(data), "schedule": "@daily",
                "start_date": "2024-03-01", "catchup": False, "retries": 1, "retry_delay_seconds": 0,
                "notify": {"on": ["failure"], "apprise": {"conn_id": "apprise_t"}},
                "tables": [{"name": "events", "path": "events.csv", "write_mode": "partition",
                            "transform": "transforms.sndw_test_kill:first_attempt_hangs"}]}))
            wait_for(f"{dag_id} to be parsed", lambda: _serialized(dag_id), 150)
            airflow.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})  # catchup false: one run now
            pid = int(wait_for("the load's first attempt", lambda: marker.exists() and marker.read_text(), 240))
            os.kill(pid, signal.SIGKILL)
            wait_for(f"the run of {dag_id}", lambda: _run_state(dag_id) in ("success", "failed"), 240)
            assert _run_state(dag_id) == "success"
        with psycopg.connect(dw_url) as conn:
            rows = conn.execute("SELECT try_number, status, error_message FROM etl_audit_log WHERE pipeline_name = %s "
                                "AND step = 'load' ORDER BY try_number", (dag_id,)).fetchall()
        assert [(r[0], r[1]) for r in rows] == [(1, "failure"), (2, "success")], rows
        error = rows[0][2]
        assert "killed by SIGKILL (signal 9)" in error and "attempt 1 of 2, a retry follows" in error, error
        assert len(posts) == 1 and "killed by SIGKILL" in posts[0]["message"], posts
        assert "attempt 1 of 2, a retry follows" in posts[0]["title"] and f"/dags/{dag_id}/runs/" in posts[0]["message"]
    finally:
        config.unlink(missing_ok=True)
        transform.unlink(missing_ok=True)
        webhook.shutdown()


def _run_state(dag_id: str) -> str | None:
    with metadata_db() as db:
        row = db.execute("SELECT state FROM dag_run WHERE dag_id = %s ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
    return str(row[0]) if row else None
