"""Alerts through Airflow's own notifiers (a source's ``notify:``) and freshness (``freshness:``).

Real parts: a local SMTP server (aiosmtpd) behind the smtp provider's SmtpNotifier, a plain HTTP
server on 127.0.0.1 that the apprise provider's AppriseNotifier posts to (``json://``), a real
PostgreSQL, and the DAGs run by Airflow's dag.test().
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.audit import AuditRecord, ensure_audit_table, insert_audit_row, register_secret
from sndw.config import parse_source
from sndw.freshness import check, measure, stored

from tests.conftest import DAY, TEST_DAGS, TEST_SOURCES, run, states

SECRET = "Zq81-tok3n-Wv5"  # registered as a secret: it must never reach a message
URL_PASSWORD = "Pa55-w0rd-77"  # in userinfo of a URL: masked by the redaction's patterns


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """aiosmtpd on 127.0.0.1 (no TLS, no auth) as the Airflow connection ``smtp_t``; the mails it got."""
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            received.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_T", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "sndw@localhost", "timeout": 10}}))
    try:
        yield received
    finally:
        controller.stop()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A plain HTTP server on 127.0.0.1 that keeps what is POSTed; the apprise connection ``apprise_t``
    points at it with apprise's json:// scheme (as a Slack or Teams webhook would be configured)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_APPRISE_T", json.dumps({
        "conn_type": "apprise", "extra": {"config": {"path": f"json://127.0.0.1:{port}/"}}}))
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


NOTIFY = {"on": ["failure", "retry_exhausted", "freshness"], "smtp": {"conn_id": "smtp_t", "to": ["ops@localhost"]},
          "apprise": {"conn_id": "apprise_t"}}


def failing_source(tmp_path: Path) -> dict[str, Any]:
    """A CSV whose ``qty`` holds a value that is no bigint and carries secrets: the load fails naming it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "orders.csv").write_text(f"id,qty\n1,5\n2,postgresql://loader:{URL_PASSWORD}@db/x?{SECRET}\n")
    return {"name": "notify_csv", "kind": "file", "base_path": str(data), "schedule": "@daily",
            "start_date": "2024-01-01", "retries": 0, "notify": NOTIFY,
            "tables": [{"name": "orders", "path": "orders.csv", "write_mode": "partition",
                        "column_types": {"qty": "bigint"}}]}


def test_a_bare_on_key_is_the_notify_events() -> None:
    from sndw.config import load_source_file

    source = load_source_file(Path(__file__).parent / "bad_inputs" / "configs" / "notify_on_bare_key.yaml")
    assert source.notify is not None and source.notify.on == ["retry_exhausted"]
    assert source.notify.apprise is not None and source.notify.apprise.conn_id == "slack"
    assert source.freshness is not None and source.freshness.error_seconds == 48 * 3600


def _no_secret(text: str) -> None:
    assert SECRET not in text and URL_PASSWORD not in text, text


def test_a_failed_load_is_mailed_and_posted_with_source_table_partition_error_and_log_link(
        env: dict[str, Any], configs: list[Path], tmp_path: Path, smtp_server: list[Any],
        webhook: list[dict[str, Any]]) -> None:
    register_secret(SECRET)
    dag_run = run(failing_source(tmp_path), configs)
    failed = [t for t, s in states(dag_run).items() if s == "failed"]
    assert failed, states(dag_run)
    # One message per failed attempt and channel (failure and retry_exhausted are one message).
    assert len(smtp_server) == len(failed) and len(webhook) == len(failed), (smtp_server, webhook)
    recipients, mail = smtp_server[0]
    assert recipients == ["ops@localhost"]
    subject = str(mail["subject"])
    body = mail.get_body(("html", "plain")).get_content()
    post = webhook[0]
    for text in (subject + body, json.dumps(post)):
        _no_secret(text)
    assert "notify_csv" in subject and "failed" in subject and "attempt 1 of 1, no retry follows" in subject
    for text in (body, post["message"]):
        assert "notify_csv" in text and "Table:     lake:file/notify_csv/orders" in text  # the extract failed
        assert f"Partition: {DAY.date().isoformat()}" in text
        assert "qty" in text  # the error names the column
        assert "/dags/notify_csv/runs/" in text and "/tasks/" in text  # Airflow's log URL of the attempt
    assert post["title"] == subject
    with psycopg.connect(env["dw_url"]) as dw:
        error = dw.execute("SELECT error_message FROM etl_audit_log WHERE status = 'failure'").fetchone()
    assert error and error[0].split("\n")[0][:60] in post["message"]


