from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from sndw.audit import AuditRecord, error_text, redact, write_audit_record


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connection to postgresql://dw:S3cr3t!@db:5432/dw failed", "S3cr3t!"),
        ("password=hunter2 host=x", "hunter2"),
        ("headers: Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("url https://api.example.org/v1?api_key=K3Y123&x=1", "K3Y123"),
        ('token: "t0k3n-value"', "t0k3n-value"),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and "***" in cleaned


def test_error_text_is_bounded_and_typed() -> None:
    assert error_text(ValueError("x" * 10_000)).startswith("ValueError: x")  # type: ignore[union-attr]
    assert len(error_text("y" * 10_000) or "") == 4000


def test_seed_columns_and_one_row_per_attempt(dw: psycopg.Connection) -> None:
    started = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    record = AuditRecord("pipe", "src", "http", "public.t", "failure", started, error_message="boom password=x1",
                         dag_id="d", task_id="t", airflow_run_id="r", try_number=1)
    assert write_audit_record(dw, record) is True
    assert write_audit_record(dw, record) is False  # the same attempt is recorded once
    record.try_number = 2
    assert write_audit_record(dw, record) is True
    # The seed's example query works as written.
    rows = dw.execute("""
        SELECT pipeline_name, source_name, status, rows_loaded, started_at, finished_at - started_at AS duration
        FROM etl_audit_log ORDER BY started_at DESC""").fetchall()
    assert len(rows) == 2 and rows[0][:3] == ("pipe", "src", "failure")
    assert dw.execute("SELECT error_message FROM etl_audit_log LIMIT 1").fetchone() == ("boom password=***",)
    with pytest.raises(psycopg.errors.CheckViolation):
        write_audit_record(dw, AuditRecord("p", "s", "x", "t", "maybe", started))


def test_the_etl_page_s_indexes_are_made_once_and_never_wait_for_a_load(dw: psycopg.Connection, dw_url: str) -> None:
    """ensure_audit_table creates the indexes the ETL page reads through (sndw.stats.overview), and
    a later call, as every audited attempt makes, does not wait for a load's open transaction."""
    from sndw.audit import AUDIT_INDEXES, ensure_audit_table

    started = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    write_audit_record(dw, AuditRecord("pipe", "src", "http", "public.t", "success", started))
    dw.commit()
    found = {r[0] for r in dw.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'etl_audit_log'")}
    dw.commit()
    assert set(AUDIT_INDEXES) <= found
    with psycopg.connect(dw_url) as load:  # a load's transaction: its audit row is written, not committed
        load.execute("INSERT INTO etl_audit_log (run_id, pipeline_name, source_name, protocol, target_table, status, "
                     "started_at) VALUES ('r', 'pipe', 'src', 'http', 'public.t', 'success', now())")
        dw.execute("SET lock_timeout = '2s'")
        ensure_audit_table(dw)  # CREATE INDEX would wait for the load (lock_timeout: an error here)
        dw.commit()
        load.rollback()
    plan = "\n".join(r[0] for r in dw.execute(
        "EXPLAIN SELECT * FROM etl_audit_log WHERE pipeline_name = 'pipe' AND target_table = 'public.t' "
        "AND status = 'failure' ORDER BY pipeline_name DESC, target_table DESC, id DESC LIMIT 1").fetchall())
    assert "etl_audit_log_table_failures" in plan or "etl_audit_log_table_latest" in plan, plan
