"""The sndw plugin inside Airflow's own API server (create_app, served by uvicorn on a real port):
Airflow's JWT login, /health, /stats, /data, /partitions, and the ETL page in headless Chromium."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.conftest import DAY, PG_LOCAL, ROOT, TEST_DAGS, run, states

pytestmark = pytest.mark.slow

USERS = {"admin": "admin-Pw-7391", "outsider": "outsider-Pw-5120", "teamb": "teamb-Pw-8842"}
INSPECTIONS = "id,station,result,note\n" + "".join(
    f"{i},{'press' if i % 2 else 'lathe'},{'pass' if i % 3 else 'fail'},note {i}\n" for i in range(1, 26))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, raw.decode()

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self.call("GET", path, token)

    def token(self, user: str) -> str:
        status, body = self.call("POST", "/auth/token", body={"username": user, "password": USERS[user]})
        assert status in (200, 201), body
        return str(body["access_token"])


@pytest.fixture(scope="module")
def site(pg_url: str, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A warehouse after a demo-like run (one CSV source through dag.test, one failed run of a
    second source), and Airflow's API server with the plugin; users: admin, a user with no role,
    and a viewer of team_b, which does not own plugin_csv's DAG bundle."""
    from tests.conftest import TEMPLATE_DB, TEST_DB_PREFIX, with_database

    tmp = tmp_path_factory.mktemp("plugin")
    name = f"{TEST_DB_PREFIX}plugin"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    dw_url = with_database(pg_url, name)
    data = tmp / "data"
    data.mkdir()
    (data / "inspections.csv").write_text(INSPECTIONS)
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    sources = tmp / "sources"
    sources.mkdir()
    good = {"name": "plugin_csv", "kind": "file", "base_path": str(data), "schedule": "@daily",
            "start_date": "2024-01-01", "tags": ["plant"],
            "tables": [{"name": "inspections", "path": "inspections.csv", "write_mode": "partition",
                        "checks": [{"not_null": ["id"]},
                                   {"accepted_values": {"column": "result", "values": ["pass"]}, "severity": "warn"}]}]}
    bad = {"name": "plugin_broken", "kind": "file", "base_path": str(data), "schedule": "@daily",
           "start_date": "2024-01-01", "retries": 0,
           "tables": [{"name": "gone", "path": "does_not_exist.csv", "write_mode": "replace"}]}
    # Airflow 3.3's way to restrict a user to some DAGs with its SimpleAuthManager: multi-team mode.
    # plugin_csv lives in a DAG bundle of its own owned by team_a; plugin_broken in the DAG folder's
    # bundle, which no team owns. The user "teamb" (viewer of team_b) may read only the latter.
    team_dags = tmp / "team_a_dags"
    (team_dags / "sources").mkdir(parents=True)
    (team_dags / "sndw_sources.py").write_text((ROOT / "dags" / "sndw_sources.py").read_text())
    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "sndw-team-a", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(team_dags)}, "team_name": "team_a"},
               {"name": "sndw-team-b", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(tmp / "team_b_dags")}, "team_name": "team_b"}]
    (tmp / "team_b_dags").mkdir()
    configs: list[Path] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_DW", dw_url)
        mp.setenv("SNDW_LAKE_ROOT", str(tmp / "lake"))
        mp.setenv("SNDW_SOURCES_DIR", str(sources))
        mp.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
        mp.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,outsider:,teamb:viewer:team_b")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        synced = subprocess.run([sys.executable, "-m", "airflow", "teams", "sync"], capture_output=True, text=True,
                                check=False)
        assert synced.returncode == 0, synced.stderr[-3000:]
        from airflow.api.common.delete_dag import delete_dag
        from airflow.exceptions import DagNotFound

        for dag_id in ("plugin_csv", "plugin_broken"):  # a bundle recorded by an earlier session
            try:
                delete_dag(dag_id)
            except DagNotFound:
                pass
        try:
            from sndw.config import parse_source
            from sndw_airflow.factory import build_dag

            good_path = team_dags / "sources" / "plugin_csv.yaml"
            good_path.write_text(yaml.safe_dump(good))
            dag = build_dag(parse_source(good, str(good_path)), good_path)
            assert set(states(dag.test(logical_date=DAY)).values()) == {"success"}
            assert "failed" in states(run(bad, configs)).values()
        finally:
            for path in configs:
                path.unlink(missing_ok=True)
        for config in (good, bad):
            (sources / f"{config['name']}.yaml").write_text(yaml.safe_dump(config))

        import uvicorn
        from airflow.api_fastapi.app import create_app

        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.started, "the API server did not start"
        client = Client(f"http://127.0.0.1:{port}")
        try:
            yield {"client": client, "dw_url": dw_url, "tmp": tmp, "mp": mp, "sources": sources,
                   "admin": client.token("admin"), "outsider": client.token("outsider"),
                   "teamb": client.token("teamb")}
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_plugin_is_registered_and_documented(site: dict[str, Any]) -> None:
    client, token = site["client"], site["admin"]
    status, plugins = client.get("/api/v2/plugins", token)
    assert status == 200
    ours = [p for p in plugins["plugins"] if p["name"] == "sndw"]
    assert ours and ours[0]["fastapi_apps"][0]["url_prefix"] == "/sndw"
    assert ours[0]["external_views"][0]["href"] == "/sndw/ui"
    status, spec = client.get("/sndw/openapi.json")
    assert status == 200
    assert {"/health", "/stats", "/data/{schema}/{table}", "/partitions/{source}"} <= set(spec["paths"])
    # /sndw/docs works offline: no script or style from another host, every endpoint listed.
    status, page = client.get("/sndw/docs")
    assert status == 200 and isinstance(page, str)
    assert "cdn" not in page.lower() and "<script" not in page and 'href="openapi.json"' in page
    assert all(f"/sndw{path}" in page for path in spec["paths"])
    assert "/sndw/partitions/{source}" in page and "The gap report" in page