def test_a_channel_that_is_down_does_not_change_the_task_outcome_or_its_audit_row(
        env: dict[str, Any], configs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_T", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "sndw@localhost", "timeout": 3}}))
    config = failing_source(tmp_path)
    config["notify"] = {"smtp": {"conn_id": "smtp_t", "to": "ops@localhost"}}
    dag_run = run(config, configs)
    assert states(dag_run)["extract_orders"] == "failed"
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*) FROM etl_audit_log WHERE step = 'extract' AND status = 'failure'"
                          ).fetchone() == (1,)


# ------------------------------------------------------------------ freshness


def fresh_source(**freshness: Any) -> Any:
    return parse_source({"name": "fresh_src", "kind": "file", "schedule": "@daily", "start_date": "2024-01-01",
                         "freshness": freshness, "notify": NOTIFY,
                         "tables": [{"name": "orders", "path": "orders.csv", "write_mode": "partition"},
                                    {"name": "lines", "path": "lines.csv",
                                     "freshness": {"warn_after": "2h", "column": "shipped_at"}}]}, "fresh_src.yaml")


def load_row(conn: psycopg.Connection, table: str, finished: datetime, status: str = "success") -> None:
    ensure_audit_table(conn)
    with conn.transaction(), conn.cursor() as cur:
        insert_audit_row(cur, AuditRecord("fresh_src", "fresh_src", "file", table, status, finished - timedelta(minutes=1),
                                          finished_at=finished, step="load", partition_date=finished.date(),
                                          rows_loaded=1))


def test_freshness_warns_errors_and_recovers_once_each(dw: psycopg.Connection) -> None:
    source = fresh_source(warn_after="26h", error_after="48h")
    loaded = datetime(2024, 5, 1, 6, tzinfo=UTC)
    load_row(dw, "public.orders", loaded)
    load_row(dw, "public.orders", loaded + timedelta(hours=2), status="failure")  # a failure does not count
    dw.execute("CREATE TABLE lines (id int, shipped_at timestamptz)")
    dw.execute("INSERT INTO lines VALUES (1, %s), (2, %s)", (loaded - timedelta(hours=5), loaded))
    dw.commit()
    announced: list[list[Any]] = []

    def at(hours: float) -> dict[str, Any]:
        results = check(dw, [source], now=loaded + timedelta(hours=hours), announce=announced.append)
        return {r.table: r for r in results}

    first = at(1)
    assert (first["public.orders"].status, first["public.orders"].alert) == ("fresh", None)
    assert first["public.orders"].loaded_at == loaded and first["public.orders"].age_seconds == 3600
    # The table's own policy: 1h on the newest shipped_at (the source's thresholds do not apply).
    assert (first["public.lines"].status, first["public.lines"].measured_by) == ("fresh", "column shipped_at")
    assert announced == []
    second = at(30)
    assert (second["public.orders"].status, second["public.orders"].alert) == ("warn", "breach")
    assert (second["public.lines"].status, second["public.lines"].alert) == ("warn", "breach")
    assert {r.table for r in announced[-1]} == {"public.orders", "public.lines"}
    assert "past warn_after 26h" in announced[-1][0].describe()
    count = len(announced)
    assert at(31)["public.orders"].alert is None and len(announced) == count  # still warn: said once
    escalated = at(50)["public.orders"]
    assert (escalated.status, escalated.previous, escalated.alert) == ("error", "warn", "breach")
    assert [r.table for r in announced[-1]] == ["public.orders"]
    health = stored(dw, ["fresh_src"])["fresh_src"]
    assert health["public.orders"]["status"] == "error" and health["public.lines"]["status"] == "warn"
    load_row(dw, "public.orders", loaded + timedelta(hours=51))
    recovered = at(52)["public.orders"]
    assert (recovered.status, recovered.previous, recovered.alert) == ("fresh", "error", "recovery")
    assert "fresh again" in recovered.describe()
    count = len(announced)
    assert at(53)["public.orders"].alert is None
    assert all(r.table != "public.orders" for batch in announced[count:] for r in batch)


