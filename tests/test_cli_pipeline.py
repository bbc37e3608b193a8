"""One pipeline for the DAGs and the command line: `python -m etl.cli run|test-connection|sync|check`
for every kind of source, through a real subprocess with an `airflow` package that refuses to import."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from tests.conftest import ROOT, count, run, states


def pg_fields(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"host": parts.hostname, "port": parts.port, "database": parts.path.lstrip("/"),
            "username": parts.username, "password": parts.password}


def write(tmp_path: Path, name: str, data: dict[str, Any]) -> str:
    (tmp_path / name).write_text(json.dumps(data))
    return name


def audit(dw: psycopg.Connection) -> list[tuple]:
    return dw.execute("SELECT pipeline_name, source_name, protocol, target_table, status, rows_loaded, error_message "
                      "FROM etl_audit_log ORDER BY id").fetchall()


def no_secret(secret: str, *texts: Any) -> None:
    for text in texts:
        assert secret not in json.dumps(text, default=str), text


def test_the_plans_verification_step_on_postgres(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    """`run --config examples/postgres_connector.json --query "SELECT 1 AS n"` (env_prefix PG) exits 0
    and leaves one success row; the JSON result has the plan's keys."""
    example = json.loads((ROOT / "examples" / "postgres_connector.json").read_text())
    assert example == {"protocol": "postgres", "env_prefix": "PG"}
    config = write(tmp_path, "postgres_connector.json", example)
    fields = pg_fields(source_db)
    env = {f"PG_{k.upper()}": str(v) for k, v in fields.items()}
    code, out, err = cli("run", "--config", config, "--query", "SELECT 1 AS n", "--source", "test",
                         "--table", "dw_test", "--lake", "./lake", env=env)
    assert code == 0, err
    assert {"run_id", "status", "rows_loaded", "parquet_files", "duration_seconds"} <= set(out)
    assert out["status"] == "success" and out["rows_loaded"] == 1 and out["parquet_files"] == 1
    assert "ok: 1 rows" in err and "public.dw_test" in err
    no_secret(fields["password"], out, err)
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT n, pg_typeof(n)::text FROM dw_test").fetchall() == [(1, "integer")]
        assert audit(dw) == [("default", "test", "sql", "public.dw_test", "success", 1, None)]


def test_postgres_connector_fields_exact_types_and_failures(cli: Any, tmp_path: Path, source_db: str,
                                                             dw_url: str) -> None:
    with psycopg.connect(source_db) as src:
        src.execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2), tags text[], at timestamp)")
        src.execute("INSERT INTO orders VALUES (1, 12.34, '{a,b}', '2024-01-02 03:04:05'), (2, -1, '{}', 'infinity')")
    fields = pg_fields(source_db)
    config = write(tmp_path, "pg.json", {"protocol": "postgresql", **fields})
    code, out, err = cli("run", "--config", config, "--query", "SELECT * FROM orders ORDER BY id", "--source", "shop",
                         "--table", "orders", "--schema", "raw", "--pipeline", "shop_daily", "--lake", "lake")
    assert code == 0, err
    with psycopg.connect(dw_url) as dw, psycopg.connect(source_db) as src:
        query = "SELECT id::text, amount::text, tags::text, at::text FROM {} ORDER BY id"
        assert dw.execute(query.format("raw.orders")).fetchall() == src.execute(query.format("orders")).fetchall()
    # A failing query: exit 1, one failure row naming the problem, no password anywhere.
    code, out, err = cli("run", "--config", config, "--query", "SELECT * FROM no_such_table", "--source", "shop",
                         "--table", "broken", "--lake", "lake")
    assert code == 1 and out["status"] == "failure" and "no_such_table" in out["error"]
    assert "FAILED" in err
    no_secret(fields["password"], out, err)
    with psycopg.connect(dw_url) as dw:
        rows = audit(dw)
        assert [r[4] for r in rows] == ["success", "failure"] and "no_such_table" in rows[1][6]
        no_secret(fields["password"], rows)
    # A wrong password: test-connection exits 1 and names no secret.
    bad = write(tmp_path, "bad.json", {"protocol": "postgres", **{**fields, "password": "Wr0ng-Pa55word!"}})
    code, out, err = cli("test-connection", "--config", bad)
    assert code == 1 and out["ok"] is False
    no_secret("Wr0ng-Pa55word!", out, err)
    code, out, err = cli("test-connection", "--config", config)
    assert code == 0 and out["ok"] is True, err


