"""Task callbacks that record every attempt in etl_audit_log, and send the source's alerts.

An attempt whose process was killed reports nothing itself. Measured with Airflow 3.3 and the
LocalExecutor: when the task process dies by SIGKILL, its supervisor writes the signal in the
attempt's log; then either the supervisor marks the attempt failed or up for retry and no callback
runs at all, or the scheduler, told by the executor first, does so itself and the DAG processor runs
the failure or retry callback without an exception (as it does when the heartbeat is lost). Both
leave one row that says what happened: the signal from the attempt's log (or the heartbeat lost) and
whether a retry follows; the callback writes it, else the next attempt (``audit_previous_attempt``,
an on_execute_callback), which also sends the alert of a killed attempt that a retry followed.
"""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sndw.audit import AuditRecord, error_text, write_audit_record
from sndw.settings import lake_root
from sndw.spool import flush_spool, spool_record

from sndw_airflow import notify
from sndw_airflow.context import attempt, partition_date, started_at

log = logging.getLogger(__name__)

UNREPORTED = "the attempt ended without reporting an error"


def _ti(context: Any) -> Any:
    return context.get("ti") or context.get("task_instance")


def retry_text(try_number: int | None, max_tries: int | None, retry: bool) -> str:
    """``attempt 1 of 3, a retry follows`` (Airflow's max_tries counts the retries)."""
    of = f" of {max_tries + 1}" if isinstance(max_tries, int) else ""
    return f"attempt {try_number}{of}, {'a retry follows' if retry else 'no retry follows'}"


def attempt_log(ti: Any, try_number: int) -> Path | None:
    """The local log file of one attempt (Airflow's [logging] base_log_folder and filename template)."""
    try:
        import jinja2
        from airflow.configuration import conf

        name = jinja2.Template(conf.get("logging", "log_filename_template")).render(ti=ti, try_number=try_number)
        return Path(conf.get("logging", "base_log_folder")) / name
    except Exception:  # a template that needs what this ti lacks: no local log to read
        return None


def exit_reason(ti: Any, try_number: int) -> tuple[str | None, datetime | None]:
    """What the supervisor wrote in the attempt's log when its process ended without a word (the
    signal that killed it, or its exit code), and the log's first time; (None, None) without a log."""
    path = attempt_log(ti, try_number)
    if path is None or not path.is_file():
        return None, None
    reason = None
    first: datetime | None = None
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if first is None and isinstance(entry.get("timestamp"), str):
                first = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
            event = str(entry.get("event", ""))
            if event.startswith("Process terminated by signal") and entry.get("signal") is not None:
                number = abs(int(entry["signal"]))
                name = entry.get("signal_name") or signal.Signals(number).name
                reason = f"its process was killed by {name} (signal {number})"
                if number == signal.SIGKILL:
                    reason += ": the kernel's out-of-memory killer, or kill -9"
            elif event.startswith("Process exited abnormally") and entry.get("exit_code") is not None:
                reason = f"its process exited with code {entry['exit_code']} without reporting an error"
    return reason, first


def unreported_error(ti: Any, try_number: int | None, retry: bool, heartbeat_lost: bool) -> str:
    """The error of an attempt that reported none: killed by which signal, or the heartbeat lost."""
    reason, _ = exit_reason(ti, try_number) if try_number else (None, None)
    if reason is None:
        reason = ("its heartbeat was lost: the task process and its supervisor stopped (killed, out of memory, "
                  "or the worker went away) and the scheduler failed it" if heartbeat_lost else
                  "its process ended without reporting (killed, or out of memory); no exit status in its log")
    return (f"{UNREPORTED}: {reason}; "
            f"{retry_text(try_number, getattr(ti, 'max_tries', None), retry)}")


def _record(context: Any, status: str, retry: bool = False) -> AuditRecord | None:
    task = context.get("task")
    describe = getattr(task, "audit_fields", None)
    if describe is None:
        return None
    fields = describe()
    result = getattr(task, "sndw_result", None) or {}
    exception = context.get("exception")
    if status == "failure" and exception is None:
        # No exception: the DAG processor runs this after the scheduler found the attempt without heartbeat.
        ti = _ti(context)
        exception = unreported_error(ti, getattr(ti, "try_number", None), retry, heartbeat_lost=True)
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
        error_message=None if status == "success" else exception,
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