def test_no_token_is_401_and_a_token_is_200(site: dict[str, Any]) -> None:
    client = site["client"]
    for path in ("/sndw/health", "/sndw/stats", "/sndw/data/public/inspections", "/sndw/partitions/plugin_csv",
                 "/sndw/ui"):
        assert client.get(path)[0] == 401, path
        assert client.get(path, "not-a-jwt")[0] in (401, 403), path
    status, body = client.get("/sndw/health", site["admin"])
    assert status == 200, body
    assert body["warehouse"]["reachable"] is True and body["warehouse"]["latency_ms"] >= 0
    csv, broken = body["sources"]["plugin_csv"], body["sources"]["plugin_broken"]
    assert csv["last_run"]["status"] == "success" and csv["last_run"]["dag_id"] == "plugin_csv"
    assert csv["freshness"]["schedule"] == "@daily" and csv["freshness"]["status"] == "fresh"
    assert broken["last_run"]["status"] == "failure" and broken["freshness"]["status"] == "never"
    assert body["status"] == "degraded" and body["failed_sources"] == ["plugin_broken"]


def test_stats_overall_per_source_and_table(site: dict[str, Any]) -> None:
    status, body = site["client"].get("/sndw/stats", site["admin"])
    assert status == 200, body
    fields = {"total_records_processed", "total_duration_seconds", "last_success", "last_failure",
              "last_failure_reason", "run_count"}
    assert fields <= set(body["overall"])
    assert body["overall"]["total_records_processed"] == 25 and body["overall"]["run_count"] == 2
    csv = body["sources"]["plugin_csv"]
    assert csv["total_records_processed"] == 25 and csv["last_failure"] is None and csv["run_count"] == 1
    assert csv["tables"]["public.inspections"]["total_records_processed"] == 25
    broken = body["sources"]["plugin_broken"]
    assert broken["last_success"] is None and "does_not_exist.csv" in broken["last_failure_reason"]


def test_data_pages_filters_search_and_order(site: dict[str, Any]) -> None:
    get, token = site["client"].get, site["admin"]
    status, first = get("/sndw/data/public/inspections", token)
    assert status == 200, first
    assert (first["total"], first["page"], first["page_size"], first["has_more"]) == (25, 1, 10, True)
    assert [r["id"] for r in first["data"]] == list(range(1, 11))
    status, last = get("/sndw/data/public/inspections?page=3&page_size=10", token)
    assert [r["id"] for r in last["data"]] == list(range(21, 26)) and last["has_more"] is False
    status, beyond = get("/sndw/data/public/inspections?page=9", token)
    assert status == 200 and beyond["data"] == [] and beyond["has_more"] is False
    assert get("/sndw/data/public/inspections?page_size=100", token)[1]["page_size"] == 100
    for bad in ("page_size=101", "page_size=0", "page=0", "page=-1", "page_size=x"):
        status, body = get(f"/sndw/data/public/inspections?{bad}", token)
        assert status == 400 and body["detail"].startswith(bad.split("=")[0] + ":"), (bad, body)
    status, fails = get("/sndw/data/public/inspections?result=fail&order_by=id&order=desc", token)
    assert status == 200 and fails["total"] == 8
    assert [r["id"] for r in fails["data"]] == [24, 21, 18, 15, 12, 9, 6, 3]
    status, found = get("/sndw/data/public/inspections?search=NOTE%201&station=press", token)
    assert status == 200 and sorted(r["id"] for r in found["data"]) == [1, 11, 13, 15, 17, 19]
    assert get("/sndw/data/public/inspections?search=100%25", token)[1]["total"] == 0  # % is literal


def test_unknown_tables_404_and_unknown_columns_400(site: dict[str, Any]) -> None:
    get, token = site["client"].get, site["admin"]
    for path in ("/sndw/data/public/nope", "/sndw/data/public/etl_audit_log", "/sndw/data/pg_catalog/pg_authid",
                 "/sndw/data/nope/inspections"):
        status, body = get(path, token)
        assert status == 404, (path, body)
    status, body = get("/sndw/data/public/inspections?colour=red", token)
    assert status == 400 and "colour" in body["detail"] and "station" in body["detail"]
    status, body = get("/sndw/data/public/inspections?order_by=nope", token)
    assert status == 400 and "nope" in body["detail"]
    assert get("/sndw/partitions/nope", token)[0] == 404


def test_injection_attempts_change_nothing(site: dict[str, Any]) -> None:
    get, token = site["client"].get, site["admin"]
    with psycopg.connect(site["dw_url"]) as dw:
        before = dw.execute("SELECT count(*), sum(hashtext(t::text)) FROM public.inspections t").fetchone()
        tables_before = dw.execute("SELECT count(*) FROM pg_tables").fetchone()
    attacks = [urllib.parse.urlencode(pair) for pair in (
        {"station": "press'; DROP TABLE public.inspections; --"},
        {"search": "x' OR 1=1; DELETE FROM public.inspections; --"},
        {"search": "%' UNION SELECT * FROM etl_audit_log --"},
        {'id" = id; DROP TABLE public.inspections; --': "1"},
        {"order_by": "id; DROP TABLE public.inspections"},
        {"order_by": "(SELECT 1)"},
        {"order": "asc; DROP TABLE public.inspections"},
    )]
    for query in attacks:
        status, body = get(f"/sndw/data/public/inspections?{query}", token)
        assert status in (200, 400, 422), (query, body)
        if status == 200:
            assert body["total"] == 0, (query, body)
    status, _ = get("/sndw/data/public/" + urllib.parse.quote('inspections"; DROP TABLE x; --', safe=""), token)
    assert status == 404
    with psycopg.connect(site["dw_url"]) as dw:
        assert dw.execute("SELECT count(*), sum(hashtext(t::text)) FROM public.inspections t").fetchone() == before
        assert dw.execute("SELECT count(*) FROM pg_tables").fetchone() == tables_before


