"""One change capture run of a source: its first snapshot, or the changes since the last one applied.

The first run creates the slot, which exports a snapshot of the source at the slot's starting
point; every table is read in that snapshot and loaded (``replace``) through the ordinary pipeline
(``sndw.runner.run_table``). The position is stored only when every table is loaded; a run that
stops before that leaves no position, and the next run drops the slot and starts again.

Each later run reads the waiting changes into the lake (``changes.read_changes``), applies every
table's changes and stores the new position in ONE warehouse transaction (with each table's quality
checks and audit row), and only after that commit confirms the position to the slot. A run killed
between the two re-reads those changes next time and skips them by the stored position: every
change is applied once.

The position lives in ``etl_state`` (pipeline = the source, table = ``cdc:<slot>``; its
``updated_at`` is when it was last confirmed), the tables the snapshot covered in ``cdc:<slot>:tables``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from sndw.audit import AuditRecord, ensure_audit_table, error_text, insert_audit_row, redact
from sndw.cdc.slot import (
    CdcError,
    CdcTable,
    advance_slot,
    connect,
    drop_slot,
    ensure_publication,
    exported_snapshot,
    slot_info,
    slot_names,
    source_tables,
)
from sndw.config import SqlSource, SqlTable
from sndw.ddl import create_schema
from sndw.errors import LoadError
from sndw.naming import advisory_lock_key, qualified
from sndw.state import STATE_DDL, Watermark, ensure_state_table, save_watermark, state_table

log = logging.getLogger(__name__)


def state_keys(slot: str) -> tuple[str, str]:
    return f"cdc:{slot}", f"cdc:{slot}:tables"


def read_state(conn: psycopg.Connection[Any], pipeline: str, slot: str) -> tuple[str | None, list[str], datetime | None]:
    """The stored position, the tables its snapshot covered, and when it was last confirmed."""
    ensure_state_table(conn)
    position_key, tables_key = state_keys(slot)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT table_name, value, updated_at FROM {} WHERE pipeline_name = %s "
                            "AND table_name IN (%s, %s)").format(state_table()), (pipeline, position_key, tables_key))
        rows = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    position, confirmed = rows.get(position_key, (None, None))
    tables = json.loads(rows[tables_key][0]) if tables_key in rows and rows[tables_key][0] else []
    return position, tables, confirmed


def _save_position(cur: psycopg.Cursor[Any], pipeline: str, slot: str, position: str, run_id: str,
                   tables: list[str] | None = None) -> None:
    position_key, tables_key = state_keys(slot)
    save_watermark(cur, pipeline, position_key, Watermark("lsn", position, "text"), run_id)
    if tables is not None:
        save_watermark(cur, pipeline, tables_key, Watermark("tables", json.dumps(tables), "text"), run_id)


def _result(source: SqlSource, spec: SqlTable, **values: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": "success", "pipeline": source.name, "source": source.name, "protocol": "sql",
        "target_table": qualified(source.target_schema, spec.target), "write_mode": "cdc",
        "rows_extracted": 0, "rows_loaded": 0, "rows_deleted": 0, "changes": 0, "schema_changes": [],
        "error": None, "seconds": 0.0}
    result.update(values)
    return result


def sync_cdc(source: SqlSource, access: Any, *, url: str, lake: str, partition: date,
             before_confirm: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One run of a CDC source: the snapshot (first run) or the waiting changes. One result per
    table (as ``runner.run_table`` gives). ``before_confirm`` runs between the warehouse commit and
    the slot's confirmation (tests kill a run there)."""
    conninfo = access.postgres_conninfo
    if conninfo is None:
        raise CdcError(f"source {source.name}: cdc needs a PostgreSQL source connection")
    slot, publication = slot_names(source)
    pipeline = source.name
    with connect(conninfo) as src:
        tables = source_tables(src, source)  # refuses, by name, before anything runs
        ensure_publication(src, publication, tables)
        info = slot_info(src, slot)
        try:
            with psycopg.connect(url) as dw:
                position, covered, _ = read_state(dw, pipeline, slot)
        except psycopg.OperationalError as exc:  # nothing read yet: the run changes nothing
            raise LoadError(f"source {source.name}: the warehouse cannot be reached: {redact(str(exc))}") from None
        if position is None:
            if info is not None:
                log.warning("slot %s exists but no snapshot of it was completed: it is dropped and made again", slot)
                drop_slot(src, slot)
            return _snapshot(source, tables, access, slot, url=url, lake=lake, partition=partition)
    if info is None:
        raise CdcError(f"source {source.name}: replication slot {slot} is gone (dropped, or lost in a failover) "
                       f"after position {position}: changes since then may be lost. Take a new snapshot with "
                       f"`sndw cdc reset <config>`, then sync")
    new = [t.spec.name for t in tables if t.spec.name not in covered]
    if new:
        raise CdcError(f"source {source.name}: table(s) {', '.join(new)} were added after the snapshot, so their "
                       "existing rows were never read: take a new snapshot of every table with `sndw cdc reset "
                       "<config>`, then sync")
    return _changes(source, tables, conninfo, slot, publication, position, url=url, lake=lake,
                    partition=partition, before_confirm=before_confirm)


