"""Fail fast, audit once: errors no retry can fix fail the task on its first attempt with one failure
row; transient ones keep Airflow's retries (one failure row per attempt). Through dag.test()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.errors import ConfigError, EmptyExtractError, PermanentError, SchemaConflictError
from sndw.extract.http import HttpRequestError, HttpStatusError

from tests.conftest import run, states
from tests.http_api import Resp, TestApi

pytestmark = pytest.mark.slow


def attempts(conn: psycopg.Connection, pipeline: str) -> dict[str, list[tuple[str, int]]]:
    """Audit rows per task: [(status, try_number), ...] in write order."""
    rows = conn.execute("SELECT task_id, status, try_number FROM etl_audit_log WHERE pipeline_name = %s ORDER BY id",
                        (pipeline,)).fetchall()
    out: dict[str, list[tuple[str, int]]] = {}
    for task_id, status, try_number in rows:
        out.setdefault(task_id, []).append((status, try_number))
    return out


def errors(conn: psycopg.Connection, pipeline: str) -> dict[str, str]:
    rows = conn.execute("SELECT task_id, error_message FROM etl_audit_log WHERE pipeline_name = %s "
                        "AND status <> 'success'", (pipeline,)).fetchall()
    return {task_id: message or "" for task_id, message in rows}


def test_the_permanent_error_classes() -> None:
    """What the operators' ``except PermanentError`` turns into AirflowFailException."""
    for cls in (ConfigError, SchemaConflictError, EmptyExtractError, HttpStatusError):
        assert issubclass(cls, PermanentError), cls
    assert not issubclass(HttpRequestError, PermanentError)  # network, 5xx, 408/429 after the client's retries


def test_http_errors_fail_fast_or_retry_by_class(env: dict[str, Any], configs: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {
        "/gone": lambda req: Resp(404, {"error": "no such resource"}),
        "/denied": lambda req: Resp(401, {"error": "who are you"}),
        "/empty": lambda req: Resp(200, []),
        "/busy": lambda req: Resp(429, {"error": "slow down"}, headers={"Retry-After": "0"}),
        "/broken": lambda req: Resp(500, {"error": "oops"}),
    }
    with TestApi(routes) as api:
        monkeypatch.setenv("AIRFLOW_CONN_FF_API", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                              "port": api.port}))
        config = {
            "name": "ff_http", "kind": "http", "conn_id": "ff_api", "start_date": "2024-01-01",
            "retries": 2, "retry_delay_seconds": 0, "retry_exponential_backoff": False,
            "tables": [{"name": name, "endpoint": f"/{name}", "retries": 0, "backoff_seconds": 0.01}
                       for name in ("gone", "denied", "empty", "busy", "broken")],
        }
        dag_run = run(config, configs)
        requests = {name: len(api.requests_to(f"/{name}")) for name in ("gone", "denied", "busy", "broken")}
    assert states(dag_run) == {
        "extract_gone": "failed", "load_gone": "upstream_failed",
        "extract_denied": "failed", "load_denied": "upstream_failed",
        # An empty page into a table not made yet removes nothing: 0 rows load (a quiet day stays green).
        "extract_empty": "success", "load_empty": "success",
        "extract_busy": "failed", "load_busy": "upstream_failed",
        "extract_broken": "failed", "load_broken": "upstream_failed"}, states(dag_run)
    # Permanent: one attempt, one request, one failure row. Transient: 3 attempts (retries=2), each audited.
    assert requests == {"gone": 1, "denied": 1, "busy": 3, "broken": 3}, requests
    with psycopg.connect(env["dw_url"]) as dw:
        rows = attempts(dw, "ff_http")
        messages = errors(dw, "ff_http")
    for task in ("extract_gone", "extract_denied"):
        assert rows[task] == [("failure", 1)], (task, rows[task])
    assert rows["extract_empty"] == [("success", 1)] and rows["load_empty"] == [("success", 1)]
    for task in ("extract_busy", "extract_broken"):
        assert rows[task] == [("failure", 1), ("failure", 2), ("failure", 3)], (task, rows[task])
    assert "HTTP 404" in messages["extract_gone"] and "HTTP 401" in messages["extract_denied"]
    assert "HTTP 429" in messages["extract_busy"] and "HTTP 500" in messages["extract_broken"]


def test_missing_connection_and_bad_auth_fail_fast(env: dict[str, Any], configs: list[Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_FF_NOWHERE", raising=False)
    # No token in the connection for auth: bearer -- a configuration problem no retry can fix.
    monkeypatch.setenv("AIRFLOW_CONN_FF_NO_TOKEN", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}))
    for name, conn_id, expected in (("ff_missing", "ff_nowhere", "is not defined"),
                                    ("ff_no_token", "ff_no_token", "needs the token")):
        config = {"name": name, "kind": "http", "conn_id": conn_id, "start_date": "2024-01-01", "auth": "bearer",
                  "retries": 2, "retry_delay_seconds": 0, "tables": [{"name": "items", "endpoint": "/items"}]}
        dag_run = run(config, configs)
        assert states(dag_run) == {"extract_items": "failed", "load_items": "upstream_failed"}, (name, states(dag_run))
        with psycopg.connect(env["dw_url"]) as dw:
            assert attempts(dw, name) == {"extract_items": [("failure", 1)]}, name
            assert expected in errors(dw, name)["extract_items"], errors(dw, name)
        ti = next(t for t in dag_run.get_task_instances() if t.task_id == "extract_items")
        assert ti.try_number == 1, (name, ti.try_number)