def test_partitions_report_gaps(site: dict[str, Any]) -> None:
    status, body = site["client"].get("/sndw/partitions/plugin_csv?date_from=2024-01-01&date_to=2024-01-03",
                                      site["admin"])
    assert status == 200, body
    by_date = {p["partition"]: p for p in body["partitions"]}
    assert by_date["2024-01-02"]["status"] == "loaded" and by_date["2024-01-02"]["rows_loaded"] == 25
    assert by_date["2024-01-01"]["status"] == "missing" and by_date["2024-01-03"]["status"] == "missing"
    assert body["summary"] == {"loaded": 1, "missing": 2}


def test_a_user_who_may_not_read_the_dags_sees_nothing(site: dict[str, Any]) -> None:
    get, token = site["client"].get, site["outsider"]
    assert get("/sndw/data/public/inspections", token)[0] == 403
    assert get("/sndw/partitions/plugin_csv", token)[0] == 403
    assert get("/sndw/sources/plugin_csv", token)[0] == 403
    status, body = get("/sndw/stats", token)
    assert status == 200 and body["sources"] == {} and body["overall"]["total_records_processed"] == 0
    status, body = get("/sndw/health", token)
    assert status == 200 and body["sources"] == {}
    assert get("/api/v2/dags/plugin_csv", token)[0] == 403  # Airflow itself agrees


def test_a_user_restricted_to_some_dags_sees_only_their_sources(site: dict[str, Any]) -> None:
    get, token = site["client"].get, site["teamb"]
    assert get("/api/v2/dags/plugin_csv", token)[0] == 403  # Airflow's own answer for the DAG
    assert get("/api/v2/dags/plugin_broken", token)[0] == 200
    assert get("/sndw/data/public/inspections", token)[0] == 403
    assert get("/sndw/sources/plugin_csv", token)[0] == 403
    assert get("/sndw/partitions/plugin_csv", token)[0] == 403
    assert get("/sndw/partitions/plugin_broken", token)[0] == 200
    status, body = get("/sndw/stats", token)
    assert status == 200 and set(body["sources"]) == {"plugin_broken"}
    assert body["overall"]["total_records_processed"] == 0 and body["overall"]["run_count"] == 1
    status, body = get("/sndw/health", token)
    assert status == 200 and set(body["sources"]) == {"plugin_broken"}


def test_pause_and_resume_a_source_as_the_dag_s_editors_may(site: dict[str, Any]) -> None:
    from tests.conftest import metadata_db

    def paused(dag_id: str) -> bool:
        with metadata_db() as db:
            row = db.execute("SELECT is_paused FROM dag WHERE dag_id = %s", (dag_id,)).fetchone()
        assert row is not None
        return bool(row[0])

    call, admin = site["client"].call, site["admin"]
    before = paused("plugin_broken")
    assert call("POST", "/sndw/sources/plugin_csv/pause")[0] == 401
    assert call("POST", "/sndw/sources/plugin_csv/pause", site["outsider"])[0] == 403  # may not read it
    status, body = call("POST", "/sndw/sources/plugin_broken/pause", site["teamb"])  # reads, may not edit
    assert status == 403 and "pause" in body["detail"], body
    assert call("POST", "/sndw/sources/no_such_source/pause", admin)[0] == 404
    assert paused("plugin_broken") == before
    status, body = call("POST", "/sndw/sources/plugin_csv/pause", admin)
    assert (status, body) == (200, {"source": "plugin_csv", "dag_id": "plugin_csv", "is_paused": True})
    assert paused("plugin_csv") and site["client"].get("/api/v2/dags/plugin_csv", admin)[1]["is_paused"] is True
    status, body = call("POST", "/sndw/sources/plugin_csv/resume", admin)
    assert status == 200 and body["is_paused"] is False and not paused("plugin_csv")
    with metadata_db() as db:
        events = db.execute("SELECT event, owner FROM log WHERE dag_id = 'plugin_csv' AND event LIKE 'sndw_%%' "
                            "ORDER BY id DESC LIMIT 2").fetchall()
    assert events == [("sndw_resume", "admin"), ("sndw_pause", "admin")]