def test_an_alert_that_cannot_be_sent_records_nothing(dw: psycopg.Connection) -> None:
    source = fresh_source(error_after="2h")
    load_row(dw, "public.orders", datetime(2024, 5, 1, tzinfo=UTC))

    def down(changed: list[Any]) -> None:
        raise ConnectionError("the mail server is down")

    with pytest.raises(ConnectionError):
        check(dw, [source], now=datetime(2024, 5, 2, tzinfo=UTC), announce=down)
    assert stored(dw, ["fresh_src"]) == {}
    again: list[list[Any]] = []
    check(dw, [source], now=datetime(2024, 5, 2, tzinfo=UTC), announce=again.append)
    assert [r.alert for r in again[0] if r.table == "public.orders"] == ["breach"]


def test_a_table_never_loaded_is_past_every_threshold_and_a_bad_column_is_named(dw: psycopg.Connection) -> None:
    source = fresh_source(warn_after="26h", error_after="48h")
    results = {r.table: r for r in measure(dw, source)}
    assert results["public.orders"].status == "error" and results["public.orders"].loaded_at is None
    assert "has never been loaded" in results["public.orders"].describe()
    dw.execute("CREATE TABLE lines (id int, shipped_at text)")
    with pytest.raises(ValueError, match="fresh_src.*lines.*shipped_at.*text, not a date or timestamp"):
        measure(dw, source)


def test_the_freshness_dag_alerts_once_per_breach_and_once_on_recovery(
        env: dict[str, Any], configs: list[Path], webhook: list[dict[str, Any]]) -> None:
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    config = {"name": "fresh_dag", "kind": "file", "schedule": "@daily", "start_date": "2024-01-01",
              "freshness": {"warn_after": "26h", "error_after": "48h"},
              "notify": {"on": ["freshness"], "apprise": {"conn_id": "apprise_t"}},
              "tables": [{"name": "orders", "path": "orders.csv", "write_mode": "partition"}]}
    path = TEST_SOURCES / "fresh_dag.yaml"
    path.write_text(yaml.safe_dump(config))
    configs.append(path)
    with psycopg.connect(env["dw_url"]) as dw:
        ensure_audit_table(dw)
        stale = datetime.now(UTC) - timedelta(hours=30)
        with dw.transaction(), dw.cursor() as cur:
            insert_audit_row(cur, AuditRecord("fresh_dag", "fresh_dag", "file", "public.orders", "success", stale,
                                              finished_at=stale, step="load"))
    dag = DagBag(dag_folder=str(TEST_DAGS / "sndw_maintenance.py")).get_dag("sndw_freshness")
    assert dag is not None
    assert states(dag.test()) == {"check_freshness": "success"}
    assert len(webhook) == 1, webhook
    assert webhook[0]["title"] == "[sndw] fresh_dag: public.orders is stale (warn: past warn_after 26h)"
    assert "Age:         30.0 h" in webhook[0]["message"] and "/dags/sndw_freshness/runs/" in webhook[0]["message"]
    assert states(dag.test()) == {"check_freshness": "success"}
    assert len(webhook) == 1, webhook  # the same breach: not announced again
    with psycopg.connect(env["dw_url"]) as dw, dw.transaction(), dw.cursor() as cur:
        now = datetime.now(UTC)
        insert_audit_row(cur, AuditRecord("fresh_dag", "fresh_dag", "file", "public.orders", "success", now,
                                          finished_at=now, step="load"))
    assert states(dag.test()) == {"check_freshness": "success"}
    assert [w["title"] for w in webhook[1:]] == ["[sndw] fresh_dag: public.orders is fresh again"]