def test_sqlite_and_file_connectors(cli: Any, tmp_path: Path, dw_url: str) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT, score REAL)")
        conn.executemany("INSERT INTO users VALUES (?, ?, ?)", [(1, "ada", 1.5), (2, "bob", None)])
    config = write(tmp_path, "sqlite.json", {"protocol": "sqlite", "path": "app.db"})
    code, out, err = cli("run", "--config", config, "--query", "SELECT * FROM users", "--source", "app",
                         "--table", "users", "--lake", "lake")
    assert code == 0 and out["rows_loaded"] == 2, err
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("zip,city\n01234,Adams\n")
    (data / "b.csv").write_text("zip,city\n00501,Holtsville\n")
    files = write(tmp_path, "files.json", {"protocol": "file", "path": "data"})
    code, out, err = cli("run", "--config", files, "--query", "*.csv", "--source", "zips", "--table", "zips",
                         "--lake", "lake")
    assert code == 0 and out["rows_loaded"] == 2, err
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, name, score FROM users ORDER BY id").fetchall() == [(1, "ada", 1.5), (2, "bob", None)]
        assert dw.execute("SELECT zip FROM zips ORDER BY zip").fetchall() == [("00501",), ("01234",)]
        assert [r[2] for r in audit(dw)] == ["sql", "file"]
    assert cli("test-connection", "--config", files, "--query", "*.csv")[0] == 0
    code, out, _ = cli("test-connection", "--config", files, "--query", "*.parquet")
    assert code == 1 and "no file matches" in out["error"]
    assert cli("test-connection", "--config", config)[0] == 0
    # Bad connectors are usage errors: exit 2, nothing ran.
    missing = write(tmp_path, "missing.json", {"protocol": "sqlite", "path": "nope.db"})
    code, _, err = cli("run", "--config", missing, "--query", "SELECT 1", "--source", "s", "--table", "t",
                       "--lake", "lake")
    assert code == 2 and "missing.json: path: no SQLite database" in err
    unknown = write(tmp_path, "unknown.json", {"protocol": "postgres", "hostname": "x"})
    code, _, err = cli("run", "--config", unknown, "--query", "SELECT 1", "--source", "s", "--table", "t",
                       "--lake", "lake")
    assert code == 2 and "unknown.json: hostname: unknown key" in err


