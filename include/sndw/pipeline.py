"""One pipeline for the DAGs and the command line: extract one table into a lake partition, load a manifest.

The Airflow operators and the command line are adapters: they resolve their connections into a
``SourceAccess`` and call ``extract_table`` / ``load_table``. Everything between (the incremental
start, checkpoints and resume, the batch stream of each source kind, child tables of unnested
lists, progress) lives here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from typing import Any

import pyarrow as pa

from sndw.config import ChildTable, FileTable, HttpTable, SqlTable, TableBase
from sndw.errors import Paused, PermanentError
from sndw.lake import Manifest, open_partition
from sndw.naming import normalize_identifier
from sndw.progress import Progress

log = logging.getLogger(__name__)

@dataclass
class SourceAccess:
    """How the core reaches one source; the adapter (operator or command line) fills in its kind's field.

    - ``postgres_conninfo``: a libpq connection string; PostgreSQL is streamed through ADBC.
    - ``dbapi_connect``: opens a DB-API connection to any other SQL database.
    - ``http_client``: opens an ``HttpClient`` for a table (base URL, auth, session).
    - ``base_path``: the folder relative file paths start from.
    - ``warehouse``: opens a psycopg connection to the warehouse, to read the watermark.
    - ``postgres_snapshot``: PostgreSQL only: read in this exported snapshot (change capture's
      first copy of its tables, ``sndw.cdc``).
    """

    postgres_conninfo: str | None = None
    postgres_snapshot: str | None = None
    dbapi_connect: Callable[[], Any] | None = None
    http_client: Callable[[HttpTable], AbstractContextManager[Any]] | None = None
    base_path: str | None = None
    warehouse: Callable[[], Any] | None = None


@dataclass
class ExtractRequest:
    """One table of one source into one date partition of the lake.

    ``pipeline`` keys the watermark (the DAG id, or the command line's ``--pipeline``);
    ``resume_key`` is the same for every attempt of one run (checkpointed tables resume with it);
    ``watermark_from`` / ``reset_watermark`` override the stored watermark for this run.
    """

    pipeline: str
    source: str
    kind: str
    table: TableBase
    partition: date
    lake_root: str
    run_id: str | None = None
    resume_key: str | None = None
    watermark_from: str | None = None
    reset_watermark: bool = False


ChildCallback = Callable[[ChildTable, Manifest], None]


def extract_table(request: ExtractRequest, access: SourceAccess, *,
                  on_child: ChildCallback | None = None,
                  should_pause: Callable[[], bool] | None = None) -> Manifest:
    """Extract one table into its lake partition and return the manifest (for the load).

    The partition is replaced only when the whole extract completed and validated. Incremental
    tables start after the watermark and record the new one in the manifest (the load commits it).
    A checkpointed table asks ``should_pause`` after each checkpoint; when it answers yes, the
    extract stops there with ``Paused`` and keeps its in-progress folder, so the next attempt with
    the same ``resume_key`` continues after that batch.
    """
    spec = request.table
    log.info("Extracting %s.%s (%s) into partition %s of %s", request.source, spec.name, request.kind,
             request.partition, request.lake_root)
    previous, low, tracker = _incremental_start(request, access)
    resume_key = request.resume_key if spec.checkpoint else None
    progress = Progress(f"extract {request.source}.{spec.name}")
    with open_partition(request.lake_root, request.kind, request.source, spec.name, request.partition,
                        run_id=request.run_id, on_batch=tracker.update if tracker else None,
                        resume_key=resume_key) as writer:
        position = writer.resumed["position"] if writer.resumed else None
        if writer.resumed and tracker is not None:
            for batch in writer.resumed_batches([tracker.cursor]):
                tracker.update(batch)
        if position is not None:
            log.info("Resuming after %d rows already in the lake (position %s)", writer.manifest.rows, position)
        for batch, new_position in _positioned_batches(request, access, low, position, on_child):
            writer.write(batch)
            progress.add(batch.num_rows, batch.nbytes)
            if resume_key:
                writer.checkpoint(new_position)
                if should_pause is not None and should_pause():
                    log.info("Pipeline paused: %s.%s stops after %d rows, checkpoint at position %s",
                             request.source, spec.name, writer.manifest.rows, new_position)
                    raise Paused(f"{request.source}.{spec.name}", writer.manifest.rows, new_position)
        if any(c.kind == "source_count" for c in getattr(spec, "checks", ())):
            writer.manifest.source_count = source_count(request, access, low, writer.manifest.rows)
            log.info("Source count of %s.%s: %d rows (%d extracted)", request.source, spec.name,
                     writer.manifest.source_count, writer.manifest.rows)
        manifest = writer.commit()
    if tracker is not None:
        new = tracker.watermark(previous)
        manifest.previous_watermark = previous.to_dict() if previous else None
        manifest.watermark = new.to_dict() if new else None
        log.info("Watermark of %s: %s -> %s", spec.name, previous.value if previous else None,
                 new.value if new else None)
    log.info("Wrote %d rows in %d files (%d bytes) in %.1fs", manifest.rows, len(manifest.paths), manifest.bytes,
             progress.elapsed)
    return manifest


def load_table(conn: Any, manifest: Manifest | dict[str, Any], spec: Any, *, pipeline: str,
               audit: Any = None) -> Any:
    """Load one extract's manifest into ``spec`` (a ``warehouse.LoadSpec``) in one transaction, with its
    audit row and, for an incremental table, the watermark of (``pipeline``, table)."""
    from sndw.warehouse import load_manifest

    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    state_key = (pipeline, m.table) if m.watermark else None
    log.info("Loading %d files (%d rows) of partition %s into %s (%s)", len(m.paths), m.rows, m.partition,
             spec.qualified, spec.write_mode)
    return load_manifest(conn, m, spec, audit=audit, state_key=state_key)


def source_count(request: ExtractRequest, access: SourceAccess, low: Any, rows_read: int) -> int:
    """The source's own count of the partition's rows, for a ``source_count`` check: sql, ``count(*)``
    of the table's rendered query (incremental: from the same watermark); file, the rows read. Counted
    after the rows are read, before the partition is published: a source still changing may differ."""
    spec = request.table
    if isinstance(spec, FileTable):
        return rows_read
    if not isinstance(spec, SqlTable):
        raise PermanentError(f"{request.source}.{spec.name}: source_count is not available for a {request.kind} table")
    from sndw.extract.sql import incremental_query, table_query

    postgres = access.postgres_conninfo is not None
    query = (spec.query or table_query(spec.table or "")).strip().rstrip(";")
    if spec.incremental is not None:
        query = incremental_query(query, spec.incremental.cursor, low, "postgres" if postgres else "other")
    statement = f"SELECT count(*) FROM ({query}) AS sndw_source_count"  # noqa: S608  # the config's own query
    label = sql_label(request.source, spec)
    try:
        if postgres:
            import psycopg

            with psycopg.connect(access.postgres_conninfo or "") as conn:
                row = conn.execute(statement).fetchone()
        else:
            if access.dbapi_connect is None:
                raise PermanentError(f"{label}: a sql source needs a connection")
            conn = access.dbapi_connect()
            try:
                cursor = conn.cursor()
                cursor.execute(statement)
                row = cursor.fetchone()
            finally:
                conn.close()
    except PermanentError:
        raise
    except Exception as exc:  # the driver's error (retried like the extract's): say which table and what was counted
        from sndw.audit import error_text
        from sndw.errors import ExtractError

        raise ExtractError(f"{label}: source_count: counting the query's rows failed: {error_text(exc)}") from exc
    return int(row[0]) if row else 0


def _guess_value_type(text: str) -> str:
    from sndw.state import parse_value

    for value_type in ("number", "timestamp"):
        try:
            parse_value(text, value_type)
            return value_type
        except (ValueError, ArithmeticError):
            continue
    return "text"


def _incremental_start(request: ExtractRequest, access: SourceAccess) -> tuple[Any, Any, Any]:
    """The watermark to start from (state, or the run's override), the lower bound, a max tracker."""
    from sndw.state import MaxTracker, Watermark, get_watermark, lower_bound

    inc = request.table.incremental
    if inc is None:
        return None, None, None
    cursor = normalize_identifier(inc.cursor)
    previous: Watermark | None = None
    if request.watermark_from:
        text = str(request.watermark_from)
        previous = Watermark(cursor, text, _guess_value_type(text))
        log.info("Starting %s from watermark_from=%s", request.table.name, text)
    elif request.reset_watermark:
        log.info("reset_watermark: %s is read from the start", request.table.name)
    elif access.warehouse is not None:
        conn = access.warehouse()
        try:
            previous = get_watermark(conn, request.pipeline, request.table.name)
        finally:
            conn.close()
    if previous is None and inc.initial is not None:
        start = Watermark(cursor, str(inc.initial), _guess_value_type(str(inc.initial)))
        return None, lower_bound(start, 0), MaxTracker(cursor)
    return previous, lower_bound(previous, inc.lookback), MaxTracker(cursor)


def _positioned_batches(request: ExtractRequest, access: SourceAccess, low: Any, position: Any,
                        on_child: ChildCallback | None) -> Iterator[tuple[pa.RecordBatch, Any]]:
    """Batches with the position to resume after each: the last key read (SQL tables with a
    primary key, read in key order), else the number of batches (a retry skips them)."""
    spec = request.table
    if isinstance(spec, SqlTable) and spec.checkpoint and spec.primary_key:
        yield from _sql_batches(request, spec, access, low, after=position, positioned=True)
        return
    skip = int(position or 0)
    for number, batch in enumerate(table_batches(request, access, low, on_child), 1):
        if number > skip:
            yield batch, number


def table_batches(request: ExtractRequest, access: SourceAccess, low: Any = None,
                  on_child: ChildCallback | None = None) -> Iterator[pa.RecordBatch]:
    """The source's rows of one table as Arrow batches, by source kind."""
    spec = request.table
    if isinstance(spec, SqlTable):
        yield from _sql_batches(request, spec, access, low)
    elif isinstance(spec, HttpTable):
        yield from _http_batches(request, access, spec, low, on_child)
    elif isinstance(spec, FileTable):
        from sndw.extract.files import iter_file_batches

        yield from iter_file_batches(spec, access.base_path)
    else:
        raise PermanentError(f"{spec.name}: unknown table kind {type(spec).__name__}")


def sql_label(source: str, spec: SqlTable) -> str:
    """How errors name a SQL table: the source and table names, and the source table when set."""
    return f"{source}.{spec.name}" + (f" (source table {spec.table})" if spec.table else "")


def _sql_batches(request: ExtractRequest, spec: SqlTable, access: SourceAccess, low: Any = None,
                 after: Any = None, positioned: bool = False) -> Iterator[Any]:
    from sndw.extract.sql import (
        incremental_query,
        iter_postgres_batches,
        keyed_query,
        postgres_batch_bytes,
        table_query,
        with_key_positions,
    )

    postgres = access.postgres_conninfo is not None
    if not postgres and access.dbapi_connect is None:
        raise PermanentError(f"{spec.name}: a sql source needs a connection")
    query = spec.query or table_query(spec.table or "")
    dialect = "postgres" if postgres else "other"
    if spec.incremental is not None:
        query = incremental_query(query, spec.incremental.cursor, low, dialect)
    if positioned:
        query = keyed_query(query, spec.primary_key, after, dialect)
    batches: Iterator[pa.RecordBatch]
    if postgres:
        assert access.postgres_conninfo is not None
        batches = iter_postgres_batches(access.postgres_conninfo, query,
                                        batch_bytes=postgres_batch_bytes(spec.batch_rows),
                                        max_rows=spec.batch_rows, table=sql_label(request.source, spec),
                                        column_types=spec.column_types, snapshot=access.postgres_snapshot)
    else:
        assert access.dbapi_connect is not None
        batches = _dbapi_batches(access.dbapi_connect, query, spec.batch_rows, sql_label(request.source, spec),
                                 spec.column_types)
    yield from with_key_positions(batches, spec.primary_key) if positioned else batches


def _dbapi_batches(connect: Callable[[], Any], query: str, batch_rows: int, label: str,
                   column_types: Mapping[str, str]) -> Iterator[pa.RecordBatch]:
    from sndw.extract.sql import iter_query_batches

    conn = connect()
    try:
        yield from iter_query_batches(conn, query, batch_rows, table=label, column_types=column_types)
    finally:
        conn.close()


def _http_batches(request: ExtractRequest, access: SourceAccess, spec: HttpTable, low: Any,
                  on_child: ChildCallback | None) -> Iterator[pa.RecordBatch]:
    """Pages of the API; unnested lists go to child partitions, committed with the parent's extract."""
    from sndw.extract.http import ChildPartitions, iter_http_batches
    from sndw.state import format_value

    if access.http_client is None:
        raise PermanentError(f"{spec.name}: an http source needs a connection")
    children = None
    if spec.child_tables:
        children = ChildPartitions(request.lake_root, request.source, spec, request.partition, run_id=request.run_id)
    try:
        with access.http_client(spec) as client:
            yield from iter_http_batches(client, spec, watermark=format_value(low),
                                         children=children.write if children else None, source=request.source)
        if children is not None:
            for child, manifest in zip(spec.child_tables, children.commit().values(), strict=True):
                log.info("Child table %s: %d rows", child.name, manifest.rows)
                if on_child is not None:
                    on_child(child, manifest)
    except BaseException:
        if children is not None:
            children.abort()
        raise