def test_health_is_503_with_the_warehouse_stopped(site: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, "PG_LOCAL_DIR": str(tmp_path / "pg")}
    started = subprocess.run([str(PG_LOCAL), "start"], env=env, capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    try:
        url = subprocess.run([str(PG_LOCAL), "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
        site["mp"].setenv("AIRFLOW_CONN_DW", url)
        status, body = site["client"].get("/sndw/health", site["admin"])
        assert status == 200 and body["warehouse"]["reachable"] is True, body
    finally:
        subprocess.run([str(PG_LOCAL), "stop"], env=env, capture_output=True, text=True, check=False)
    try:
        status, body = site["client"].get("/sndw/health", site["admin"])
        assert status == 503, body
        assert body["warehouse"]["reachable"] is False and "unreachable" in body["detail"]
        assert site["client"].get("/sndw/data/public/inspections", site["admin"])[0] == 503
    finally:
        site["mp"].setenv("AIRFLOW_CONN_DW", site["dw_url"])
    assert site["client"].get("/sndw/health", site["admin"])[0] == 200


def test_health_and_stats_show_each_cdc_slot(site: dict[str, Any], source_db: str) -> None:
    """A CDC source's slot as its source database reports it, judged against max_slot_lag; a CDC
    source that cannot be reached is said so in the answer, which is still 200."""
    from sndw.cdc.run import sync_cdc
    from sndw.config import parse_source
    from sndw.sync import source_access

    client, token, mp = site["client"], site["admin"], site["mp"]
    sources = site["tmp"] / "sources"
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g")
    followed = {"name": "plugin_cdc", "kind": "sql", "conn_id": "plugin_cdc_src", "start_date": "2024-01-01",
                "cdc": {"max_slot_lag": {"wal": "1GB", "age": "6h"}}, "tables": [{"name": "orders", "table": "orders"}]}
    lost = {**followed, "name": "plugin_cdc_down", "conn_id": "plugin_cdc_down", "cdc": {}}
    mp.setenv("AIRFLOW_CONN_PLUGIN_CDC_SRC", source_db)
    mp.setenv("AIRFLOW_CONN_PLUGIN_CDC_DOWN", "postgresql://sndw:secret-Pw-4411@127.0.0.1:1/nowhere")
    source = parse_source(followed, "plugin_cdc.yaml")
    access = source_access(source, sources, None, environ={"AIRFLOW_CONN_PLUGIN_CDC_SRC": source_db})
    results = sync_cdc(source, access, url=site["dw_url"], lake=str(site["tmp"] / "lake"),
                       partition=DAY.date())
    assert {r["status"] for r in results} == {"success"}
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(11, 3000) g")
    try:
        for config in (followed, lost):
            (sources / f"{config['name']}.yaml").write_text(yaml.safe_dump(config))
        status, body = client.get("/sndw/health", token)
        assert status == 200, body
        slot = body["sources"]["plugin_cdc"]["cdc_slot"]
        assert slot["slot"] == "sndw_plugin_cdc" and slot["status"] == "ok" and slot["exists"] is True
        assert slot["retained_wal_bytes"] >= slot["pending_wal_bytes"] > 0 and slot["seconds_since_confirmed"] >= 0
        assert slot["max_slot_lag"] == {"wal_bytes": 1 << 30, "age_seconds": 21600.0}
        down = body["sources"]["plugin_cdc_down"]["cdc_slot"]
        assert down["status"] == "unreachable" and down["reachable"] is False and "cannot connect" in down["error"]
        assert "secret-Pw-4411" not in json.dumps(body)
        assert body["lagging_slots"] == ["plugin_cdc_down"] and body["status"] == "degraded"
        status, figures = client.get("/sndw/stats", token)
        assert status == 200 and figures["sources"]["plugin_cdc"]["cdc_slot"]["retained_wal_bytes"] > 0
        # a limit below what the slot holds: lagging, named
        (sources / "plugin_cdc_down.yaml").unlink()
        (sources / "plugin_cdc.yaml").write_text(yaml.safe_dump({**followed, "cdc": {"max_slot_lag": 1000}}))
        status, body = client.get("/sndw/health", token)
        slot = body["sources"]["plugin_cdc"]["cdc_slot"]
        assert slot["status"] == "lagging" and "over max_slot_lag 1000" in slot["problems"][0], slot
        assert body["lagging_slots"] == ["plugin_cdc"] and body["status"] == "degraded"
    finally:
        for name in ("plugin_cdc", "plugin_cdc_down"):
            (sources / f"{name}.yaml").unlink(missing_ok=True)
        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('sndw_plugin_cdc')")


# ------------------------------------------------------------------ hostile parameters, big values, who reads what


def raw_get(site: dict[str, Any], path: str, user: str = "admin") -> tuple[int, bytes]:
    request = urllib.request.Request(site["client"].base + path, headers={"Authorization": f"Bearer {site[user]}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def loaded_by_plugin_csv(dw_url: str, table: str) -> None:
    """An audit row of a successful load of ``table`` by a step of plugin_csv's DAG (as a SQL step would
    write it, under a pipeline of its own, so plugin_csv's numbers stay as the tests above read them):
    what makes a table one the product loaded. The tables below have types no extract writes."""
    from datetime import UTC, datetime

    from sndw.audit import AuditRecord, write_audit_record

    now = datetime.now(UTC)
    with psycopg.connect(dw_url) as dw:
        write_audit_record(dw, AuditRecord(pipeline_name="plugin_csv_sql", source_name="plugin_csv", protocol="sql",
                                           target_table=table, status="success", started_at=now, finished_at=now,
                                           rows_loaded=1, dag_id="plugin_csv", step="load"))


@pytest.fixture(scope="module")
def odd_tables(site: dict[str, Any]) -> dict[str, Any]:
    """public.odd_types: columns no ORDER BY can sort (json[] first, box[], pg_snapshot) with rows whose
    arrays PostgreSQL would have to compare; public.big_values: ten 1 MB texts, a jsonb and a bytea."""
    body = {i: f"row {i} " + "x" * 1_000_000 for i in range(1, 11)}
    with psycopg.connect(site["dw_url"]) as dw:
        dw.execute("CREATE TABLE public.odd_types (tags json[], id int, boxes box[], snap pg_snapshot, note text)")
        dw.execute("""INSERT INTO public.odd_types SELECT ARRAY['{"a": 1}'::json, '[2]'], i, ARRAY[box '((0,0),(1,1))'],
                      pg_current_snapshot(), 'note ' || i FROM generate_series(1, 5) i""")
        dw.execute("CREATE TABLE public.big_values (id int, body text, doc jsonb, blob bytea)")
        for i in range(1, 13):
            dw.execute("INSERT INTO public.big_values VALUES (%s, %s, %s, %s)",
                       (i, body.get(i, f"short {i}"), json.dumps({"n": i}), bytes([i]) * 3))
    loaded_by_plugin_csv(site["dw_url"], "public.odd_types")
    loaded_by_plugin_csv(site["dw_url"], "public.big_values")
    return {"body": body}


HOSTILE = ["99999999999999999999", "-99999999999999999999", "9223372036854775808", "1.5", "1e3", "NaN", "",
           "%00", "a%00b", "%ff", "%C3%28", "%ED%A0%80", "x" * 5000, "%27%3B--", "tags", "boxes", "snap",
           "%E2%80%AE", "0x10"]


def test_hostile_parameters_are_4xx_never_5xx(site: dict[str, Any], odd_tables: dict[str, Any]) -> None:
    """Issue 21 items 7-9: every parameter of /sndw/data with hostile values; a malformed one is a 400
    whose message names it."""
    get = functools.partial(raw_get, site)
    for table in ("odd_types", "inspections"):
        for name in ("page", "page_size", "order", "order_by", "search", "id", "note", "tags", "snap", "%ff", "%00",
                     "a%00b"):
            for value in HOSTILE:
                status, body = get(f"/sndw/data/public/{table}?{name}={value}")
                assert status < 500, (table, name, value, body[:300])
    cases = {"page=99999999999999999999": "page", "page=92233720368547759": "page", "id=%00": "id",
             "search=a%00b": "search", "note=%ff": "note", "%ff=1": "\ufffd", "order_by=tags": "order_by",
             "order_by=boxes": "order_by", "order_by=snap": "order_by", "order=sideways": "order",
             "page=1&page=2": "page", "page_size=1e3": "page_size", "order_by=%00": "order_by"}
    for query, named in cases.items():
        status, body = get(f"/sndw/data/public/odd_types?{query}")
        detail = json.loads(body)["detail"]
        assert status == 400 and detail.startswith(named), (query, detail)
    detail = json.loads(get("/sndw/data/public/odd_types?order_by=tags")[1])["detail"]
    assert "json[]" in detail and "cannot be ordered" in detail and "id, note" in detail
    status, body = get("/sndw/data/public/odd_types?page=92233720368547758")
    assert status == 200 and json.loads(body)["data"] == []  # the last page there is: past the rows
    status, body = get("/sndw/data/public/odd_types?order=desc")  # ordered by the first column that can be
    answer = json.loads(body)
    assert status == 200 and answer["order_by"] == "id" and [r["id"] for r in answer["data"]] == [5, 4, 3, 2, 1]
    assert answer["data"][0]["tags"] == [{"a": 1}, [2]] and answer["truncated"] == []


def test_a_page_is_bounded_in_bytes_and_says_what_it_cut(site: dict[str, Any], odd_tables: dict[str, Any]) -> None:
    """Issue 21 item 25: ten values of 1 MB make an answer of a few hundred kB, and every cut value
    is listed with its column and full length; the others are whole."""
    from sndw.stats import PAGE_CHARS, TRUNCATION_MARK

    status, raw = raw_get(site, "/sndw/data/public/big_values?page_size=100&order_by=id")
    assert status == 200, raw[:300]
    assert len(raw) < PAGE_CHARS + 100_000 < 10_000_000, len(raw)
    answer = json.loads(raw)
    shown = answer["value_chars"]
    assert 64 <= shown < 1_000_000
    assert answer["truncated"] == [{"row": i - 1, "column": "body", "length": len(odd_tables["body"][i]),
                                    "shown": shown} for i in range(1, 11)]
    for row in answer["data"]:
        full = odd_tables["body"].get(row["id"], f"short {row['id']}")
        if row["id"] <= 10:
            assert row["body"] == full[:shown] + TRUNCATION_MARK
        else:
            assert row["body"] == full  # whole, and not listed
        assert row["doc"] == {"n": row["id"]} and row["blob"] == bytes([row["id"]]).hex() * 3
    status, raw = raw_get(site, "/sndw/data/public/big_values?page_size=1&page=11&order_by=id")
    assert status == 200 and json.loads(raw)["truncated"] == [] and json.loads(raw)["data"][0]["body"] == "short 11"


def test_tables_no_source_dag_owns_are_read_as_their_dags_allow(site: dict[str, Any], tmp_path: Path) -> None:
    """Issue 21 item 22: a table loaded by ``etl.cli run`` (no DAG) is readable by the admin, who may
    read every DAG, and by nobody else; one loaded by a DAG composed by hand (as
    example_manual_pipeline) by whoever Airflow lets read that DAG."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("id,name\n1,ada\n2,bob\n")
    (tmp_path / "files.json").write_text(json.dumps({"protocol": "file", "path": "data"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_"))}
    env.update(PYTHONPATH=str(ROOT / "include"), AIRFLOW_CONN_DW=site["dw_url"])
    done = subprocess.run([sys.executable, "-m", "etl.cli", "run", "--config", "files.json", "--query", "*.csv",
                           "--source", "cli_only", "--table", "cli_rows", "--lake", "lake"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # a DAG file in the tests' DAG folder (dag.test() runs what that bundle holds), as
    # dags/example_manual_pipeline.py composes the operators
    dag_file = TEST_DAGS / "plugin_manual.py"
    dag_file.write_text(f"""
from datetime import UTC, datetime

from airflow.sdk import DAG
from sndw_airflow.operators import ExtractToParquetOperator, ParquetToDwOperator

with DAG(dag_id="plugin_manual", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC), catchup=False):
    extract = ExtractToParquetOperator(task_id="extract_rows", source="plugin_manual_src", kind="file",
                                       base_path={str(data)!r}, table={{"name": "rows", "path": "rows.csv"}})
    ParquetToDwOperator(task_id="load_rows", manifest=extract.output, target_table="manual_rows",
                        target_schema="public", write_mode="replace")
""")
    try:
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(dag_file)).dags["plugin_manual"]
        assert set(states(dag.test(logical_date=DAY)).values()) == {"success"}
    finally:
        dag_file.unlink()
    get = site["client"].get
    for path in ("/sndw/data/public/cli_rows", "/sndw/data/public/manual_rows"):
        status, body = get(path, site["admin"])
        assert status == 200 and sorted(r["name"] for r in body["data"]) == ["ada", "bob"], (path, body)
        assert get(path, site["outsider"])[0] == 403, path
    status, body = get("/sndw/data/public/cli_rows", site["teamb"])
    assert status == 403 and "outside Airflow" in body["detail"], body
    airflow_says = get("/api/v2/dags/plugin_manual", site["teamb"])[0]
    assert get("/sndw/data/public/manual_rows", site["teamb"])[0] == (200 if airflow_says == 200 else 403)
    assert get("/sndw/data/public/inspections", site["teamb"])[0] == 403  # the source rule is unchanged


def test_an_echoed_password_never_reaches_the_api(site: dict[str, Any], configs: list[Path]) -> None:
    """Issue 21 item 6 through the API: a key echoed with \\u escapes (.NET's "\\u002B") and HTML
    entities is masked in the failure /sndw/sources and /sndw/health show."""
    from tests.http_api import Req, Resp, TestApi, items

    secret = "S3cr3t/p@ss+w=rd&x"
    echoes = ["S3cr3t/p@ss\\u002Bw=rd\\u0026x", "S3cr3t/p@ss&#43;w=rd&#x26;x", "S3cr3t\\u002fp@ss&#x2B;w=rd&amp;x"]

    def route(req: Req) -> Resp:
        if req.query.get("key") != secret:
            return Resp(401, {"error": "no key"})
        if req.arg("page", 1) == 1:
            return Resp(body={"data": items(1, 3)})
        return Resp(400, '{"error": "bad request", "echo": ["' + '", "'.join(echoes) + '"]}')

    config = {"name": "plugin_echo", "kind": "http", "conn_id": "plugin_echo_api", "start_date": "2024-01-01",
              "schedule": "@daily", "retries": 0, "auth": "api_key_query",
              "tables": [{"name": "echo", "endpoint": "/items", "records_path": "data", "retries": 0,
                          "pagination": {"type": "page_number", "page_size": 2}}]}
    source_file = site["tmp"] / "sources" / "plugin_echo.yaml"
    try:
        with TestApi({"/items": route}) as api:
            site["mp"].setenv("AIRFLOW_CONN_PLUGIN_ECHO_API", json.dumps({
                "conn_type": "http", "host": "127.0.0.1", "port": api.port, "password": secret,
                "extra": {"api_key_param": "key"}}))
            assert states(run(config, configs))["extract_echo"] == "failed"
            assert any(r.query.get("key") == secret for r in api.requests_to("/items"))
        source_file.write_text(yaml.safe_dump(config))
        status, source = site["client"].get("/sndw/sources/plugin_echo", site["admin"])
        assert status == 200 and source["failures"], source
        error = source["failures"][0]["error"]
        assert "HTTP 400" in error and error.count("***") >= 4, error
        status, health = site["client"].get("/sndw/health", site["admin"])
        assert status == 200 and "plugin_echo" in health["failed_sources"]
        shown = json.dumps(source) + json.dumps(health)
        with psycopg.connect(site["dw_url"]) as dw:
            shown += str(dw.execute("SELECT error_message FROM etl_audit_log WHERE pipeline_name = 'plugin_echo'").fetchall())
        for form in [secret, *echoes, "p@ss\\u002B", "&#43;w=rd", "\\u002fp@ss"]:
            assert form not in shown and form.replace("\\", "\\\\") not in shown, form
    finally:
        source_file.unlink(missing_ok=True)
        site["mp"].delenv("AIRFLOW_CONN_PLUGIN_ECHO_API", raising=False)


def test_a_second_warehouse_connection_is_served(site: dict[str, Any], pg_url: str) -> None:
    """A source whose dw_conn_id names another warehouse (a second database on the test cluster):
    its tables, health, stats and rows come from there, beside the sources of ``dw``."""
    from tests.conftest import TEMPLATE_DB, TEST_DB_PREFIX, with_database

    name = f"{TEST_DB_PREFIX}plugin2"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    config = {"name": "plugin_dw2", "kind": "file", "base_path": str(site["tmp"] / "data"), "schedule": "@daily",
              "start_date": "2024-01-01", "dw_conn_id": "dw2", "target_schema": "second",
              "tables": [{"name": "inspections", "path": "inspections.csv", "write_mode": "partition"}]}
    written: list[Path] = []
    listed = site["tmp"] / "sources" / "plugin_dw2.yaml"
    get, token = site["client"].get, site["admin"]
    try:
        site["mp"].setenv("AIRFLOW_CONN_DW2", with_database(pg_url, name))
        assert set(states(run(config, written)).values()) == {"success"}
        listed.write_text(yaml.safe_dump(config))
        with psycopg.connect(site["dw_url"]) as dw:
            assert dw.execute("SELECT to_regclass('second.inspections')").fetchone() == (None,)
        status, body = get("/sndw/sources/plugin_dw2", token)
        assert status == 200, body
        assert [p["rows_loaded"] for p in body["rows_per_partition"]["second.inspections"]] == [25]
        status, rows = get("/sndw/data/second/inspections?page_size=5", token)
        assert status == 200 and rows["total"] == 25, rows
        assert get("/sndw/data/public/inspections", token)[1]["total"] == 25  # dw's own table still served
        status, health = get("/sndw/health", token)
        assert status == 200 and set(health["warehouses"]) == {"dw", "dw2"}, health
        assert health["sources"]["plugin_dw2"]["last_run"]["status"] == "success"
        assert health["sources"]["plugin_csv"]["last_run"]["status"] == "success"
        status, stats = get("/sndw/stats", token)
        assert status == 200 and stats["sources"]["plugin_dw2"]["total_records_processed"] == 25
        assert stats["overall"]["total_records_processed"] == sum(
            s["total_records_processed"] for s in stats["sources"].values())
        assert get("/sndw/partitions/plugin_dw2", token)[1]["summary"].get("loaded", 0) >= 1
    finally:
        listed.unlink(missing_ok=True)
        for path in written:
            path.unlink(missing_ok=True)
        site["mp"].delenv("AIRFLOW_CONN_DW2", raising=False)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ the page in headless Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed: `apt-get install -y chromium` (Debian) to run the page test")


class DevTools:
    """Chrome DevTools Protocol over the browser's websocket: just what the page test needs."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=64 * 1024 * 1024)
        self.next_id = 0

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return dict(reply.get("result", {}))


class Page:
    """One tab of headless Chromium, logged in to Airflow with the UI's session cookie."""

    def __init__(self, tools: DevTools, session: str) -> None:
        self.tools, self.session = tools, session

    def js(self, expression: str) -> Any:
        reply = self.tools.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply
        return reply["result"].get("value")

    def open(self, url: str) -> str | None:
        self.tools.send("Page.navigate", self.session, url=url)
        time.sleep(0.3)
        ready = None
        deadline = time.monotonic() + 60
        while ready not in ("1", "error") and time.monotonic() < deadline:
            time.sleep(0.3)
            ready = self.js("document.body && document.body.getAttribute('data-ready')")
        return ready

    def screenshot(self, name: str, tmp: Path, docs: bool = True) -> Path:
        """The visible part of the page, as a PNG; with SNDW_UPDATE_SCREENSHOTS=1 and ``docs`` also
        into docs/img/ (the screenshots of the README and docs/reference/airflow.md)."""
        shot = tmp / name
        shot.write_bytes(base64.b64decode(self.tools.send("Page.captureScreenshot", self.session, format="png")["data"]))
        if docs and os.environ.get("SNDW_UPDATE_SCREENSHOTS") == "1":
            (ROOT / "docs" / "img").mkdir(exist_ok=True)
            shutil.copy(shot, ROOT / "docs" / "img" / name)
        print(f"screenshot: {shot}")
        return shot


@pytest.fixture(scope="module")
def page(site: dict[str, Any]) -> Iterator[Page]:
    browser = _chromium()
    profile = site["tmp"] / "chromium"
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1400,900", "--hide-scrollbars",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().splitlines()) == 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        port, path = active.read_text().splitlines()
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        base = site["client"].base
        # The UI's session cookie, as Airflow's login sets it.
        tools.send("Network.setCookie", session, name="_token", value=site["admin"], url=base + "/", path="/")
        yield Page(tools, session)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# An exact time as the page shows it on hover, and what must never show: fractions of a second.
EXACT = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"
FRACTION = re.compile(r"\d:\d\d[.,]\d")


def _times(page: Page) -> list[tuple[str, str]]:
    return [tuple(x) for x in page.js("[...document.querySelectorAll('time')].map(t => [t.textContent, t.title])")]


def test_the_etl_page_shows_the_tables_and_numbers(site: dict[str, Any], page: Page) -> None:
    base = site["client"].base
    ready = page.open(base + "/sndw/ui")
    text = page.js("document.body.innerText")
    assert ready == "1", text
    names = page.js("[...document.querySelectorAll('section.source')].map(s => s.dataset.name)")
    assert names == ["plugin_broken", "plugin_csv"]  # the failing source first
    broken = page.js("document.getElementById('source-plugin_broken').innerText")
    assert "failing" in broken and "does_not_exist.csv" in broken and "public.gone" in broken
    csv = page.js("document.getElementById('source-plugin_csv').innerText")
    assert "public.inspections" in csv and "partition" in csv and "plant" in csv
    # The warn check failed on 8 of 25 rows, the block check passed: the latest result of each.
    assert "1 pass | 1 warn" in csv and "accepted_values(result)" in csv
    assert page.js("document.querySelectorAll('#source-plugin_csv svg.chart rect').length") == 1
    links = page.js("[...document.querySelectorAll('a')].map(a => a.getAttribute('href')).join(' ')")
    assert "/dags/plugin_csv" in links
    # The last error links to its task instance's log in Airflow 3's UI.
    assert re.search(r"/dags/plugin_broken/runs/[^ ]+/tasks/extract_gone\?try_number=1", links), links
    times = _times(page)
    assert times and all(re.match(EXACT, title) for _, title in times), times
    assert all(re.match(r"^(just now|\d+ (s|min|h|days) ago)$", shown) for shown, _ in times), times
    assert not FRACTION.search(text) and not FRACTION.search(" ".join(t for _, t in times))
    assert page.screenshot("etl-page-small.png", site["tmp"], docs=False).stat().st_size > 10_000


def test_stats_show_the_latest_result_per_check(site: dict[str, Any]) -> None:
    status, body = site["client"].get("/sndw/stats", site["admin"])
    assert status == 200, body
    checks = {c["name"]: c for c in body["sources"]["plugin_csv"]["tables"]["public.inspections"]["checks"]}
    assert set(checks) == {"not_null(id)", "accepted_values(result)"}
    assert checks["not_null(id)"]["status"] == "pass" and checks["not_null(id)"]["failing_rows"] == 0
    warn = checks["accepted_values(result)"]
    assert warn["status"] == "warn" and warn["failing_rows"] == INSPECTIONS.count(",fail,")
    assert warn["partition_date"] == DAY.date().isoformat() and warn["severity"] == "warn"
    with psycopg.connect(site["dw_url"], autocommit=True) as dw:  # a later result of the same check wins
        dw.execute("INSERT INTO etl_check_results (pipeline_name, source_name, target_table, check_name, kind, "
                   "severity, status, failing_rows, committed) VALUES ('plugin_csv', 'plugin_csv', "
                   "'public.inspections', 'accepted_values(result)', 'accepted_values', 'warn', 'pass', 0, true)")
        try:
            status, body = site["client"].get("/sndw/stats", site["admin"])
            checks = {c["name"]: c for c in body["sources"]["plugin_csv"]["tables"]["public.inspections"]["checks"]}
            assert checks["accepted_values(result)"]["status"] == "pass"
        finally:
            dw.execute("DELETE FROM etl_check_results WHERE status = 'pass' AND kind = 'accepted_values'")


def test_the_etl_page_with_100_sources_and_a_year_of_runs(site: dict[str, Any], page: Page, pg_url: str) -> None:
    """100 sources of three tables, a year of daily runs each (bench/etl_page.py, as `make bench`
    times it): failing sources first, the filters, relative times, gaps, quality and state."""
    from bench.etl_page import fill, write_sources
    from tests.conftest import TEMPLATE_DB, TEST_DB_PREFIX, with_database

    name = f"{TEST_DB_PREFIX}plugin100"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    url = with_database(pg_url, name)
    folder = site["tmp"] / "sources-100"
    write_sources(folder, 100, site["tmp"] / "data")
    with psycopg.connect(url) as conn:
        made = fill(conn, 100, 365)
    assert made.audit_rows > 200_000
    mp, base = site["mp"], site["client"].base
    mp.setenv("SNDW_SOURCES_DIR", str(folder))
    mp.setenv("AIRFLOW_CONN_DW", url)
    try:
        started = time.perf_counter()
        status, body = site["client"].get("/sndw/overview", site["admin"])
        print(f"GET /sndw/overview, 100 sources x 365 days: {time.perf_counter() - started:.3f} s")
        assert status == 200 and len(body["sources"]) == 100
        ready = page.open(base + "/sndw/ui")
        text = page.js("document.body.innerText")
        assert ready == "1", text[:2000]
        names = page.js("[...document.querySelectorAll('section.source')].map(s => s.dataset.name)")
        assert len(names) == 100 and names[:len(made.failing)] == sorted(made.failing)
        assert names[len(made.failing):len(made.failing) + len(made.stale)] == sorted(made.stale)
        assert page.js("document.querySelectorAll('svg.chart').length") == 300
        assert page.js("document.querySelectorAll('#source-src_001 svg.chart rect').length") == 90  # 30 per table
        # Relative times, the exact UTC time on hover, never a fraction of a second.
        times = _times(page)
        assert len(times) > 300 and all(re.match(EXACT, title) for _, title in times)
        assert any(shown.endswith(" h ago") for shown, _ in times) and any(" days ago" in s for s, _ in times)
        assert not FRACTION.search(text) and not FRACTION.search(" ".join(t for _, t in times))
        assert re.search(r"last \d+(\.\d)? s\b", text)  # durations in s, and from a minute on in min
        assert [page.js(f"duration({x})") for x in (4.2, 42, 75, 750)] == ["4.2 s", "42 s", "1.3 min", "13 min"]
        failing = made.failing[0]
        row = page.js(f"document.querySelector('#source-{failing} tr[data-table$=\".orders\"]').innerText")
        assert "failing" in row and "CheckViolation" in row and "DETAIL" not in row  # the first line only
        link = page.js(f"document.querySelector('#source-{failing} tr[data-table$=\".orders\"] a').href")
        assert re.search(rf"/dags/{failing}/runs/scheduled__[^/]+/tasks/load_orders\?try_number=1$", link), link
        # Gaps where they mean something: dates of the partition table, runs of the others.
        gapped = next(n for n in made.gaps if n not in made.stale + made.failing)
        rows = page.js(f"[...document.querySelectorAll('#source-{gapped} tr[data-table]')].map(r => r.innerText)")
        assert "3 missing dates" in rows[0] and "3 missed runs" in rows[1] and "missing date" not in rows[1]
        quiet = page.js("document.querySelector('#source-src_001 tr[data-table]').innerText")
        assert "missing" not in quiet and "missed" not in quiet
        warned = next(n for n in made.warned if n not in made.stale + made.failing)
        orders = page.js(f"document.querySelector('#source-{warned} tr[data-table]').innerText")
        assert "2 pass | 1 warn" in orders and "range(amount)" in orders
        customers = page.js(f"document.querySelectorAll('#source-{warned} tr[data-table]')[1].innerText")
        assert "updated_at = " in customers  # the etl_state row of the table
        page.screenshot("etl-page.png", site["tmp"])

        def shown(**filters: str) -> list[str]:
            for key, value in filters.items():
                page.js(f"(e => {{ e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input')); }})"
                        f"(document.getElementById('filter-{key}'))")
            return list(page.js("[...document.querySelectorAll('section.source:not(.hidden)')]"
                                ".map(s => s.dataset.name)"))

        assert shown(state="failing") == sorted(made.failing)
        assert shown(state="stale") == sorted(made.stale)
        page.screenshot("etl-page-filtered.png", site["tmp"])
        ops = shown(state="", tag="ops")
        assert len(ops) == 25 and all(int(n[-3:]) % 4 == 2 for n in ops)
        tens = [f"src_00{i}" for i in range(10) if f"src_00{i}" in made.names]
        assert shown(tag="", source="src_00") == tens
        assert page.js("document.getElementById('shown').innerText") == f"{len(tens)} of 100 sources shown"
        assert shown(source="no such source") == []
    finally:
        mp.setenv("SNDW_SOURCES_DIR", str(site["sources"]))
        mp.setenv("AIRFLOW_CONN_DW", site["dw_url"])
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ the config in the UI


def test_the_dag_doc_shows_the_tables_and_the_yaml(site: dict[str, Any], tmp_path: Path) -> None:
    """A source DAG's doc (as Airflow's REST API gives it to the UI) holds its table list and YAML;
    every task has a doc line."""
    client, token = site["client"], site["admin"]
    status, details = client.get("/api/v2/dags/plugin_csv/details", token)
    assert status == 200, details
    doc = details["doc_md"]
    assert "| inspections | path: inspections.csv | public.inspections | partition |" in doc
    assert "```yaml" in doc and "write_mode: partition" in doc and "name: plugin_csv" in doc
    status, tasks = client.get("/api/v2/dags/plugin_csv/tasks", token)
    assert status == 200
    docs = {t["task_id"]: t["doc_md"] for t in tasks["tasks"]}
    assert docs["extract_inspections"].startswith("Extract `inspections` (path: inspections.csv)")
    assert "into `public.inspections` (partition)" in docs["load_inspections"]


def test_the_doc_of_a_sql_source_with_keys_and_a_cursor(tmp_path: Path) -> None:
    from sndw.config import load_source_file
    from sndw_airflow.factory import build_dag

    config = {"name": "doc_sql", "kind": "sql", "conn_id": "src", "schedule": "0 3 * * *",
              "start_date": "2024-01-01", "description": "Orders | and more",
              "tables": [{"name": "orders", "query": "SELECT * FROM orders WHERE a | b = 1",
                          "write_mode": "merge", "primary_key": ["OrderId"],
                          "incremental": {"cursor": "updated_at"}},
                         {"name": "items", "table": "sales.items"}]}
    path = tmp_path / "doc_sql.yaml"
    path.write_text(yaml.safe_dump(config) + "# a note with ``` backticks\n")
    dag = build_dag(load_source_file(path), path)
    doc = dag.doc_md
    assert "**Schedule:** `0 3 * * *`" in doc and "**Connection:** `src`" in doc
    assert ("| orders | query: SELECT * FROM orders WHERE a \\| b = 1 | public.orders | merge | order_id "
            "| updated_at |") in doc
    assert "| items | table: sales.items | public.items | replace | - | - |" in doc
    assert "````yaml" in doc and "# a note with ``` backticks" in doc
    assert {t.task_id: bool(t.doc_md) for t in dag.tasks} == {
        "extract_orders": True, "load_orders": True, "extract_items": True, "load_items": True}
    assert "from the watermark of `updated_at`" in dag.get_task("extract_orders").doc_md
    assert "(merge, keys order_id)" in dag.get_task("load_orders").doc_md