@pytest.mark.slow
def test_sync_and_check_match_a_dag_run(cli: Any, tmp_path: Path, source_db: str, env: dict[str, Any],
                                         configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same source config run by its DAG and by `sync` gives the same warehouse rows; `check`
    counts both sides and exits 1 once they disagree."""
    with psycopg.connect(source_db) as src:
        src.execute("CREATE TABLE parts (id int PRIMARY KEY, name text, weight real, made date)")
        src.execute("INSERT INTO parts SELECT g, 'part ' || g, g / 4.0, DATE '2024-01-01' + g FROM generate_series(1, 50) g")
    monkeypatch.setenv("AIRFLOW_CONN_CLI_PARTS_SRC", source_db)
    config = {"name": "cli_parts", "kind": "sql", "conn_id": "cli_parts_src", "start_date": "2024-01-01",
              "target_schema": "raw", "retries": 0,
              "tables": [{"name": "parts", "table": "public.parts", "write_mode": "replace"},
                         {"name": "heavy", "query": "SELECT * FROM parts WHERE made <= DATE '{{ partition_date }}'",
                          "write_mode": "merge", "primary_key": ["id"]}]}
    assert set(states(run(config, configs)).values()) == {"success"}
    columns = "id, name, weight, made, _partition_date"
    with psycopg.connect(env["dw_url"]) as dw:
        by_dag = {t: dw.execute(f"SELECT {columns} FROM raw.{t} ORDER BY id").fetchall() for t in ("parts", "heavy")}  # noqa: S608
        dw.execute("DROP TABLE raw.parts, raw.heavy")
    path = tmp_path / "cli_parts.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_env = {"AIRFLOW_CONN_CLI_PARTS_SRC": source_db, "AIRFLOW_CONN_DW": env["dw_url"]}
    code, out, err = cli("sync", str(path), "--date", "2024-01-02", "--lake", str(env["lake"]), "--json", env=cli_env)
    assert code == 0, err
    assert [(r["target_table"], r["rows_loaded"], r["write_mode"]) for r in out] == [
        ("raw.parts", 50, "replace"), ("raw.heavy", 1, "merge")]
    assert "2 of 2 tables synced, 51 rows" in err
    with psycopg.connect(env["dw_url"]) as dw:
        by_cli = {t: dw.execute(f"SELECT {columns} FROM raw.{t} ORDER BY id").fetchall() for t in ("parts", "heavy")}  # noqa: S608
        assert by_cli == by_dag
        sources = {r[0] for r in dw.execute("SELECT DISTINCT pipeline_name FROM etl_audit_log").fetchall()}
        assert sources == {"cli_parts"}
    code, out, err = cli("check", str(path), "--json", env=cli_env)
    assert code == 0, err
    # heavy's query is templated (one date): shown, not compared.
    assert [(r["table"], r["rows"], r["source_rows"], r.get("agrees")) for r in out] == [
        ("raw.parts", 50, 50, True), ("raw.heavy", 1, None, None)]
    with psycopg.connect(env["dw_url"]) as dw:
        dw.execute("DELETE FROM raw.parts WHERE id = 7")
        assert count(dw, "raw.parts") == 49
    code, _, text = cli("check", str(path), env=cli_env)
    assert code == 1, text
    code, out, err = cli("check", env=cli_env, module="sndw.cli")
    assert code == 0 and "raw.parts" in out and "49" in out, err


@pytest.mark.slow
def test_sync_and_check_find_a_connection_in_airflows_metadata_db(airflow_db: Path, tmp_path: Path, source_db: str,
                                                                  dw_url: str) -> None:
    """`make demo` keeps its connections in Airflow's metadata DB only: sync and check find them
    there (`airflow connections get`) when no AIRFLOW_CONN_ variable names them."""
    with psycopg.connect(source_db) as src:
        src.execute("CREATE TABLE parts (id int PRIMARY KEY, name text)")
        src.execute("INSERT INTO parts SELECT g, 'part ' || g FROM generate_series(1, 7) g")
    conn_id = f"cli_metadb_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_", "PG_"))}
    env["AIRFLOW_CONN_DW"] = dw_url
    added = subprocess.run(["airflow", "connections", "add", conn_id, "--conn-uri", source_db], env=env,
                           capture_output=True, text=True, timeout=180, check=False)
    assert added.returncode == 0, added.stdout + added.stderr
    config = tmp_path / "metadb_parts.yaml"
    config.write_text(yaml.safe_dump({"name": "metadb_parts", "kind": "sql", "conn_id": conn_id,
                                      "start_date": "2024-01-01", "target_schema": "raw",
                                      "tables": [{"name": "parts", "table": "public.parts"}]}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "etl.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    try:
        synced = cli("sync", str(config), "--lake", str(tmp_path / "lake"))
        assert synced.returncode == 0, synced.stderr
        assert "1 of 1 tables synced, 7 rows" in synced.stderr
        checked = cli("check", str(config), "--json")
        assert checked.returncode == 0, checked.stderr
        assert [(r["table"], r["rows"], r["source_rows"], r.get("agrees")) for r in json.loads(checked.stdout)] == [
            ("raw.parts", 7, 7, True)]
    finally:
        subprocess.run(["airflow", "connections", "delete", conn_id], env=env, capture_output=True, timeout=180,
                       check=False)
    missing = cli("sync", str(config), "--lake", str(tmp_path / "lake"))  # deleted: named, with where to add it
    assert missing.returncode == 2
    assert f"AIRFLOW_CONN_{conn_id.upper()}" in missing.stderr and "Admin > Connections" in missing.stderr


def test_check_says_when_it_cannot_reach_the_source(cli: Any, tmp_path: Path, dw_url: str, source_db: str) -> None:
    with psycopg.connect(source_db) as src:
        src.execute("CREATE TABLE parts (id int PRIMARY KEY)")
        src.execute("INSERT INTO parts SELECT generate_series(1, 3)")
    path = tmp_path / "unreachable.yaml"
    path.write_text(yaml.safe_dump({"name": "unreachable", "kind": "sql", "conn_id": "unreachable_src",
                                    "start_date": "2024-01-01", "tables": [{"name": "parts", "table": "public.parts"}]}))
    code, _, err = cli("sync", str(path), "--lake", str(tmp_path / "lake"), env={"AIRFLOW_CONN_UNREACHABLE_SRC": source_db})
    assert code == 0, err
    closed = "postgresql://robot:hunter2-secret@127.0.0.1:1/nowhere"
    code, out, err = cli("check", str(path), env={"AIRFLOW_CONN_UNREACHABLE_SRC": closed})
    assert code == 1, (out, err)
    assert "public.parts" in out and "could not be counted" in out and "unreachable" in out, out
    no_secret("hunter2-secret", out, err)
    code, out, _ = cli("check", str(path), "--json", env={"AIRFLOW_CONN_UNREACHABLE_SRC": closed})
    assert code == 1 and out[0]["source_rows"] is None and "127.0.0.1" in out[0]["source_error"], out


def test_progress_lines_on_long_work(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    """Plain progress lines when stderr is not a terminal (rows, MiB, rows/s, elapsed)."""
    config = write(tmp_path, "pg.json", {"protocol": "postgres", **pg_fields(source_db)})
    code, out, err = cli("run", "--config", config, "--query",
                         "SELECT g AS id, md5(g::text) AS hash FROM generate_series(1, 600000) g",
                         "--source", "big", "--table", "big", "--lake", "lake", env={"SNDW_PROGRESS_SECONDS": "0.1"})
    assert code == 0 and out["rows_loaded"] == 600_000, err
    lines = [line for line in err.splitlines() if "rows/s" in line]
    assert lines and all("\r" not in line for line in lines), err
    assert any(line.startswith(("extract big.big: ", "load public.big: ")) and " MiB, " in line for line in lines), lines


def test_progress_line_is_live_on_a_terminal() -> None:
    import io
    import logging
    import time

    from sndw.progress import LiveLine, Progress, log

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    handler = LiveLine(stream)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        progress = Progress("extract s.t")
        progress.every = 0.05
        for _ in range(3):
            time.sleep(0.06)
            progress.add(1000, 2**20)
        handler.end()
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "extract s.t: 3,000 rows, 3.0 MiB" in text


def test_column_types_on_a_dbapi_source(tmp_path: Path) -> None:
    """column_types works for SQL sources without ADBC too (SQLite): exact conversions, or an error."""
    from sndw.config import table_spec
    from sndw.errors import ExtractError
    from sndw.pipeline import ExtractRequest, SourceAccess, extract_table

    db = tmp_path / "codes.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE codes (id INTEGER, zip, amount)")
        conn.executemany("INSERT INTO codes VALUES (?, ?, ?)", [(1, "01234", 2.5), (2, "00501", 3)])
    access = SourceAccess(dbapi_connect=lambda: sqlite3.connect(db))

    def extract(types: dict[str, str]) -> Any:
        table = table_spec("sql", {"name": "codes", "query": "SELECT * FROM codes ORDER BY id", "column_types": types})
        request = ExtractRequest(pipeline="p", source="s", kind="sql", table=table, partition=date(2024, 1, 2),
                                 lake_root=str(tmp_path / "lake"))
        return extract_table(request, access)

    import pyarrow.parquet as pq

    manifest = extract({"zip": "text", "amount": "numeric"})
    data = pq.read_table(manifest.paths[0])
    assert data.column("zip").to_pylist() == ["01234", "00501"]
    assert [str(v) for v in data.column("amount").to_pylist()] == ["2.5", "3.0"]
    with pytest.raises(ExtractError, match=r"column 'zip' is declared bigint .* holds '01234'"):
        extract({"zip": "bigint"})
    with pytest.raises(ExtractError, match="column_types names columns the query does not return: nope"):
        extract({"nope": "text"})


# ------------------------------------------------------------- issue 21: found by adversarial use


def test_sync_template_errors_are_config_errors_or_audited_failures(cli: Any, tmp_path: Path, source_db: str,
                                                                   dw_url: str) -> None:
    """(item 10) Broken Jinja is refused before anything runs (exit 2, file and field named); a
    template that fails when rendered (an undefined name) fails its table, audited, the others load."""
    with psycopg.connect(source_db) as src:
        src.execute("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 3) g")
    env = {"AIRFLOW_CONN_SHOP_SRC": source_db}
    config = {"name": "shop", "kind": "sql", "conn_id": "shop_src", "start_date": "2024-01-01",
              "tables": [{"name": "items", "table": "public.items"},
                         {"name": "later", "query": "SELECT * FROM items WHERE id > {{ nope }}"}]}
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = cli("sync", str(path), "--date", "2024-01-02", "--lake", "lake", "--json", env=env)
    assert code == 1 and "Traceback" not in err, err
    assert [(r["target_table"], r["status"], r["rows_loaded"]) for r in out] == [
        ("public.items", "success", 3), ("public.later", "failure", 0)]
    assert f"{path}: tables[1].query: template error: 'nope' is undefined" in out[1]["error"]
    with psycopg.connect(dw_url) as dw:
        rows = audit(dw)
        assert [(r[3], r[4]) for r in rows] == [("public.items", "success"), ("public.later", "failure")]
        assert "tables[1].query: template error: 'nope' is undefined" in rows[1][6]
    config["tables"][1]["query"] = "SELECT * FROM items WHERE id > {{ partition_date }"
    path.write_text(yaml.safe_dump(config))
    code, out, err = cli("sync", str(path), "--date", "2024-01-02", "--lake", "lake", env=env)
    assert code == 2 and "Traceback" not in err, err
    assert f"{path}: tables[1].query: not a valid template (Jinja): unexpected '}}'" in err
    with psycopg.connect(dw_url) as dw:
        assert len(audit(dw)) == 2  # nothing ran


def test_sync_reads_a_sqlite_connection_at_its_absolute_path(cli: Any, tmp_path: Path, dw_url: str) -> None:
    """(item 12) AIRFLOW_CONN_X='sqlite:////abs/path.db' opened <cwd>/abs/path.db, an empty database
    that sqlite created there. Both URI forms Airflow and SQLAlchemy write name the absolute path."""
    db = tmp_path / "data" / "app.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(1, "ada"), (2, "bob")])
    configs = tmp_path / "configs"
    configs.mkdir()
    path = configs / "app.yaml"
    path.write_text(yaml.safe_dump({"name": "app", "kind": "sql", "conn_id": "app_db", "start_date": "2024-01-01",
                                    "tables": [{"name": "users", "table": "users"}]}))
    for uri in (f"sqlite:///{db}", f"sqlite://{db}"):  # sqlite:////abs (SQLAlchemy), sqlite:///abs (Airflow)
        code, out, err = cli("sync", str(path), "--date", "2024-01-02", "--lake", "lake", "--json",
                             env={"AIRFLOW_CONN_APP_DB": uri})
        assert code == 0 and out[0]["rows_loaded"] == 2, (uri, err)
    assert not (tmp_path / str(db).lstrip("/")).exists()  # no stray empty database below the working folder
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, name FROM users ORDER BY id").fetchall() == [(1, "ada"), (2, "bob")]
    code, _, err = cli("sync", str(path), "--lake", "lake", env={"AIRFLOW_CONN_APP_DB": f"sqlite:///{tmp_path}/nope.db"})
    assert code == 2 and f"AIRFLOW_CONN_APP_DB: no SQLite database at {tmp_path}/nope.db" in err, err
    assert not (tmp_path / "nope.db").exists()


def test_state_set_refuses_bad_values_with_a_clear_error(cli: Any, dw_url: str) -> None:
    """(item 14) A value that is no timestamp or number printed a traceback; a naive timestamp was
    stored although watermarks carry their zone. Now: exit 2, nothing stored; an aware one is stored in UTC."""
    where = ("state", "set", "--pipeline", "shop", "--table", "orders", "--cursor", "updated_at")
    for value, kind, message in [
            ("not-a-date", "timestamp", "error: --value 'not-a-date' is not an ISO-8601 timestamp"),
            ("2024-01-31T10:00:00", "timestamp", "error: --value '2024-01-31T10:00:00' has no time zone"),
            ("2024-01-31", "timestamp", "has no time zone: add one, e.g. 2024-01-31T00:00:00+00:00"),
            ("abc", "number", "error: --value 'abc' is not a number"),
            ("NaN", "number", "error: --value 'NaN' is not a finite number")]:
        code, _, err = cli(*where, "--value", value, "--type", kind)
        assert code == 2 and message in err and "Traceback" not in err, (value, err)
    with psycopg.connect(dw_url) as dw:  # refused before the warehouse was touched
        assert dw.execute("SELECT to_regclass('public.etl_state')").fetchone() == (None,)
    code, out, err = cli(*where, "--value", "2024-01-31T10:00:00+02:00")
    assert code == 0 and out == "shop.orders: updated_at = 2024-01-31T08:00:00.000000+00:00\n", err
    code, out, err = cli(*where, "--value", "42.50", "--type", "number")
    assert code == 0, err
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT value, value_type FROM etl_state").fetchall() == [("42.50", "number")]


def test_sync_names_an_unset_variable_of_base_path(cli: Any, tmp_path: Path) -> None:
    """(item 24) The run said `no file matches .../${NOPE}/files/x.csv`; now exit 2 naming the variable."""
    path = tmp_path / "files.yaml"
    path.write_text(yaml.safe_dump({"name": "files", "kind": "file", "start_date": "2024-01-01",
                                    "base_path": "${SNDW_TEST_NOPE_UNSET}/files",
                                    "tables": [{"name": "x", "path": "x.csv"}]}))
    code, _, err = cli("sync", str(path), "--lake", "lake", drop=("SNDW_TEST_NOPE_UNSET",))
    assert code == 2 and f"{path}: base_path: ${{SNDW_TEST_NOPE_UNSET}} is not set in the environment" in err, err
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("command", [["gaps", "CONFIG"], ["state", "list"], ["replay", "CONFIG"]])
def test_a_warehouse_that_cannot_be_reached_is_one_line_not_a_traceback(cli: Any, tmp_path: Path, dw_url: str,
                                                                        command: list[str]) -> None:
    parts = urlsplit(dw_url)
    closed = dw_url.replace(f":{parts.port}/", ":1/")  # nothing listens on port 1
    config = tmp_path / "src.yaml"
    config.write_text("name: src\nkind: sql\nconn_id: src\nstart_date: 2024-01-01\n"
                      "tables:\n  - {name: t, table: public.t}\n")
    (tmp_path / "lake" / "sql" / "src" / "t" / "2024-01-02").mkdir(parents=True)
    args = [str(config) if a == "CONFIG" else a for a in command]
    if "CONFIG" in command:
        args += ["--lake", str(tmp_path / "lake")]
    code, out, err = cli(*args, env={"AIRFLOW_CONN_DW": closed}, module="sndw.cli")
    assert code == 1, err
    assert err.strip().splitlines()[-1].startswith("error: PostgreSQL: "), err
    assert "Traceback" not in err, err
    no_secret(parts.password or "", err)
