"""One load, one transaction: the table's DDL, the rows (by the write mode), what acts on them
before the commit (quality checks), the watermark and the audit row commit together or not at all.
Loads into the same table are serialised with a transaction-level advisory lock."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from sndw import storage
from sndw.audit import AuditRecord, audit_table, ensure_audit_table, insert_audit_row
from sndw.checkstats import RowStats
from sndw.ddl import create_schema
from sndw.errors import EmptyExtractError, LoadError, PartitionReplacedError, PermanentError
from sndw.lake import Manifest, partition_rows, reading_partition
from sndw.naming import PARTITION_DATE, advisory_lock_key
from sndw.quality import (
    CheckScope,
    QualityCheckError,
    ResultContext,
    insert_results,
    rejected_table_name,
    run_checks,
    summary,
    write_results,
)
from sndw.state import Watermark, save_watermark
from sndw.transform import BatchTransform, load_transform, output_schema
from sndw.warehouse.contract import apply_contract
from sndw.warehouse.deletes import DeleteScope, apply_deletes, before_write, ensure_deleted_at
from sndw.warehouse.lineage import ensure_lake_files_table
from sndw.warehouse.modes import WRITERS
from sndw.warehouse.spec import LoadResult, LoadSpec
from sndw.warehouse.tables import evolve_table, table_columns

log = logging.getLogger(__name__)



def _check_files(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise PermanentError(
            f"lake files of this load are missing (the partition was replaced by a newer extract, or "
            f"deleted): {', '.join(missing[:5])}; run the extract again")


def _check_not_empty(cur: psycopg.Cursor[Any], spec: LoadSpec, partition: date, exists: bool) -> None:
    """A replace of rows (the table's, or the date's) by nothing is refused unless the table allows
    it: an empty extract is far more often a broken export than a source that really emptied. Into
    an empty table or date (a quiet day, a table not made yet) it loads 0 rows. Made under the
    load's table lock, so no other load fills the table between this check and the write."""
    if spec.write_mode not in ("replace", "partition") or spec.allow_empty or not exists:
        return
    where: sql.Composable = sql.SQL("")
    params: tuple[Any, ...] = ()
    if spec.write_mode == "partition":
        where = sql.SQL(" WHERE {} = %s").format(sql.Identifier(PARTITION_DATE))
        params = (partition,)
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}{})").format(spec.ident(), where), params)
    row = cur.fetchone()
    if not (row and row[0]):
        return
    what = "the table" if spec.write_mode == "replace" else f"its partition {partition}"
    raise EmptyExtractError(
        f"{spec.qualified}: the lake partition {partition} has 0 rows; a {spec.write_mode} load would "
        f"empty {what}, which holds rows, so nothing was loaded and the table is unchanged. If the source "
        "can really become empty, set 'allow_empty: true' on this table in the source config")


