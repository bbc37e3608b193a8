"""An API key sent as a query parameter and echoed back by the server in every encoding (URL-encoded,
base64, JSON-escaped, HTML) never shows: not in errors, etl_audit_log, the task log, XCom, the lake,
nor the CLI's output. The cases are tests/bad_inputs/secrets/audit_echo_cases.yaml."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from psycopg import sql
from sndw.audit import error_text, redact, register_secret, secret_variants
from sndw.config import HttpTable, table_spec
from sndw.errors import ExtractError
from sndw.extract.http import iter_http_batches, requests_client

from tests.conftest import ROOT, TEST_AIRFLOW_HOME, TEST_SOURCES, metadata_db, run, states
from tests.http_api import Req, Resp, TestApi, items

# Every character that one of the encodings changes: "!" and "/" (URL), '"' and "é" (JSON), " " and
# "+" (quote vs quote_plus), "&" and "<" (HTML, Go's JSON).
SECRET = 'Sup3r-S3cret-PW!"/é+ &<'
LOGIN = "robot"
PARAM = "q"  # not named like a secret: only the registry knows this value is one
CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "secrets" / "audit_echo_cases.yaml").read_text())


def forms(value: str) -> dict[str, str]:
    """How a server may echo ``value``: computed here, independently of the code under test."""
    return {
        "raw": value,
        "quote": quote(value, safe=""),
        "quote_slash": quote(value),
        "quote_plus": quote_plus(value),
        "quote_lower": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote_plus(value)),
        "json": json.dumps(value),
        "json_utf8": json.dumps(value, ensure_ascii=False),
        "json_php": json.dumps(value).replace("/", "\\/"),
        "b64": base64.b64encode(value.encode()).decode(),
        "b64_basic": base64.b64encode(f"{LOGIN}:{value}".encode()).decode(),
        "b64_json": base64.b64encode(json.dumps({"user": LOGIN, "key": value}).encode()).decode(),
        "quote_quote": quote(quote(value, safe=""), safe=""),
    }


def _u(char: str, upper: bool = False) -> str:
    """``char`` as a JSON ``\\u`` escape (a surrogate pair beyond the BMP)."""
    units = char.encode("utf-16-be")
    hexes = [f"{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2)]
    return "".join("\\u" + (h.upper() if upper else h) for h in hexes)


def escaped_forms(value: str) -> dict[str, str]:
    """How other encoders echo ``value`` (issue 21 item 6): JSON ``\\u`` escapes of some or all
    characters in either hex case (.NET escapes "+", "&", "<", ">", "'" and '"' with upper-case hex, Go
    "<", ">", "&" with lower-case), HTML numeric entities in decimal and hex. A character that JSON
    must escape is escaped in every JSON form, so the forms stay valid JSON string contents."""
    def plain(c: str) -> bool:
        return c.isascii() and c.isalnum()

    return {
        "json_dotnet": "".join(_u(c, True) if c in "+&<>'\"" or not c.isascii() else c for c in value),
        "json_every_char_upper": "".join(_u(c, True) for c in value),
        "json_alternate_lower": "".join(_u(c) if i % 2 or c in '"\\' else c for i, c in enumerate(value)),
        "html_decimal": "".join(c if plain(c) else f"&#{ord(c)};" for c in value),
        "html_hex": "".join(c if plain(c) else f"&#x{ord(c):X};" for c in value),
        "html_mixed": "".join(c if i % 3 == 0 and plain(c) else f"&#x{ord(c):04x};" if i % 3 == 1
                              else f"&#{ord(c)};" for i, c in enumerate(value)),
    }


FORMS = {**forms(SECRET), **escaped_forms(SECRET)}
# What must never show: each echoed form (JSON literals without their quotes), and the cores of the
# base64 forms (a slice of the middle, which any longer base64 text holding the key contains too).
NEEDLES = {**{k: v.strip('"') for k, v in FORMS.items()},
           **{f"{k}_core": FORMS[k][8:-8] for k in ("b64", "b64_basic", "b64_json")}}


def leaks(text: str) -> list[str]:
    return [name for name, needle in NEEDLES.items() if needle in text]


def body_of(case: dict[str, Any]) -> str:
    return str(case["body"]).format(**FORMS)


def spec(name: str, endpoint: str, **more: Any) -> HttpTable:
    table = table_spec("http", {"name": name, "endpoint": endpoint, "records_path": "data", "auth": "api_key_query",
                                "pagination": {"type": "page_number", "page_size": 20}, "retries": 1,
                                "backoff_seconds": 0.01, **more})
    assert isinstance(table, HttpTable)
    return table


def headers_of(case: dict[str, Any]) -> dict[str, str]:
    return {name: str(value).format(**FORMS) for name, value in (case.get("headers") or {}).items()}


def echo_route(status: int, body: str, headers: dict[str, str] | None = None) -> Any:
    """Page 1 is fine; page 2 answers ``status`` with ``body`` and ``headers`` (when the key came
    with the request)."""
    def route(req: Req) -> Resp:
        if req.query.get(PARAM) != SECRET:
            return Resp(401, {"error": "no key"})
        if req.arg("page", 1) == 1:
            return Resp(body={"data": items(1, 21)})
        return Resp(status, body, headers=dict(headers or {}),
                    content_type="text/html" if body.startswith("<") else "application/json")

    return route


def test_the_needles_are_distinct_encodings() -> None:
    """The check below is only worth something if the forms differ from the raw value and each other."""
    assert len({v for v in NEEDLES.values()}) == len(NEEDLES)
    assert all(SECRET not in v for k, v in NEEDLES.items() if k != "raw")


def test_every_registered_form_is_replaced_longest_first() -> None:
    register_secret(SECRET)
    for name, form in FORMS.items():
        text = redact(f"<< {form} >>")
        assert leaks(text) == [], (name, text)
        assert text.startswith("<< ") and text.endswith(" >>") and "***" in text, (name, text)
    assert redact("nothing secret here: Sup3r, PW, %21") == "nothing secret here: Sup3r, PW, %21"
    assert all(len(v) >= 5 for v in secret_variants(SECRET))
    assert register_secret("dw") == [] and redact("dw") == "dw"  # too short to mask (as in Airflow)


def test_unicode_escapes_and_html_entities_of_any_character_are_replaced() -> None:
    """Issue 21 item 6: the password .NET echoes as ``S3cr3t/p@ss\\u002Bw=rd\\u0026x``; any subset of
    the characters escaped, either hex case, leading zeros, entities with or without ";", and escapes
    mixed with the encodings already covered (a URL-encoded key inside a JSON string, \\u-escaped)."""
    value = "S3cr3t/p@ss+w=rd&x"
    register_secret(value)
    echoes = ["S3cr3t/p@ss\\u002Bw=rd\\u0026x", "S3cr3t/p@ss\\u002bw=rd\\u0026x",
              "\\u0053\\u0033cr3t\\/p\\u0040ss+w\\u003Drd&x", "S3cr3t/p@ss&#43;w=rd&#38;x",
              "S3cr3t&#x2F;p&#X40;ss&#x2b;w&#x003D;rd&amp;x", "S3cr3t/p@ss&#0043w=rd&#x26x",
              "S3cr3t%2Fp%40ss\\u002Bw%3drd\\u0026x", "S3cr3t\\u0025\\u0032Fp%40ss\\u0025\\u0032Bw%3Drd%26x",
              "S3cr3t\\\\u002Fp@ss+w=rd&x"]  # the last one a repr of a \\u escape
    echoes += list(escaped_forms(value).values()) + list(escaped_forms(SECRET).values())
    for echo in echoes:
        text = redact(f"<< {echo} >>")
        assert text == "<< *** >>", (echo, text)
    emoji = "Key-\U0001F511-9x!"
    register_secret(emoji)
    assert redact(json.dumps(emoji)) == '"***"' and redact(f"&#{ord(chr(0x1F511))};".join(emoji.split("\U0001F511"))) == "***"
    assert redact("S3cr3t/p@ss+w=rd&y and S3cr3t/p@ss\\u002Bw=rd") == "S3cr3t/p@ss+w=rd&y and S3cr3t/p@ss\\u002Bw=rd"


def test_a_basic_login_registers_its_token() -> None:
    register_secret("0ther-Pa55word!", login="svc")
    token = base64.b64encode(b"svc:0ther-Pa55word!").decode()
    assert redact(f"Authorization: {token}") == "Authorization: ***"


def test_a_value_after_a_password_key_is_masked_but_a_variable_reference_is_named() -> None:
    """Errors are redacted when they are made: "password: ${PW} is not set" must still name the
    variable (its name is no secret), while an unregistered value after such a key is masked, also
    when it starts with $."""
    assert redact("c.json: password: ${PW_UNSET} is not set") == "c.json: password: ${PW_UNSET} is not set"
    assert redact("password=$ecretValue; token: abc123xyz") == "password=***; token: ***"
    assert redact("password=${abc}def") == "password=***"


def test_registered_forms_reach_airflows_task_log_masker() -> None:
    from airflow.sdk.log import redact as airflow_redact
    from sndw_airflow.masking import mask_registered_secrets

    mask_registered_secrets()  # what importing the operators does
    value = "Airfl0w-Mask/Key!é+&"
    register_secret(value)
    # the literal forms Airflow's masker can hold: the escapes of every character that encoders write
    sent = {**forms(value), **{k: v for k, v in escaped_forms(value).items()
                               if k in ("json_dotnet", "json_every_char_upper", "html_decimal", "html_hex")}}
    for name, form in sent.items():
        form = form.strip('"')
        masked = str(airflow_redact(f"x {form} y"))
        # Airflow tries its patterns in no set order: a shorter form may leave a "Q==" of padding
        assert "***" in masked and form not in masked and form[4:-4] not in masked, (name, masked)


def test_the_sql_path_and_the_warehouse_register_their_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    from sndw.extract.sql import register_connection_password
    from sndw.settings import dw_url

    register_connection_password("host=db dbname=src user=etl password='Src-Pa55 w0rd!'")
    register_connection_password(f"postgresql://etl:{quote('Ur1-Pa55/w0rd', safe='')}@db/src")
    monkeypatch.setenv("AIRFLOW_CONN_DW", f"postgresql://dw:{quote('Dw-Env-Pa55!', safe='')}@db/dw")
    dw_url()
    monkeypatch.delenv("AIRFLOW_CONN_DW")
    monkeypatch.setenv("DW_HOST", "db")
    monkeypatch.setenv("DW_PASSWORD", "Dw-Var-Pa55#")
    assert quote("Dw-Var-Pa55#", safe="") in dw_url()
    for value in ("Src-Pa55 w0rd!", "Ur1-Pa55/w0rd", "Dw-Env-Pa55!", "Dw-Var-Pa55#"):
        for name, form in forms(value).items():
            masked = redact(f"failed: {form.strip(chr(34))}")
            middle = form[6:-6] if len(form) > 24 else form.strip('"')
            assert "***" in masked and value not in masked and middle not in masked, (value, name, masked)


def test_credential_headers_of_a_connector_are_registered() -> None:
    table = spec("h", "/h", auth="none")
    with requests_client("http://127.0.0.1:9", table, headers={"X-API-Key": "hdr-K3y-0987!", "Accept": "json/x"},
                         extra={"Authorization": "Token tok-XyZ-4455"}):
        pass
    assert redact(quote_plus("hdr-K3y-0987!")) == "***" and redact("tok-XyZ-4455") == "***"
    assert redact("json/x") == "json/x"  # an ordinary header stays as it is


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_echoed_key_is_masked_in_the_error(name: str, caplog: pytest.LogCaptureFixture) -> None:
    case = CASES[name]
    table = spec("echo", "/items")
    with TestApi({"/items": echo_route(case["status"], body_of(case), headers_of(case))}) as api:
        with requests_client(api.url, table, password=SECRET, extra={"api_key_param": PARAM}) as client, \
                pytest.raises(ExtractError) as info:
            list(iter_http_batches(client, table))
    message = str(info.value)
    for words in case["error_names"]:
        assert words in message, (words, message)
    assert "echo" in message and "page=2" in message
    assert message.count("***") >= case["masked"], message  # the echoes reached the message, masked
    assert leaks(message) == [] and leaks(error_text(info.value) or "") == [], message
    assert leaks(caplog.text) == [], caplog.text  # the retry warnings (503) show the body too


# ------------------------------------------------------------------- through Airflow and the CLI


def all_text(conn: psycopg.Connection, table: str) -> str:
    rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))).fetchall()
    return "\n".join(str(value) for row in rows for value in row if value is not None)


def lake_text(root: Path) -> str:
    """Everything the lake holds, decoded: Parquet rows and metadata, and every other file as text."""
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts.append(str(path))
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False))
            parts.append(str(pq.read_metadata(path).metadata))
        else:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def xcom_text(dag_id: str) -> str:
    with metadata_db() as db:
        rows = db.execute("SELECT task_id, key, value::text FROM xcom WHERE dag_id = %s", (dag_id,)).fetchall()
    return "\n".join(str(value) for row in rows for value in row)


def task_log_text(dag_id: str, captured: str) -> str:
    """The task logs: files under the tests' AIRFLOW_HOME/logs (if Airflow wrote any), and what the
    in-process runs of dag.test() printed."""
    files = [p for p in (TEST_AIRFLOW_HOME / "logs").rglob("*") if p.is_file() and dag_id in str(p)]
    return captured + "\n".join(p.read_text(errors="replace") for p in files)


@pytest.mark.slow
def test_no_form_of_the_key_leaves_a_dag_run(env: dict[str, Any], configs: list[Path], monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    bad = CASES["audit_echo_query_string_400"]
    flaky = CASES["audit_echo_every_form_503_after_retries"]
    json_echo = CASES["audit_echo_json_escaped_401"]
    escapes = CASES["audit_echo_unicode_escapes_and_entities_400"]
    retried = {"done": False}

    def good(req: Req) -> Resp:
        if req.arg("page", 1) == 2 and not retried["done"]:  # one 503 echoing the key, then the rest
            retried["done"] = True
            return Resp(503, body_of(flaky))
        return echo_route(200, "")(req) if req.arg("page", 1) == 1 else Resp(body={"data": []})

    routes = {"/good": good, "/bad": echo_route(bad["status"], body_of(bad)),
              "/json": echo_route(json_echo["status"], body_of(json_echo)),
              "/escapes": echo_route(escapes["status"], body_of(escapes))}
    with TestApi(routes) as api:
        connection = {"conn_type": "http", "host": "127.0.0.1", "port": api.port, "password": SECRET,
                      "extra": {"api_key_param": PARAM}}
        monkeypatch.setenv("AIRFLOW_CONN_SECRETS_API", json.dumps(connection))
        config = {"name": "secrets_echo", "kind": "http", "conn_id": "secrets_api", "start_date": "2024-01-01",
                  "retries": 0, "auth": "api_key_query", "tables": [
                      {"name": "good", "endpoint": "/good", "records_path": "data", "retries": 1,
                       "backoff_seconds": 0.01, "pagination": {"type": "page_number", "page_size": 20}},
                      {"name": "bad", "endpoint": "/bad", "records_path": "data", "retries": 0,
                       "pagination": {"type": "page_number", "page_size": 20}},
                      {"name": "json_echo", "endpoint": "/json", "records_path": "data", "retries": 0,
                       "pagination": {"type": "page_number", "page_size": 20}},
                      {"name": "escapes", "endpoint": "/escapes", "records_path": "data", "retries": 0,
                       "pagination": {"type": "page_number", "page_size": 20}}]}
        dag_run = run(config, configs)
        sent = [r for path in routes for r in api.requests_to(path)]
    captured = capfd.readouterr()
    assert states(dag_run) == {"extract_good": "success", "load_good": "success", "extract_bad": "failed",
                               "load_bad": "upstream_failed", "extract_json_echo": "failed",
                               "load_json_echo": "upstream_failed", "extract_escapes": "failed",
                               "load_escapes": "upstream_failed"}, states(dag_run)
    assert all(r.query.get(PARAM) == SECRET for r in sent)  # the key really went out, and came back
    with psycopg.connect(env["dw_url"]) as dw:
        audit = all_text(dw, "etl_audit_log")
        errors = dict(dw.execute("SELECT task_id, error_message FROM etl_audit_log WHERE status = 'failure'").fetchall())
        assert dw.execute("SELECT count(*) FROM good").fetchone() == (20,)
    assert set(errors) == {"extract_bad", "extract_json_echo", "extract_escapes"}
    assert "HTTP 400" in errors["extract_escapes"] and errors["extract_escapes"].count("***") >= escapes["masked"]
    assert "HTTP 400" in errors["extract_bad"] and errors["extract_bad"].count("***") >= bad["masked"]
    assert "HTTP 401" in errors["extract_json_echo"] and errors["extract_json_echo"].count("***") >= json_echo["masked"]
    assert leaks(audit) == [], audit
    logs = task_log_text("secrets_echo", captured.out + captured.err + caplog.text)
    assert "HTTP 503" in logs and "HTTP 400" in logs  # the retry warning and the failure are in the log
    assert leaks(logs) == []
    xcom = xcom_text("secrets_echo")
    assert "part-" in xcom  # extract_good's manifest
    assert leaks(xcom) == []
    lake = lake_text(env["lake"])
    assert "item 20" in lake  # the rows of the good table
    assert leaks(lake) == []


@pytest.mark.slow
def test_no_form_of_a_connection_password_leaves_airflow_dags_test(env: dict[str, Any], configs: list[Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What users run: ``airflow dags test`` prints every task's log, Airflow's own "Task failed with
    exception" traceback included. Airflow's masker does not act on that output (its console logging
    has no masking step), and dag.test writes no task log files: only the redaction of our messages
    where they are made keeps the password out. A PostgreSQL source whose URL holds the password
    (URL-encoded) on a closed port; an HTTP source whose server echoes it in an error body and in a
    redirect to another host."""
    redirect = CASES["audit_echo_redirect_to_another_host_302"]
    echo = CASES["audit_echo_query_string_400"]
    routes = {"/echo": echo_route(echo["status"], body_of(echo)),
              "/redirect": echo_route(redirect["status"], body_of(redirect), headers_of(redirect))}
    with TestApi(routes) as api:
        monkeypatch.setenv("AIRFLOW_CONN_SECRETS_PG", f"postgresql://{LOGIN}:{quote(SECRET, safe='')}@127.0.0.1:1/src")
        monkeypatch.setenv("AIRFLOW_CONN_SECRETS_HTTP", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": api.port, "password": SECRET,
            "extra": {"api_key_param": PARAM}}))
        http_table = {"records_path": "data", "retries": 0, "pagination": {"type": "page_number", "page_size": 20}}
        sources = {
            "secrets_pg": {"kind": "sql", "conn_id": "secrets_pg", "tables": [{"name": "t", "table": "public.t"}]},
            "secrets_http": {"kind": "http", "conn_id": "secrets_http", "auth": "api_key_query", "tables": [
                {"name": "echo", "endpoint": "/echo", **http_table},
                {"name": "redirect", "endpoint": "/redirect", **http_table}]}}
        outputs = {}
        for name, source in sources.items():
            path = TEST_SOURCES / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"name": name, "start_date": "2024-01-01", "retries": 0, **source}))
            configs.append(path)
            result = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "test", name, "2024-01-02"],
                                    env={**os.environ, "PYTHONPATH": str(ROOT / "include")}, capture_output=True,
                                    text=True, timeout=300, check=False)
            outputs[name] = task_log_text(name, result.stdout + result.stderr)
        assert len(api.requests_to("/redirect")) == 2 and len(api.requests_to("/echo")) == 2  # page 2 answered
    pg, http = outputs["secrets_pg"], outputs["secrets_http"]
    # the failures are in the output, Airflow's tracebacks with them
    assert "Task failed with exception" in pg and "cannot connect to the PostgreSQL source" in pg, pg[-3000:]
    assert http.count("Task failed with exception") == 2 and "HTTP 400" in http, http[-3000:]
    assert "the redirect from" in http and "elsewhere.invalid/login" in http
    assert leaks(pg) == [] and leaks(http) == [], [line for line in (pg + http).splitlines() if leaks(line)]