def _snapshot(source: SqlSource, tables: list[CdcTable], access: Any, slot: str, *, url: str, lake: str,
              partition: date) -> list[dict[str, Any]]:
    from sndw.runner import run_table

    results: list[dict[str, Any]] = []
    run_id = uuid.uuid4().hex
    with exported_snapshot(access.postgres_conninfo, slot) as (snapshot, position):
        in_snapshot = replace(access, postgres_snapshot=snapshot)
        for table in tables:
            spec = table.spec.model_copy(update={"write_mode": "replace", "allow_empty": True,
                                                 "primary_key": list(table.key)})
            result = run_table(url=url, pipeline=source.name, source=source.name, kind="sql", table=spec,
                               access=in_snapshot, lake=lake, schema=source.target_schema, partition=partition,
                               what=f"{table.spec.name} (cdc snapshot at {position})")
            result["write_mode"] = "cdc snapshot"
            results.append(result)
            if result["status"] != "success":
                break
    if any(r["status"] != "success" for r in results):
        try:  # no position stored: the next run starts again; the slot must not hold WAL meanwhile
            with connect(access.postgres_conninfo) as src:
                drop_slot(src, slot)
        except (CdcError, psycopg.Error) as exc:
            log.warning("slot %s was not dropped after the failed snapshot: %s", slot, error_text(exc))
        return results
    _record_snapshots(source, tables, lake, partition, position)
    with psycopg.connect(url) as dw, dw.transaction(), dw.cursor() as cur:
        _save_position(cur, source.name, slot, position, run_id, [t.spec.name for t in tables])
    log.info("cdc %s: snapshot of %d tables at %s", source.name, len(tables), position)
    return results


def _record_snapshots(source: SqlSource, tables: list[CdcTable], lake: str, partition: date, position: str) -> None:
    """Beside each table's change partitions, which snapshot partition they start from (``sndw replay``)."""
    from sndw.cdc.changes import SnapshotRecord, write_snapshot_record
    from sndw.lake import file_manifest_id, partition_files

    for table in tables:
        paths = partition_files(lake, "sql", source.name, table.spec.name, partition)
        record = SnapshotRecord(lsn=position, partition=partition.isoformat(),
                                manifest_id=file_manifest_id(paths[0]) if paths else None, key=list(table.key))
        write_snapshot_record(lake, source.name, table.spec.name, record)