def load_files(conn: psycopg.Connection[Any], paths: Sequence[str], spec: LoadSpec, *, partition: date,
               run_id: str | None = None, audit: AuditRecord | None = None,
               audit_schema: str = "public", batch_rows: int = 100_000,
               watermark: Watermark | None = None, state_key: tuple[str, str] | None = None,
               key_paths: Sequence[str] = (), source_count: int | None = None) -> LoadResult:
    """Load exactly ``paths`` into the warehouse in one transaction.

    ``key_paths``: the source's key set files of an incremental table with ``deletes``
    (sndw.warehouse.deletes); without them the rows of this load are the key set.
    ``source_count``: the source's own count of the rows (the manifest's), for a ``source_count`` check.

    The same transaction writes the audit row (if given) and advances the watermark of
    ``state_key`` (pipeline, table) to ``watermark`` (incremental tables). A manifest whose load
    already committed (a retry after a crash just past the commit) is not loaded twice.
    """
    started = time.perf_counter()
    _check_files([*paths, *key_paths])
    empty = not partition_rows(paths)
    if isinstance(spec.transform, str):  # imported before anything is written: a bad one changes nothing
        spec = replace(spec, transform=load_transform(spec.transform))
    transform = spec.transform if isinstance(spec.transform, BatchTransform) else None
    if audit is not None:
        ensure_audit_table(conn, audit_schema)
    ensure_lake_files_table(conn)
    if spec.checks:
        from sndw.quality import ensure_results_table

        ensure_results_table(conn, audit_schema)
    result = LoadResult(table=spec.qualified, write_mode=spec.write_mode, rows_loaded=0, files=len(paths))
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (advisory_lock_key(spec.schema, spec.table),))
            if audit is not None and audit.manifest_id and _already_loaded(cur, audit, audit_schema):
                log.warning("%s: manifest %s is already loaded (a retry after its commit): nothing to do",
                            spec.qualified, audit.manifest_id)
                result.skipped = True
                return result
            create_schema(cur, spec.schema)
            before = table_columns(cur, spec.schema, spec.table)
            exists = bool(before)
            if empty:
                _check_not_empty(cur, spec, partition, exists)
            deletes: DeleteScope | None = None
            if not paths and not exists:
                log.info("%s: nothing to load and no table yet", spec.qualified)
            else:
                dropped: set[str] = set()
                names: list[str] = []
                for path in paths:  # evolve with each file's schema: types may differ across files
                    schema = (output_schema(transform, spec.qualified, path, batch_rows) if transform
                              else storage.read_schema(path))
                    names += schema.names
                    schema, discarded = apply_contract(spec, schema, before)
                    dropped.update(c["column"] for c in discarded)
                    result.schema_changes.extend(c for c in discarded if c not in result.schema_changes)
                    _, changes = evolve_table(cur, spec, schema)
                    result.schema_changes.extend(changes)
                if dropped:
                    spec = replace(spec, drop_columns=frozenset(dropped))
                if spec.deletes:
                    result.schema_changes.extend(ensure_deleted_at(cur, spec, names))
                columns = table_columns(cur, spec.schema, spec.table)
                if spec.deletes:
                    deletes = before_write(cur, spec, partition, key_paths)
                result.observed = _row_stats(cur, spec, exists)
                WRITERS[spec.write_mode](cur, spec, paths, columns, partition, run_id, result, batch_rows)
                if deletes is not None:  # before the checks: they see the rows as they will commit
                    result.rows_deleted = apply_deletes(cur, spec, partition, result, columns, deletes, batch_rows)
            before_commit(cur, spec, partition, run_id, result, audit, audit_schema, source_count)
            if watermark is not None and state_key is not None:
                save_watermark(cur, state_key[0], state_key[1], watermark, run_id, audit_schema)
            if audit is not None:
                audit.rows_loaded = result.rows_loaded
                audit.rows_rejected = result.rows_rejected if spec.checks else None
                audit.rows_deleted = result.rows_deleted
                audit.parquet_files = len(paths)
                audit.schema_changes = result.schema_changes
                audit.finished_at = datetime.now(UTC)
                insert_audit_row(cur, audit, audit_schema)
    except psycopg.Error as exc:
        raise LoadError(f"loading {spec.qualified} failed and was rolled back: {exc}") from exc
    except QualityCheckError as exc:  # rolled back: its results are still recorded, in a transaction of their own
        write_results(conn, exc.results, _result_context(spec, partition, run_id, audit), committed=False,
                      schema=audit_schema)
        raise
    result.seconds = time.perf_counter() - started
    if result.nul_replaced:
        log.warning("%s: %d text values held NUL bytes, replaced by U+FFFD", spec.qualified, result.nul_replaced)
    log.info("%s: %d rows loaded (%s) from %d files in %.2fs", spec.qualified, result.rows_loaded,
             spec.write_mode, len(paths), result.seconds)
    return result


def _row_stats(cur: psycopg.Cursor[Any], spec: LoadSpec, exists: bool) -> RowStats | None:
    """What the checks can learn from the rows as they are copied (sndw.checkstats); None when
    they read everything from the table: no checks, or soft deletes (they keep rows the load did
    not copy among the rows checked)."""
    if not spec.checks or spec.deletes == "soft":
        return None
    stats = RowStats(spec.checks)
    if not stats.wanted:
        return None
    if spec.write_mode in ("replace", "partition"):
        stats.alone = True  # the rows where `unique` looks are this load's
    elif any(c.kind == "unique" for c in spec.checks):  # append, merge: the table had no rows before
        stats.alone = not exists or not _scalar_bool(
            cur, sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(spec.ident()))
    return stats


def _scalar_bool(cur: psycopg.Cursor[Any], statement: sql.Composed) -> bool:
    cur.execute(statement)
    row = cur.fetchone()
    return bool(row and row[0])


