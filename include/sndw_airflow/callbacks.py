"""Task callbacks that record every attempt in etl_audit_log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sndw.audit import AuditRecord, error_text, write_audit_record
from sndw.settings import lake_root
from sndw.spool import flush_spool, spool_record

from sndw_airflow.context import attempt, partition_date, started_at

log = logging.getLogger(__name__)


def _record(context: Any, status: str) -> AuditRecord | None:
    task = context.get("task")
    describe = getattr(task, "audit_fields", None)
    if describe is None:
        return None
    fields = describe()
    result = getattr(task, "sndw_result", None) or {}
    exception = context.get("exception")
    return AuditRecord(
        pipeline_name=fields["pipeline_name"],
        source_name=fields["source_name"],
        protocol=fields["protocol"],
        target_table=fields["target_table"],
        status=status,
        started_at=started_at(context),
        finished_at=datetime.now(UTC),
        rows_loaded=result.get("rows_loaded"),
        parquet_files=result.get("files"),
        error_message=None if status == "success" else (exception or "task failed (no exception was passed)"),
        step=fields["step"],
        partition_date=partition_date(context),
        rows_extracted=result.get("rows_extracted"),
        bytes=result.get("bytes"),
        lake_paths=result.get("paths"),
        schema_changes=result.get("schema_changes"),
        rows_deleted=result.get("rows_deleted"),
        **attempt(context),
    )


def spool_root(task: Any) -> str:
    """The lake that holds the task's audit spool: its own ``lake_root``, else the default one."""
    return str(getattr(task, "lake_root", None) or lake_root())


def _write(context: Any, status: str) -> None:
    """Write the attempt's row, after the rows that waited in the spool (ids stay in time order);
    when the warehouse cannot be reached, spool the row so the next connection writes it."""
    record = _record(context, status)
    if record is None:
        return
    task = context["task"]
    root = spool_root(task)
    try:
        conn = task.dw_connection()
        try:
            try:
                flush_spool(conn, root)
            except Exception as exc:  # the spool waits for the next attempt; this row need not
                log.warning("audit: the spool in %s was not flushed: %s", root, error_text(exc))
            inserted = write_audit_record(conn, record)
        finally:
            conn.close()
    except Exception as exc:  # a callback must not hide the task's own outcome
        try:
            path = spool_record(root, record)
        except Exception:
            log.exception("could not write the audit row for %s, nor spool it in %s", record.attempt_key, root)
            return
        log.warning("audit: the warehouse is unreachable (%s); the row of %s waits in %s", error_text(exc),
                    record.attempt_key, path)
        return
    if inserted:
        log.info("audit: %s %s", status, record.attempt_key)


def audit_success(context: Any) -> None:
    """on_success_callback: the load wrote its row inside its own transaction; this adds the rest."""
    _write(context, "success")


def audit_failure(context: Any) -> None:
    """on_failure_callback: one failure row per failed attempt, with the (redacted) error."""
    _write(context, "failure")