def _changes(source: SqlSource, tables: list[CdcTable], conninfo: str, slot: str, publication: str,
             position: str, *, url: str, lake: str, partition: date,
             before_confirm: Callable[[], None] | None) -> list[dict[str, Any]]:
    from sndw.cdc.apply import Applied, apply_changes
    from sndw.cdc.changes import read_changes
    from sndw.warehouse import LoadResult, LoadSpec, before_commit, ensure_lake_files_table

    started, clock = datetime.now(UTC), time.perf_counter()
    run_id = uuid.uuid4().hex
    audits = {t.spec.name: AuditRecord(pipeline_name=source.name, source_name=source.name, protocol="sql",
                                       target_table=qualified(source.target_schema, t.spec.target), status="success",
                                       started_at=started, step="extract", partition_date=partition, run_id=run_id,
                                       attempt_id=f"cdc|{run_id}|{t.spec.name}")
              for t in tables}
    results = {t.spec.name: _result(source, t.spec) for t in tables}
    try:
        read = read_changes(conninfo, slot, publication, tables, position, lake_root=lake, source=source.name,
                            partition=partition, run_id=run_id)
        with psycopg.connect(url) as dw:
            ensure_audit_table(dw)
            ensure_lake_files_table(dw)
            if any(t.spec.checks for t in tables):
                from sndw.quality import ensure_results_table

                ensure_results_table(dw)
            with dw.transaction(), dw.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sndw:cdc:{slot}",))
                cur.execute(sql.SQL(STATE_DDL).format(table=state_table()))
                cur.execute(sql.SQL("SELECT value FROM {} WHERE pipeline_name = %s AND table_name = %s").format(
                    state_table()), (source.name, state_keys(slot)[0]))
                row = cur.fetchone()
                if row is None or row[0] != position:
                    raise CdcError(f"source {source.name}: another run applied changes of slot {slot} meanwhile "
                                   "(the position moved): run again")
                for table in tables:
                    name = table.spec.name
                    audit, result = audits[name], results[name]
                    audit.step = "load"
                    spec = LoadSpec(schema=source.target_schema, table=table.spec.target, write_mode="merge",
                                    primary_key=list(table.key), checks=table.spec.checks)
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                (advisory_lock_key(spec.schema, spec.table),))
                    create_schema(cur, spec.schema)
                    manifest = read.manifests.get(name)
                    paths = manifest.paths if manifest else []
                    applied = apply_changes(cur, spec, paths, partition, run_id) if paths else Applied(file_ids=[])
                    loaded = LoadResult(table=spec.qualified, write_mode="merge", rows_loaded=applied.rows_upserted,
                                        files=len(paths), schema_changes=applied.schema_changes or [],
                                        file_ids=applied.file_ids or [])
                    if paths:
                        before_commit(cur, spec, partition, run_id, loaded, audit, "public")
                    audit.rows_extracted, audit.lake_paths = applied.changes, paths
                    audit.rows_loaded, audit.parquet_files = loaded.rows_loaded, len(paths)
                    audit.schema_changes = loaded.schema_changes
                    audit.rows_rejected = loaded.rows_rejected if spec.checks else None
                    audit.finished_at = datetime.now(UTC)
                    insert_audit_row(cur, audit)
                    result.update(rows_extracted=applied.changes, changes=applied.changes,
                                  rows_loaded=loaded.rows_loaded, rows_deleted=applied.rows_deleted,
                                  truncates=applied.truncates, schema_changes=loaded.schema_changes,
                                  lake_paths=paths)
                    if loaded.checks is not None:
                        result.update(checks=loaded.checks, rows_rejected=loaded.rows_rejected)
                _save_position(cur, source.name, slot, read.position, run_id)
    except Exception as exc:  # every table's audit row says so (spooled when the warehouse is down)
        _audit_failure(url, lake, list(audits.values()), results, exc, time.perf_counter() - clock)
        return list(results.values())
    if before_confirm is not None:
        before_confirm()
    try:
        with connect(conninfo) as src:
            advance_slot(src, slot, read.position)
    except (CdcError, psycopg.Error) as exc:  # applied and stored: the next run skips what it re-reads
        log.warning("slot %s was not advanced to %s (the next run re-reads and skips those changes): %s",
                    slot, read.position, error_text(exc))
    seconds = round(time.perf_counter() - clock, 3)
    for result in results.values():
        result.update(seconds=seconds, position=read.position)
    return list(results.values())


