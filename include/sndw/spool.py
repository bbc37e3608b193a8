"""The audit spool: audit rows that could not reach the warehouse wait in the lake until it is back.

One JSON file per attempt under ``<lake_root>/_audit_spool/``, named by a hash of the attempt key
and written atomically (a temporary file, fsync, rename): a reader never sees half a record. A
flush inserts each file's row in a transaction of its own and deletes the file only after that
commit; rows are unique by attempt key, so a flush that stopped half-way and runs again adds no
duplicate. Error messages are redacted before they are written: the spool holds no secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import fields, replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by flush_spool: Airflow's callbacks module imports this one at parse time
    import psycopg

from sndw import storage
from sndw.audit import AuditRecord, ensure_audit_table, error_text, insert_audit_row

log = logging.getLogger(__name__)

SPOOL_DIR = "_audit_spool"
SPOOL_VERSION = 1
REJECTED_SUFFIX = ".rejected"
STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died

_DATETIMES = ("started_at", "finished_at")
_DATES = ("partition_date",)


def spool_dir(lake_root: str | os.PathLike[str]) -> Path:
    """``<lake>/_audit_spool``; for a lake on an object store, a local folder (``SNDW_AUDIT_SPOOL_DIR``,
    else the system's temporary folder): the spool must be writable when nothing else is."""
    if storage.is_url(lake_root):
        configured = os.environ.get("SNDW_AUDIT_SPOOL_DIR")
        return Path(configured) if configured else Path(tempfile.gettempdir()) / "sndw" / SPOOL_DIR
    return Path(lake_root) / SPOOL_DIR


def spooled_files(lake_root: str | os.PathLike[str]) -> list[Path]:
    """The records waiting to be written (not the rejected ones, not the half-written ones)."""
    folder = spool_dir(lake_root)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def record_to_json(record: AuditRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"version": SPOOL_VERSION}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name == "error_message":
            value = error_text(value)  # an exception object becomes its redacted, bounded text
        elif isinstance(value, (datetime, date)):
            value = value.isoformat()
        data[f.name] = value
    data["attempt_id"] = record.attempt_key
    return data


def record_from_json(data: Any) -> AuditRecord:
    """The record of one spool file; ValueError/TypeError when the file is not one."""
    if not isinstance(data, dict) or data.get("version") != SPOOL_VERSION:
        raise ValueError(f"not an audit spool record of version {SPOOL_VERSION}")
    names = {f.name for f in fields(AuditRecord)}
    unknown = sorted(set(data) - names - {"version"})
    if unknown:
        raise ValueError(f"unknown fields {', '.join(unknown)}")
    values = {k: v for k, v in data.items() if k in names}
    for name in _DATETIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    for name in _DATES:
        if values.get(name) is not None:
            values[name] = date.fromisoformat(values[name])
    record = AuditRecord(**values)
    if record.attempt_key is None:
        raise ValueError("the record has no attempt key")
    return record


def spool_record(lake_root: str | os.PathLike[str], record: AuditRecord) -> Path:
    """Write ``record`` to the spool (atomically; the same attempt replaces its earlier file)."""
    if record.attempt_key is None:  # a CLI record without one: its run id makes it unique
        record = replace(record, attempt_id=f"run|{record.run_id}|{record.step or ''}|{record.status}")
    key = record.attempt_key
    assert key is not None
    folder = spool_dir(lake_root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    tmp = folder / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "x", encoding="utf-8") as file:
            json.dump(record_to_json(record), file, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return path


def flush_spool(conn: psycopg.Connection[Any], lake_root: str | os.PathLike[str], schema: str = "public") -> int:
    """Write every spooled record into ``etl_audit_log``, oldest first; returns how many files it
    cleared. A file that is not a valid record is renamed ``*.rejected`` (kept for a person to
    read) and named in a warning; a lost connection propagates with the rest left for next time.
    """
    import psycopg
    from psycopg.pq import TransactionStatus

    folder = spool_dir(lake_root)
    if not folder.is_dir():
        return 0
    _remove_stale_tmp(folder)
    pending: list[tuple[datetime, Path, AuditRecord]] = []
    for path in spooled_files(lake_root):
        try:
            record = record_from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:  # another flush took it
            continue
        except (OSError, ValueError, TypeError) as exc:
            _reject(path, f"{type(exc).__name__}: {exc}")
            continue
        pending.append((record.finished_at or record.started_at, path, record))
    if not pending:
        return 0
    if not conn.autocommit and conn.info.transaction_status != TransactionStatus.IDLE:
        # a commit here would only release a savepoint: files would go before their rows are safe
        raise RuntimeError("flush_spool needs a connection outside a transaction")
    ensure_audit_table(conn, schema)
    cleared = 0
    for _, path, record in sorted(pending, key=lambda p: (p[0].timestamp(), p[1].name)):
        try:
            with conn.transaction(), conn.cursor() as cur:
                insert_audit_row(cur, record, schema)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            _reject(path, error_text(exc) or "")
            continue
        path.unlink(missing_ok=True)  # only now: the row is committed
        cleared += 1
    if cleared:
        log.info("audit spool: %d waiting rows written from %s", cleared, folder)
    return cleared


def _reject(path: Path, reason: str) -> None:
    log.warning("audit spool: %s is not a valid audit record (%s); renamed to %s%s", path, reason,
                path.name, REJECTED_SUFFIX)
    try:
        os.replace(path, path.with_name(path.name + REJECTED_SUFFIX))
    except OSError:
        pass


def _remove_stale_tmp(folder: Path) -> None:
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in folder.glob(".*.tmp-*"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
