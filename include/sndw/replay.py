"""Rebuild warehouse tables from the Parquet partitions already in the lake, without the source."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sndw.audit import AuditRecord
from sndw.config import FileSource, HttpSource, SqlSource, TableBase
from sndw.errors import LoadError, SndwError
from sndw.lake import file_manifest_id, file_run_id, partition_dates, partition_files, partition_key_files
from sndw.naming import LAKE_FILES_TABLE, qualified
from sndw.warehouse import LoadResult, LoadSpec, before_commit, load_files
from sndw.warehouse.lineage import lake_files_table

log = logging.getLogger(__name__)

Source = HttpSource | SqlSource | FileSource


def find_table(source: Source, name: str) -> TableBase:
    for table in source.tables:
        if table.name == name:
            return table
    raise SndwError(f"source {source.name!r} has no table {name!r}: {', '.join(t.name for t in source.tables)}")


def replay_table(conn: psycopg.Connection[Any], source: Source, table: TableBase, lake_root: str | Path,
                 date_from: date | None = None, date_to: date | None = None,
                 run_label: str = "replay") -> list[LoadResult]:
    """Load the lake's partitions of one table, as its write mode would have, in one transaction.

    ``partition`` and ``merge`` replay every partition in the range; ``append`` replaces each
    replayed date's rows; ``replace`` loads the partition loaded last (a full refresh). The order is
    the live loads' (``_load_order``), so the result equals what the original runs produced,
    ``_loaded_at`` aside; a partition that fails leaves the table as it was.
    """
    if isinstance(source, SqlSource) and source.cdc is not None:
        if date_from is not None:
            raise SndwError(f"{source.name}.{table.name}: a cdc table is replayed from its snapshot on: leave out --from")
        return replay_cdc_table(conn, source, table, lake_root, date_to, run_label)
    dates = [d for d in partition_dates(lake_root, source.kind, source.name, table.name)
             if (date_from is None or d >= date_from) and (date_to is None or d <= date_to)]
    if not dates:
        raise SndwError(f"the lake has no partition of {source.name}.{table.name} in the range "
                        f"{date_from or 'start'}..{date_to or 'end'} under {lake_root}")
    mode = "append_partition" if table.write_mode == "append" else table.write_mode
    # The table's transform as the config names it now: the lake holds the data as extracted.
    spec = LoadSpec(source.target_schema, table.target, mode, table.key_columns, allow_empty=table.allow_empty,
                    transform=table.transform, deletes=table.deletes,
                    max_delete_fraction=table.max_delete_fraction, schema_contract=table.schema_contract,
                    # source_count compares an extract with the source: a replay has no source to ask.
                    checks=[c for c in table.checks if c.kind != "source_count"])
    results = []
    replay_id = uuid.uuid4().hex[:12]
    with conn.transaction():  # all of the table's partitions or none: a failed date leaves the table as it was
        dates = _load_order(conn, source, table, lake_root, dates)
        for day in dates[-1:] if table.write_mode == "replace" else dates:
            results.append(_replay_partition(conn, source, table, spec, lake_root, day, run_label, replay_id))
    return results


def _load_order(conn: psycopg.Connection[Any], source: Source, table: TableBase, lake_root: str | Path,
                dates: list[date]) -> list[date]:
    """``dates`` in the order the live runs first loaded their current files (``etl_lake_files``), which
    is what the table shows: a backfill of an older date after a newer one was loaded last, and wins
    in a merge or a replace. Dates whose files no load registered (a lake replayed into a new
    warehouse) come first, by date."""
    row = conn.execute("SELECT to_regclass(%s)", (f"public.{LAKE_FILES_TABLE}",)).fetchone()
    if not row or row[0] is None:
        return dates
    registered = {(_name(path), day): at for path, day, at in conn.execute(
        sql.SQL("SELECT lake_path, partition_date, registered_at FROM {} WHERE target_table = %s").format(
            lake_files_table()), (qualified(source.target_schema, table.target),)).fetchall()}
    loaded: dict[date, Any] = {}
    for day in dates:
        times = [registered.get((_name(p), day)) for p in partition_files(lake_root, source.kind, source.name,
                                                                          table.name, day)]
        found = [t for t in times if t is not None]
        if found and len(found) == len(times):
            loaded[day] = max(found)
    return sorted(dates, key=lambda d: (d in loaded, loaded.get(d) or datetime.min.replace(tzinfo=UTC), d))


def _name(path: str) -> str:
    """A lake file's name (local path or object-store URL): unique, it carries its extract's id."""
    return str(path).rsplit("/", 1)[-1]


def _replay_partition(conn: psycopg.Connection[Any], source: Source, table: TableBase, spec: LoadSpec,
                      lake_root: str | Path, day: date, run_label: str, replay_id: str) -> LoadResult:
    """One partition loaded as its write mode would, with its audit row."""
    paths = [str(p) for p in partition_files(lake_root, source.kind, source.name, table.name, day)]
    run_id = file_run_id(paths[0]) if paths else None
    audit = AuditRecord(
        pipeline_name=source.name, source_name=source.name, protocol=source.kind,
        target_table=qualified(spec.schema, spec.table), status="success",
        started_at=datetime.now(UTC), step="replay", partition_date=day, lake_paths=paths,
        dag_id=source.name, task_id=f"replay_{table.name}", airflow_run_id=f"{run_label}:{replay_id}:{day}",
        try_number=1,
    )
    # An incremental table's deletes replay with the key set its extract kept beside the rows.
    key_paths = partition_key_files(lake_root, source.kind, source.name, table.name, day) if table.deletes else []
    result = load_files(conn, paths, spec, partition=day, run_id=run_id, audit=audit, key_paths=key_paths)
    log.info("replayed %s partition %s: %d rows", spec.qualified, day, result.rows_loaded)
    return result


def replay_cdc_table(conn: psycopg.Connection[Any], source: SqlSource, table: TableBase, lake_root: str | Path,
                     date_to: date | None = None, run_label: str = "replay") -> list[LoadResult]:
    """Rebuild a CDC table in ONE transaction: its newest recorded snapshot (up to ``date_to``) loaded
    as a ``replace``, then every change partition read after it in LSN order, applied as the live run
    applies them (``sndw.cdc.apply``). A transaction present in two partitions (a run whose apply
    failed, re-read by the next) is applied once. One result (and audit row) per partition."""
    from sndw.audit import insert_audit_row
    from sndw.cdc.apply import apply_changes
    from sndw.cdc.changes import change_partitions, snapshot_records

    lake = str(lake_root)
    label = f"{source.name}.{table.name}"
    records = snapshot_records(lake, source.name, table.name)
    usable = [r for r in records if date_to is None or date.fromisoformat(r.partition) <= date_to]
    if not usable:
        raise SndwError(f"the lake has no recorded snapshot of the cdc table {label}"
                        + (f" up to {date_to}" if date_to else "") + f" under {lake_root}: a sync takes one "
                        "(`sndw cdc reset` first if the source already has a position)")
    snapshot = usable[-1]
    later = [r.lsn_value for r in records if r.lsn_value > snapshot.lsn_value]
    day = date.fromisoformat(snapshot.partition)
    paths = partition_files(lake, "sql", source.name, table.name, day)
    if snapshot.manifest_id is not None and (not paths or file_manifest_id(paths[0]) != snapshot.manifest_id):
        raise SndwError(f"{label}: the snapshot partition {day} under {lake_root} is no longer the snapshot taken at "
                        f"{snapshot.lsn} (a later snapshot replaced it): replay without --to, or to a later date")
    changes = [(upto, d, files) for upto, d, files in change_partitions(lake, source.name, table.name)
               if upto > snapshot.lsn_value and (not later or upto < later[0]) and (date_to is None or d <= date_to)]
    schema = source.target_schema
    replay_id = uuid.uuid4().hex[:12]

    def audit(step_day: date, files: list[str], what: str) -> AuditRecord:
        return AuditRecord(
            pipeline_name=source.name, source_name=source.name, protocol="sql",
            target_table=qualified(schema, table.target), status="success", started_at=datetime.now(UTC),
            step="replay", partition_date=step_day, lake_paths=files, dag_id=source.name,
            task_id=f"replay_{table.name}", airflow_run_id=f"{run_label}:{replay_id}:{what}", try_number=1)

    snapshot_spec = LoadSpec(schema, table.target, "replace", list(snapshot.key), allow_empty=True,
                             checks=table.checks)
    change_spec = LoadSpec(schema, table.target, "merge", list(snapshot.key), checks=table.checks)
    results: list[LoadResult] = []
    after = snapshot.lsn_value - 1  # the slot streams the transactions that commit from its starting point on
    with conn.transaction():
        results.append(load_files(conn, paths, snapshot_spec, partition=day,
                                  run_id=file_run_id(paths[0]) if paths else None,
                                  audit=audit(day, paths, f"snapshot-{snapshot.lsn}")))
        try:
            with conn.cursor() as cur:
                for upto, change_day, files in changes:
                    run_id = file_run_id(files[0])
                    record = audit(change_day, files, f"changes-{upto:016X}")
                    applied = apply_changes(cur, change_spec, files, change_day, run_id, after_lsn=after)
                    after = max(after, applied.last_lsn or after)
                    result = LoadResult(table=change_spec.qualified, write_mode="cdc", rows_loaded=applied.rows_upserted,
                                        files=len(files), schema_changes=applied.schema_changes or [],
                                        file_ids=applied.file_ids or [])
                    before_commit(cur, change_spec, change_day, run_id, result, record, "public")
                    record.rows_extracted, record.rows_loaded = applied.changes, result.rows_loaded
                    record.parquet_files, record.schema_changes = len(files), result.schema_changes
                    record.finished_at = datetime.now(UTC)
                    insert_audit_row(cur, record)
                    results.append(result)
        except psycopg.Error as exc:
            raise LoadError(f"replaying the changes of {label} failed and was rolled back: {exc}") from exc
    log.info("replayed %s: snapshot %s (%s) and %d change partitions", change_spec.qualified, day, snapshot.lsn,
             len(changes))
    return results
