"""HTTP sources end to end through Airflow's dag.test(): an authenticated, cursor-paged, rate-limited
source with a 429, a templated data-interval parameter and an unnested child table; a transient
failure that Airflow retries and a permanent one it does not, both audited."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import count, run, states
from tests.http_api import Req, Resp, TestApi, items, sequence

pytestmark = pytest.mark.slow
TOKEN = "e2e-bearer-token-0f1e2d3c"


def audit(conn: psycopg.Connection, pipeline: str) -> list[tuple]:
    return conn.execute(
        "SELECT task_id, step, status, try_number, rows_loaded, target_table, error_message "
        "FROM etl_audit_log WHERE pipeline_name = %s ORDER BY id", (pipeline,)).fetchall()


def posts_route() -> Any:
    throttled = {"done": False}

    def route(req: Req) -> Resp:
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Resp(401, {"error": "unauthorized"})
        start = int(req.query.get("after", "0"))
        if start == 20 and not throttled["done"]:  # page 2 is rate-limited once
            throttled["done"] = True
            return Resp(429, {"error": "too many requests"}, headers={"Retry-After": "1"})
        page = items(start + 1, min(start + 21, 61))
        for record in page:
            record["comments"] = [{"by": f"u{j}", "text": f"c{j} on {record['id']}"} for j in range(record["id"] % 3)]
        nxt = str(start + 20) if start + 20 < 60 else None
        return Resp(body={"data": page, "meta": {"next": nxt}})

    return route


def test_authenticated_paged_source_with_a_child_table(env: dict[str, Any], configs: list[Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with TestApi({"/api/posts": posts_route()}) as api:
        connection = {"conn_type": "http", "host": "127.0.0.1", "port": api.port, "password": TOKEN}
        monkeypatch.setenv("AIRFLOW_CONN_E2E_POSTS_API", json.dumps(connection))
        config = {
            "name": "e2e_posts", "kind": "http", "conn_id": "e2e_posts_api", "start_date": "2024-01-01",
            "retries": 0, "auth": "bearer", "requests_per_second": 20, "target_schema": "raw",
            "tables": [{
                "name": "posts", "endpoint": "/api/posts", "records_path": "data", "write_mode": "merge",
                "primary_key": ["id"], "unnest": ["comments"], "backoff_seconds": 0.05,
                "params": {"since": "{{ data_interval_start.isoformat() }}", "day": "{{ partition_date }}"},
                "pagination": {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after"},
            }],
        }
        started = time.monotonic()
        dag_run = run(config, configs)
        elapsed = time.monotonic() - started
        sent = api.requests_to("/api/posts")
    assert states(dag_run) == {"extract_posts": "success", "load_posts": "success",
                               "load_posts__comments": "success"}, states(dag_run)
    assert len(sent) == 4  # 3 pages and the 429 that was retried
    assert all(r.query["since"] == "2024-01-02T00:00:00+00:00" and r.query["day"] == "2024-01-02" for r in sent)
    assert sent[2].at - sent[1].at >= 0.95  # Retry-After: 1 was honoured inside the task
    assert elapsed < 120
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "raw.posts") == 60 and count(dw, "raw.posts__comments") == 60
        assert dw.execute("""SELECT p.name, c.parent__index, c.by FROM raw.posts p JOIN raw.posts__comments c
                             ON c.parent__id = p.id WHERE p.id = 5 ORDER BY 2""").fetchall() == [
            ("item 5", 0, "u0"), ("item 5", 1, "u1")]
        assert dw.execute("SELECT owner__address__city FROM raw.posts WHERE id = 14").fetchone() == ("c1",)
        rows = audit(dw, "e2e_posts")
        everything = json.dumps(dw.execute("SELECT * FROM etl_audit_log").fetchall(), default=str)
    assert [(r[0], r[2], r[4], r[5]) for r in rows] == [
        ("extract_posts", "success", None, "lake:http/e2e_posts/posts"),
        ("load_posts", "success", 60, "raw.posts"),
        ("load_posts__comments", "success", 60, "raw.posts__comments"),
    ]
    assert TOKEN not in everything


def test_transient_failures_are_retried_by_airflow_permanent_ones_are_not(env: dict[str, Any], configs: list[Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable = Resp(503, "<html><body>Service Unavailable: deploying</body></html>", content_type="text/html")
    routes = {
        # try 1: two attempts, both 503 -> the task fails and Airflow retries it; try 2: 503, then data
        "/flaky": sequence(unavailable, unavailable, unavailable, Resp(body=items(1, 8))),
        "/locked": lambda req: Resp(403, {"error": "forbidden", "echo": req.query.get("key")}),
    }
    with TestApi(routes) as api:
        connection = {"conn_type": "http", "host": "127.0.0.1", "port": api.port, "password": TOKEN,
                      "extra": {"api_key_param": "key"}}
        monkeypatch.setenv("AIRFLOW_CONN_E2E_HTTP_RETRY_API", json.dumps(connection))
        config = {
            "name": "e2e_http_retry", "kind": "http", "conn_id": "e2e_http_retry_api", "start_date": "2024-01-01",
            "retries": 1, "retry_delay_seconds": 0, "auth": "api_key_query",
            "tables": [{"name": "flaky", "endpoint": "/flaky", "retries": 1, "backoff_seconds": 0.01},
                       {"name": "locked", "endpoint": "/locked"}],
        }
        dag_run = run(config, configs)
        assert len(api.requests_to("/flaky")) == 4 and len(api.requests_to("/locked")) == 1
    assert states(dag_run) == {"extract_flaky": "success", "load_flaky": "success",
                               "extract_locked": "failed", "load_locked": "upstream_failed"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "flaky") == 7
        rows = audit(dw, "e2e_http_retry")
        everything = json.dumps(dw.execute("SELECT * FROM etl_audit_log").fetchall(), default=str)
    flaky = [r for r in rows if r[0] == "extract_flaky"]
    assert [(r[2], r[3]) for r in flaky] == [("failure", 1), ("success", 2)]
    assert "HTTP 503 Service Unavailable" in flaky[0][6] and "deploying" in flaky[0][6]
    assert f"{api.url}/flaky?key=" in flaky[0][6] and "after 2 attempts" in flaky[0][6]
    locked = [r for r in rows if r[0] == "extract_locked"]
    assert [(r[2], r[3]) for r in locked] == [("failure", 1)]  # permanent: no second try
    assert "HTTP 403" in locked[0][6] and "credentials" in locked[0][6]
    assert TOKEN not in everything