def audit_refused_run(source: SqlSource, url: str, lake: str, partition: date, exc: Exception) -> list[dict[str, Any]]:
    """The failure rows (spooled when the warehouse is down) and results of a run that failed before
    it read a change: a table refused, a lost slot, an unreachable source or warehouse. The command
    line's; a DAG run's task callbacks record its attempts."""
    started, run_id = datetime.now(UTC), uuid.uuid4().hex
    audits = [AuditRecord(pipeline_name=source.name, source_name=source.name, protocol="sql",
                          target_table=qualified(source.target_schema, t.target), status="failure", started_at=started,
                          step="extract", partition_date=partition, run_id=run_id, attempt_id=f"cdc|{run_id}|{t.name}")
              for t in source.tables]
    results = {t.name: _result(source, t) for t in source.tables}
    _audit_failure(url, lake, audits, results, exc, 0.0)
    return list(results.values())


def _audit_failure(url: str, lake: str, audits: list[AuditRecord], results: dict[str, dict[str, Any]],
                   exc: Exception, seconds: float) -> None:
    from sndw.runner import _flush
    from sndw.spool import flush_spool, spool_record

    message = error_text(exc)
    for audit in audits:
        audit.status, audit.error_message, audit.finished_at = "failure", message, datetime.now(UTC)
    for audit, result in zip(audits, results.values(), strict=True):
        result.update(status="failure", step=audit.step, error=message, rows_loaded=0, seconds=round(seconds, 3))
    try:
        with psycopg.connect(url) as conn:
            _flush(conn, lake, flush_spool)
            ensure_audit_table(conn)
            with conn.transaction(), conn.cursor() as cur:
                for audit in audits:
                    insert_audit_row(cur, audit)
    except (psycopg.Error, OSError) as audit_exc:
        for audit, result in zip(audits, results.values(), strict=True):
            result["audit_error"] = error_text(audit_exc)
            try:  # the next run that reaches the warehouse writes it
                result["audit_spooled"] = str(spool_record(lake, audit))
            except OSError as spool_exc:
                result["audit_spool_error"] = error_text(spool_exc)


def cdc_status(source: SqlSource, access: Any, url: str) -> dict[str, Any]:
    """The slot as the source sees it (WAL it retains, changes not confirmed yet) and the position the
    warehouse stored, with how long ago it was confirmed."""
    slot, publication = slot_names(source)
    with connect(access.postgres_conninfo) as src:
        info = slot_info(src, slot)
    with psycopg.connect(url) as dw:
        position, covered, confirmed = read_state(dw, source.name, slot)
    age = (datetime.now(UTC) - confirmed).total_seconds() if confirmed else None
    return {"source": source.name, "slot": slot, "publication": publication, "exists": info is not None,
            "active": info["active"] if info else None, "wal_status": info["wal_status"] if info else None,
            "retained_wal_bytes": info["retained_bytes"] if info else None,
            "pending_wal_bytes": info["pending_bytes"] if info else None,
            "confirmed_flush_lsn": info["confirmed_flush_lsn"] if info else None,
            "stored_position": position, "tables": covered, "last_confirmed_at": confirmed,
            "seconds_since_confirmed": round(age, 1) if age is not None else None}


def cdc_reset(source: SqlSource, access: Any, url: str) -> dict[str, Any]:
    """Drop the slot (its retained WAL is freed) and forget the stored position: the next run takes a
    new snapshot of every table."""
    slot, _ = slot_names(source)
    with connect(access.postgres_conninfo) as src:
        dropped = drop_slot(src, slot)
    forgotten = forget_position(url, source)
    return {"source": source.name, "slot": slot, "slot_dropped": dropped, "state_rows_removed": forgotten}


def forget_position(url: str, source: SqlSource) -> int:
    """Remove the warehouse's stored position of the source's slot (the next run takes a snapshot)."""
    slot, _ = slot_names(source)
    with psycopg.connect(url) as dw:
        ensure_state_table(dw)
        with dw.transaction(), dw.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE pipeline_name = %s AND table_name IN (%s, %s)").format(
                state_table()), (source.name, *state_keys(slot)))
            return cur.rowcount