def _write(context: Any, status: str, retry: bool = False) -> AuditRecord | None:
    """Write the attempt's row, after the rows that waited in the spool (ids stay in time order);
    when the warehouse cannot be reached, spool the row so the next connection writes it."""
    record = _record(context, status, retry)
    if record is None:
        return None
    _store(context["task"], record)
    return record


def _store(task: Any, record: AuditRecord) -> bool:
    """Write ``record`` (or spool it); whether a new row was written (or spooled)."""
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
            return False
        log.warning("audit: the warehouse is unreachable (%s); the row of %s waits in %s", error_text(exc),
                    record.attempt_key, path)
        return True
    if inserted:
        log.info("audit: %s %s", record.status, record.attempt_key)
    return inserted


def _alert(context: Any, record: AuditRecord, retry: bool) -> None:
    """The source's notify: every failed attempt (``failure``), the last one (``retry_exhausted``)."""
    task = context["task"]
    config = getattr(task, "sndw_notify", None)
    if not notify.wanted(config, "failure", *(() if retry else ("retry_exhausted",))):
        return
    ti = _ti(context)
    subject, text = notify.attempt_message(
        task.audit_fields(), record.partition_date, error_text(record.error_message),
        retry_text(record.try_number, getattr(ti, "max_tries", None), retry), getattr(ti, "log_url", None))
    notify.send(config, subject, text, context)


def audit_success(context: Any) -> None:
    """on_success_callback: the load wrote its row inside its own transaction; this adds the rest."""
    _write(context, "success")


def audit_failure(context: Any) -> None:
    """on_failure_callback: one failure row per failed attempt, with the (redacted) error; no retry follows."""
    record = _write(context, "failure")
    if record is not None:
        _alert(context, record, retry=False)


def audit_retry(context: Any) -> None:
    """on_retry_callback: the failure row of an attempt that a retry follows."""
    record = _write(context, "failure", retry=True)
    # Without an exception this runs in the DAG processor for an attempt that ended without reporting;
    # the attempt that follows announces it (audit_previous_attempt), in a task process, once.
    if record is not None and context.get("exception") is not None:
        _alert(context, record, retry=True)


def audit_previous_attempt(context: Any) -> None:
    """on_execute_callback: the row of the attempt before this one when it has none, because its
    process was killed and no callback ran (Airflow 3.3 runs none when only the task process dies)."""
    task = context.get("task")
    ti = _ti(context)
    try_number = getattr(ti, "try_number", None)
    if getattr(task, "audit_fields", None) is None or not isinstance(try_number, int) or try_number < 2:
        return
    previous = try_number - 1
    reason, first = exit_reason(ti, previous)
    if reason is None:
        found = attempt_log(ti, previous)
        reason = ("its process ended without reporting (killed, or out of memory)" if found and found.is_file() else
                  "it ended without reporting and left no log here (killed on another worker, or marked failed by hand)")
    error = (f"{UNREPORTED}: {reason}"
             f"; {retry_text(previous, getattr(ti, 'max_tries', None), retry=True)} (attempt {try_number})")
    fields = task.audit_fields()
    record = AuditRecord(
        pipeline_name=fields["pipeline_name"], source_name=fields["source_name"], protocol=fields["protocol"],
        target_table=fields["target_table"], status="failure", started_at=first or datetime.now(UTC),
        finished_at=datetime.now(UTC), error_message=error, step=fields["step"], partition_date=partition_date(context),
        **{**attempt(context), "try_number": previous})
    try:
        conn = task.dw_connection()
        try:
            announce = write_audit_record(conn, record)  # the attempt before had no row: no callback ran
            if not announce:  # a row from the DAG processor's callback (the scheduler saw the attempt end)
                row = conn.execute("SELECT error_message FROM etl_audit_log WHERE attempt_key = %s",
                                   (record.attempt_key,)).fetchone()
                announce = bool(row and str(row[0] or "").startswith(UNREPORTED))
                record.error_message = row[0] if announce and row else record.error_message
        finally:
            conn.close()
    except Exception as exc:  # a callback must not hide the task's own outcome
        log.warning("audit: attempt %s not checked: %s", record.attempt_key, error_text(exc))
        return
    if announce:
        log.info("audit: attempt %s ended without reporting: %s", record.attempt_key, record.error_message)
        _alert(context, record, retry=True)