def cli(tmp_path: Path, dw_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_"))}
    env.update(PYTHONPATH=str(ROOT / "include"), AIRFLOW_CONN_DW=dw_url, API_TOKEN=SECRET)
    return subprocess.run([sys.executable, "-m", "sndw.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("name", ["audit_echo_query_string_400", "audit_echo_base64_403",
                                  "audit_echo_every_form_503_after_retries"])
def test_no_form_of_the_key_leaves_the_cli(name: str, tmp_path: Path, dw_url: str, dw: psycopg.Connection) -> None:
    case = CASES[name]
    connector = {"protocol": "http", "base_url": "", "auth": "api_key_query", "password": "${API_TOKEN}",
                 "extra": {"api_key_param": PARAM}, "records_path": "data", "retries": 1, "backoff_seconds": 0.01,
                 "pagination": {"type": "page_number", "page_size": 20}}
    with TestApi({"/items": echo_route(case["status"], body_of(case), headers_of(case))}) as api:
        (tmp_path / "connector.json").write_text(json.dumps({**connector, "base_url": api.url}))
        result = cli(tmp_path, dw_url, "run", "--config", "connector.json", "--query", "/items", "--source", "s",
                     "--table", "echo", "--lake", "lake")
        assert len(api.requests_to("/items")) >= 2
    out = json.loads(result.stdout)
    assert result.returncode == 1 and out["status"] == "failure" and out["audited"] is True, result.stderr
    for words in case["error_names"]:
        assert words in out["error"], (words, out["error"])
    assert out["error"].count("***") >= case["masked"]
    assert "FAILED (extract)" in result.stderr
    assert leaks(result.stdout) == [] and leaks(result.stderr) == [], result.stdout + result.stderr
    assert leaks(all_text(dw, "etl_audit_log")) == []
    assert leaks(lake_text(tmp_path / "lake")) == []


def test_test_connection_masks_the_key_in_a_connection_error(tmp_path: Path, dw_url: str) -> None:
    """requests puts the whole URL (the key URL-encoded in its query) into a connection error."""
    (tmp_path / "connector.json").write_text(json.dumps({
        "protocol": "http", "base_url": "http://127.0.0.1:9", "auth": "api_key_query", "password": "${API_TOKEN}",
        "extra": {"api_key_param": PARAM}}))
    result = cli(tmp_path, dw_url, "test-connection", "--config", "connector.json", "--query", "/items")
    out = json.loads(result.stdout)
    assert result.returncode == 1 and "ConnectionError" in out["error"] and "/items" in out["error"]
    assert f"{PARAM}=***" in out["error"]  # the query string was there, its value masked
    assert leaks(result.stdout + result.stderr) == []
