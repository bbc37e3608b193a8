"""The runner seed's CLI, unchanged: `python -m sndw.cli run|test-connection` on a real HTTP server and
a real PostgreSQL. Every call runs with an `airflow` package that refuses to import: the CLI is Airflow-free."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from sndw.demo.api import DemoApi

from tests.conftest import count
from tests.http_api import Req, Resp, TestApi, items

TOKEN = "cli-token-5ecret-42"


def connector(tmp_path: Path, **fields: Any) -> str:
    (tmp_path / "connector.json").write_text(json.dumps({"protocol": "http", **fields}))
    return "connector.json"


def audit_rows(dw: psycopg.Connection) -> list[tuple]:
    return dw.execute("SELECT pipeline_name, source_name, protocol, target_table, status, rows_loaded, "
                      "parquet_files, error_message, step FROM etl_audit_log ORDER BY id").fetchall()


SEED_ARGS = ("--query", "/users", "--source", "api_users", "--table", "stg_users", "--lake", "./lake")


def test_the_seed_example_runs_unchanged(cli: Any, tmp_path: Path, dw: psycopg.Connection) -> None:
    with DemoApi() as api:
        config = connector(tmp_path, base_url=api.url)
        code, out, err = cli("run", "--config", config, *SEED_ARGS)
        assert code == 0, err
        again = cli("run", "--config", config, *SEED_ARGS)  # replace by default: the same 10 rows
        assert again[0] == 0, again[2]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert out["status"] == "success" and out["rows_loaded"] == 10 and out["target_table"] == "public.stg_users"
    assert out["partition"] == today and out["url"] == f"{api.url}/users"
    assert (tmp_path / "lake" / "http" / "api_users" / "stg_users" / today).is_dir()
    assert all(Path(p).is_file() for p in again[1]["lake_paths"])  # the second run's partition replaced the first
    assert not any(Path(p).exists() for p in out["lake_paths"])
    assert "ok: 10 rows" in err and "public.stg_users" in err
    assert count(dw, "public.stg_users") == 10
    assert dw.execute("SELECT address__geo__lat IS NOT NULL, tags FROM stg_users WHERE id = 2").fetchone() == (
        True, ["t0", "t1"])
    rows = audit_rows(dw)
    assert [r[:7] for r in rows] == [("default", "api_users", "http", "public.stg_users", "success", 10, 1)] * 2


def test_schema_pipeline_dw_variables_and_an_authenticated_paged_source(cli: Any, tmp_path: Path, dw_url: str,
                                                                        dw: psycopg.Connection) -> None:
    def secure(req: Req) -> Resp:
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Resp(401, {"error": "unauthorized"})
        page = req.arg("page", 1)
        return Resp(body={"items": items(page * 25 - 24, page * 25 + 1) if page <= 4 else []})

    parts = urlsplit(dw_url)
    dw_env = {"DW_HOST": parts.hostname or "", "DW_PORT": str(parts.port), "DW_DATABASE": parts.path.lstrip("/"),
              "DW_USERNAME": parts.username or "", "DW_PASSWORD": parts.password or "", "API_TOKEN": TOKEN}
    with TestApi({"/v1/things": secure}) as api:
        config = connector(tmp_path, base_url=f"{api.url}/v1", auth="bearer", password="${API_TOKEN}",
                           records_path="items", pagination={"type": "page_number"}, requests_per_second=50)
        code, out, err = cli("run", "--config", config, "--query", "things", "--source", "things api",
                             "--table", "Things", "--lake", "lake", "--schema", "staging", "--pipeline", "nightly",
                             env=dw_env, drop=("AIRFLOW_CONN_DW",))
    assert code == 0, err
    assert out["rows_loaded"] == 100 and out["target_table"] == "staging.things"
    assert count(dw, "staging.things") == 100
    assert audit_rows(dw)[0][:6] == ("nightly", "things api", "http", "staging.things", "success", 100)
    assert TOKEN not in json.dumps(out) + err


def test_a_failure_exits_1_and_is_audited_without_secrets(cli: Any, tmp_path: Path, dw: psycopg.Connection) -> None:
    def broken(req: Req) -> Resp:
        return Resp(503, "<html><body>Service down for maintenance</body></html>", content_type="text/html")

    with TestApi({"/users": broken}) as api:
        config = connector(tmp_path, base_url=api.url, auth="api_key_query", password="${API_TOKEN}",
                           retries=1, backoff_seconds=0.01)
        code, out, err = cli("run", "--config", config, *SEED_ARGS, env={"API_TOKEN": TOKEN})
    assert code == 1
    assert out["status"] == "failure" and out["step"] == "extract" and out["audited"] is True
    assert "HTTP 503" in out["error"] and "maintenance" in out["error"] and "after 2 attempts" in out["error"]
    assert "FAILED (extract)" in err
    row = audit_rows(dw)[0]
    assert row[:5] == ("default", "api_users", "http", "public.stg_users", "failure") and "HTTP 503" in row[7]
    everything = json.dumps(dw.execute("SELECT * FROM etl_audit_log").fetchall(), default=str)
    assert TOKEN not in everything + json.dumps(out) + err
    assert dw.execute("SELECT to_regclass('public.stg_users')").fetchone() == (None,)


def test_a_failed_load_is_audited_and_keeps_the_table(cli: Any, tmp_path: Path, dw: psycopg.Connection) -> None:
    values = {"code": 1}

    def route(req: Req) -> Resp:
        return Resp(body=[{"id": 1, "code": values["code"]}])

    with TestApi({"/codes": route}) as api:
        config = connector(tmp_path, base_url=api.url)
        args = ("--query", "/codes", "--source", "s", "--table", "codes", "--lake", "lake", "--write-mode", "append")
        assert cli("run", "--config", config, *args)[0] == 0
        values["code"] = "X-1"  # the next run's type no longer fits: the load fails, the table stays
        code, out, _ = cli("run", "--config", config, *args)
    assert code == 1 and out["step"] == "load" and "public.codes.code" in out["error"]
    assert dw.execute("SELECT id, code FROM codes").fetchall() == [(1, 1)]
    assert [r[4] for r in audit_rows(dw)] == ["success", "failure"]


@pytest.mark.parametrize(("fields", "args", "words"), [
    ({"base_url": "http://127.0.0.1:9"}, ("--query", "/x", "--source", "s", "--lake", "l"), "--table"),
    ({"protocol": "ftp", "base_url": "ftp://x"}, SEED_ARGS, "protocol: must be one of http, https, postgres"),
    ({"base_url": "http://x", "colour": "blue"}, SEED_ARGS, "colour: unknown key"),
    ({"base_url": "http://x", "password": "${NOT_SET_ANYWHERE}"}, SEED_ARGS, "NOT_SET_ANYWHERE} is not set"),
    ({"base_url": "http://x", "pagination": {"type": "pages"}}, SEED_ARGS, "type must be one of none, page_number"),
])
def test_usage_errors_exit_2(cli: Any, tmp_path: Path, fields: dict[str, Any], args: tuple[str, ...],
                             words: str, dw: psycopg.Connection) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"protocol": "http", **fields}))
    code, out, err = cli("run", "--config", "c.json", *args)
    assert code == 2 and words in err, err
    assert dw.execute("SELECT to_regclass('public.etl_audit_log')").fetchone() == (None,)  # nothing ran


def test_no_warehouse_configured_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    config = connector(tmp_path, base_url="http://127.0.0.1:9")
    code, _, err = cli("run", "--config", config, *SEED_ARGS, drop=("AIRFLOW_CONN_DW",))
    assert code == 2 and "no warehouse configured" in err


def test_dot_env_in_the_working_folder_configures_the_warehouse(cli: Any, tmp_path: Path, dw_url: str) -> None:
    (tmp_path / ".env").write_text(f"# from .env\nexport AIRFLOW_CONN_DW='{dw_url}'\n")
    code, out, err = cli("test-connection", "--source", "dw", drop=("AIRFLOW_CONN_DW",))
    assert code == 0, err
    assert out["ok"] is True and out["database"] == urlsplit(dw_url).path.lstrip("/")


def test_test_connection(cli: Any, tmp_path: Path, dw_url: str) -> None:
    def secure(req: Req) -> Resp:
        ok = req.headers.get("Authorization") == f"Bearer {TOKEN}"
        return Resp(200 if ok else 401, {"ok": ok})

    with TestApi({"/": secure, "/ping": secure}) as api:
        good = connector(tmp_path, base_url=api.url, auth="bearer", password=TOKEN)
        code, out, err = cli("test-connection", "--config", good)
        assert code == 0 and out == {"ok": True, "target": f"{api.url}", "status": 200,
                                     "seconds": out["seconds"]}, err
        assert cli("test-connection", "--config", good, "--query", "/ping")[0] == 0
        bad = connector(tmp_path, base_url=api.url, auth="bearer", password="nope-nope")
        code, out, err = cli("test-connection", "--config", bad)
        assert code == 1 and "credentials were refused" in out["error"] and "nope-nope" not in err + str(out)
    code, out, _ = cli("test-connection", "--config", connector(tmp_path, base_url="http://127.0.0.1:9"))
    assert code == 1 and out["ok"] is False and "ConnectionError" in out["error"]
    assert cli("test-connection", "--source", "dw")[0] == 0
    wrong = dw_url.replace(f":{urlsplit(dw_url).password}@", ":not-the-password@")
    code, out, err = cli("test-connection", "--source", "dw", env={"AIRFLOW_CONN_DW": wrong})
    assert code == 1 and out["ok"] is False and "not-the-password" not in json.dumps(out) + err
    assert cli("test-connection")[0] == 2
