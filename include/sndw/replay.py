"""Rebuild warehouse tables from the Parquet partitions already in the lake, without the source."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from sndw.audit import AuditRecord
from sndw.config import FileSource, HttpSource, SqlSource, TableBase
from sndw.errors import SndwError
from sndw.lake import file_run_id, partition_dates, partition_files
from sndw.naming import qualified
from sndw.warehouse import LoadResult, LoadSpec, load_files

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
    """Load the lake's partitions of one table in date order, as its write mode would have.

    ``partition`` and ``merge`` replay every partition in the range; ``append`` replaces each
    replayed date's rows; ``replace`` loads the newest partition in the range (a full refresh).
    The result equals what the original runs produced, ``_loaded_at`` aside.
    """
    dates = [d for d in partition_dates(lake_root, source.kind, source.name, table.name)
             if (date_from is None or d >= date_from) and (date_to is None or d <= date_to)]
    if not dates:
        raise SndwError(f"the lake has no partition of {source.name}.{table.name} in the range "
                        f"{date_from or 'start'}..{date_to or 'end'} under {lake_root}")
    if table.write_mode == "replace":
        dates = dates[-1:]
    mode = "append_partition" if table.write_mode == "append" else table.write_mode
    # The table's transform as the config names it now: the lake holds the data as extracted.
    spec = LoadSpec(source.target_schema, table.target, mode, table.key_columns, allow_empty=table.allow_empty,
                    transform=table.transform,
                    # source_count compares an extract with the source: a replay has no source to ask.
                    checks=[c for c in table.checks if c.kind != "source_count"])
    results = []
    replay_id = uuid.uuid4().hex[:12]
    for day in dates:
        paths = [str(p) for p in partition_files(lake_root, source.kind, source.name, table.name, day)]
        run_id = file_run_id(paths[0]) if paths else None
        audit = AuditRecord(
            pipeline_name=source.name, source_name=source.name, protocol=source.kind,
            target_table=qualified(spec.schema, spec.table), status="success",
            started_at=datetime.now(UTC), step="replay", partition_date=day, lake_paths=paths,
            dag_id=source.name, task_id=f"replay_{table.name}", airflow_run_id=f"{run_label}:{replay_id}:{day}",
            try_number=1,
        )
        result = load_files(conn, paths, spec, partition=day, run_id=run_id, audit=audit)
        log.info("replayed %s partition %s: %d rows", spec.qualified, day, result.rows_loaded)
        results.append(result)
    return results