def before_commit(cur: psycopg.Cursor[Any], spec: LoadSpec, partition: date, run_id: str | None,
                  result: LoadResult, audit: AuditRecord | None, audit_schema: str,
                  source_count: int | None = None) -> None:
    """What acts on the rows of this load inside its transaction, after they are written and
    before the commit: the quality checks (a failing block check raises QualityCheckError and
    the whole load rolls back). The deletes of rows the source no longer has (sndw.warehouse.deletes)
    ran just before, so the checks see the rows as they will commit."""
    if not spec.checks:
        return
    mode = spec.write_mode
    scope = CheckScope(spec.schema, spec.table, partition, primary_key=spec.primary_key,
                       file_ids=None if mode in ("replace", "partition") else result.file_ids,
                       by_partition=mode == "partition", source_count=source_count,
                       rows_written=result.rows_loaded, observed=result.observed,
                       replaces_partition=mode == "append_partition")
    started = time.perf_counter()
    results, rejected = run_checks(cur, spec.checks, scope, audit_schema=audit_schema)
    result.checks_seconds = time.perf_counter() - started
    result.checks = summary(results)
    result.rows_rejected = rejected
    result.rows_loaded -= rejected
    if any(r.blocks for r in results):
        raise QualityCheckError(spec.qualified, partition, results)
    insert_results(cur, results, _result_context(spec, partition, run_id, audit), committed=True,
                   schema=audit_schema)
    if rejected:
        log.warning("%s: %d rows failed quarantine checks and went to %s.%s", spec.qualified, rejected,
                    spec.schema, rejected_table_name(spec.table))


def _result_context(spec: LoadSpec, partition: date, run_id: str | None, audit: AuditRecord | None) -> ResultContext:
    return ResultContext(spec.qualified, partition, run_id=(audit.airflow_run_id or run_id) if audit else run_id,
                         attempt_key=audit.attempt_key if audit else None,
                         pipeline=audit.pipeline_name if audit else None, source=audit.source_name if audit else None)


def _already_loaded(cur: psycopg.Cursor[Any], audit: AuditRecord, audit_schema: str) -> bool:
    cur.execute(sql.SQL("SELECT 1 FROM {} WHERE manifest_id = %s AND target_table = %s "
                        "AND status = 'success' LIMIT 1").format(audit_table(audit_schema)),
                (audit.manifest_id, audit.target_table))
    return cur.fetchone() is not None


def load_manifest(conn: psycopg.Connection[Any], manifest: Manifest | dict[str, Any], spec: LoadSpec, *,
                  audit: AuditRecord | None = None, audit_schema: str = "public",
                  state_key: tuple[str, str] | None = None) -> LoadResult:
    """Load one extract's manifest: its files, and its watermark when the table is incremental."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    if audit is not None:
        audit.manifest_id = m.manifest_id
    try:
        # Another run's re-extract of this partition waits for this load before it replaces the files.
        with reading_partition(m.paths):
            _check_not_replaced(m, spec)
            return load_files(conn, m.paths, spec, partition=m.partition_date, run_id=m.run_id, audit=audit,
                              audit_schema=audit_schema, watermark=Watermark.from_dict(m.watermark),
                              state_key=state_key, key_paths=m.key_paths, source_count=m.source_count)
    except FileNotFoundError as exc:  # an object store's parts, deleted by a newer publication mid-load
        if all(storage.exists(p) for p in m.paths):
            raise
        raise PartitionReplacedError(_replaced_message(m, spec, "while this load read it")) from exc


def _check_not_replaced(m: Manifest, spec: LoadSpec) -> None:
    if m.paths and not all(storage.exists(p) for p in m.paths):
        raise PartitionReplacedError(_replaced_message(m, spec, "before this load read it"))


def _replaced_message(m: Manifest, spec: LoadSpec, when: str) -> str:
    gone = [p for p in m.paths if not storage.exists(p)]
    return (f"{spec.qualified}: lake partition {m.partition} of {m.protocol}/{m.source}/{m.table} was replaced by "
            f"another extract of the same partition (another run) {when}: the files of this run's extract "
            f"(manifest {m.manifest_id}) are gone ({', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}). Nothing "
            "was loaded and the table is unchanged; the newer extract is loaded by its own run's load (run the "
            "extract again to load this partition from here)")


