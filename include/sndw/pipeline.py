"""One pipeline for the DAGs and the command line: extract one table into a lake partition, load a manifest.

The Airflow operators and the command line are adapters: they resolve their connections into a
``SourceAccess`` and call ``extract_table`` / ``load_table``. Everything between (the incremental
start, checkpoints and resume, the batch stream of each source kind, child tables of unnested
lists, progress) lives here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
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
    ``watermark_from`` / ``reset_watermark`` override the stored watermark for this run;
    ``part``: one range of a parallel extract (``plan_ranges``), which ``extract_range`` stages.
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
    part: dict[str, Any] | None = None


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

    A sql table with ``parallel: N`` is extracted here in its ranges (``plan_ranges``), side by side
    in threads, through ``extract_range`` and ``publish_ranges``: the path the DAG's mapped tasks take
    one step per task. On PostgreSQL the ranges read one exported snapshot, as one query would.
    """
    if isinstance(request.table, SqlTable) and request.table.parallel > 1 and request.part is None:
        return _extract_in_ranges(request, access, should_pause)
    return _extract(request, access, on_child, should_pause)


def _extract(request: ExtractRequest, access: SourceAccess, on_child: ChildCallback | None,
             should_pause: Callable[[], bool] | None, *, stage: bool = False) -> Manifest:
    spec = request.table
    log.info("Extracting %s.%s (%s) into partition %s of %s%s", request.source, spec.name, request.kind,
             request.partition, request.lake_root, f", {_describe_part(request.part)}" if request.part else "")
    previous, low, tracker = _incremental_start(request, access)
    resume_key = request.resume_key if spec.checkpoint or stage else None
    part = request.part or {}
    progress = Progress(f"extract {request.source}.{spec.name}")
    with open_partition(request.lake_root, request.kind, request.source, spec.name, request.partition,
                        run_id=request.run_id, on_batch=tracker.update if tracker else None,
                        resume_key=resume_key, manifest_id=part.get("manifest_id"),
                        part_label=f"r{part['index']:03d}-" if part else "") as writer:
        position = writer.resumed["position"] if writer.resumed else None
        if writer.resumed and tracker is not None:
            for batch in writer.resumed_batches([tracker.cursor]):
                tracker.update(batch)
        if position is not None:
            log.info("Resuming after %d rows already in the lake (position %s)", writer.manifest.rows, position)
        for batch, new_position in _positioned_batches(request, access, low, position, on_child):
            writer.write(batch)
            progress.add(batch.num_rows, batch.nbytes)
            if resume_key and spec.checkpoint:
                writer.checkpoint(new_position)
                if should_pause is not None and should_pause():
                    log.info("Pipeline paused: %s.%s stops after %d rows, checkpoint at position %s",
                             request.source, spec.name, writer.manifest.rows, new_position)
                    raise Paused(f"{request.source}.{spec.name}", writer.manifest.rows, new_position)
        if any(c.kind == "source_count" for c in getattr(spec, "checks", ())) and not stage:
            writer.manifest.source_count = source_count(request, access, low, writer.manifest.rows)
            log.info("Source count of %s.%s: %d rows (%d extracted)", request.source, spec.name,
                     writer.manifest.source_count, writer.manifest.rows)
        if spec.deletes and spec.incremental is not None and not stage:
            # After the rows: a key deleted between the two reads is then missing from the keys and
            # deleted by the load; one inserted in between is simply loaded by the next run. (A range
            # of a parallel extract is a first run, whose rows are the whole key set: no keys read.)
            writer.write_keys(key_batches(request, access), spec.key_columns)
        manifest = writer.stage() if stage else writer.commit()
    if tracker is not None:
        new = tracker.watermark(previous)
        manifest.previous_watermark = previous.to_dict() if previous else None
        manifest.watermark = new.to_dict() if new else None
        log.info("Watermark of %s: %s -> %s", spec.name, previous.value if previous else None,
                 new.value if new else None)
    log.info("Wrote %d rows in %d files (%d bytes) in %.1fs", manifest.rows, len(manifest.paths), manifest.bytes,
             progress.elapsed)
    return manifest


def extract_range(request: ExtractRequest, access: SourceAccess, *,
                  should_pause: Callable[[], bool] | None = None) -> Manifest:
    """Extract one range of a parallel extract (``request.part``, from ``plan_ranges``) and stage its
    files: nothing is published until ``publish_ranges``. Its folder is keyed by
    ``request.resume_key`` (one per range and run): a retry of the range alone writes it again (or,
    checkpointed, resumes in it); the other ranges' staged files are untouched."""
    if request.part is None or not request.resume_key:
        raise ValueError("extract_range needs request.part and request.resume_key")
    return _extract(request, access, None, should_pause, stage=True)


def publish_ranges(request: ExtractRequest, staged: Sequence[Manifest | dict[str, Any]]) -> Manifest:
    """Publish the staged ranges as the table's partition, in one step (``lake.publish_staged``); an
    incremental table's new watermark is the largest of the ranges'."""
    from sndw.lake import publish_staged
    from sndw.state import Watermark, _compare

    manifests = [m if isinstance(m, Manifest) else Manifest.from_dict(m) for m in staged]
    manifests.sort(key=lambda m: m.paths[0].rsplit("/", 1)[-1] if m.paths else "")  # range order: part-r000-...
    spec = request.table
    manifest = publish_staged(request.lake_root, request.kind, request.source, spec.name, request.partition,
                              manifests, run_id=request.run_id)
    marks = [w for w in (Watermark.from_dict(m.watermark) for m in manifests) if w is not None and w.value is not None]
    if spec.incremental is not None and manifests:
        manifest.previous_watermark = manifests[0].previous_watermark
        new = Watermark.from_dict(manifests[0].previous_watermark)
        for mark in marks:
            if new is None or new.value is None or (mark.value_type == new.value_type
                                                    and _compare(mark.typed(), new.typed()) > 0):
                new = mark
        manifest.watermark = new.to_dict() if new else None
    log.info("Published %d ranges of %s.%s: %d rows in %d files", len(manifests), request.source, spec.name,
             manifest.rows, len(manifest.paths))
    return manifest


def plan_ranges(request: ExtractRequest, access: SourceAccess, cursor: Any = None) -> list[dict[str, Any]]:
    """The ranges of a parallel extract of a sql table (``parallel: N``), JSON-ready for the range tasks.

    A table whose first key column holds integers: ``[min, max]`` split into N equal ranges. On
    PostgreSQL, other keys: the table's blocks split into N (``ctid`` ranges of ``table``), or the
    key's percentiles for a ``query``; no key: the blocks. Other databases: integer keys only, else
    a PermanentError naming ``parallel``. An incremental table with a watermark (not its first run),
    an empty table, or ``parallel: 1``: one range holding everything. ``cursor``: read the plan
    through it (a snapshot's), else through a connection of its own.
    """
    import uuid

    from sndw.extract.sql import (
        TABLE_BLOCKS_QUERY,
        incremental_query,
        key_extent_query,
        key_percentiles_query,
        quoted_table,
        ranges_from_bounds,
        split_integers,
        table_query,
    )

    spec = request.table
    manifest_id = uuid.uuid4().hex
    whole = ranges_from_bounds("all", [], manifest_id)
    if not isinstance(spec, SqlTable) or spec.parallel <= 1:
        return whole
    if cursor is None:
        with _planning_cursor(access) as own:
            return plan_ranges(request, access, own)
    previous, low, _ = _incremental_start(request, access)
    label = sql_label(request.source, spec)
    if previous is not None:
        log.info("%s: incremental after watermark %s: read as one range (parallel splits the first run)",
                 label, previous.value)
        return whole
    postgres = access.postgres_conninfo is not None
    query = spec.query or table_query(spec.table or "")
    if spec.incremental is not None:
        query = incremental_query(query, spec.incremental.cursor, low, "postgres" if postgres else "other")
    count = spec.parallel
    key = spec.primary_key[0] if spec.primary_key else None
    extent: tuple[Any, Any] = (None, None)
    if key is not None:
        cursor.execute(key_extent_query(query, key))
        extent = tuple(cursor.fetchone() or (None, None))
        lo, hi = extent
        if lo is None:
            log.info("%s: no rows to split: one range", label)
            return whole
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
            parts = ranges_from_bounds("key", split_integers(lo, hi, count), manifest_id, key)
            log.info("%s: %d ranges of %s over [%s, %s]", label, len(parts), key, lo, hi)
            return parts
    if not postgres:
        found = f"{key!r} holds {type(extent[0]).__name__} values" if key else "it has no primary_key"
        raise PermanentError(f"{label}: parallel: {count} splits a non-PostgreSQL table by an integer primary_key, "
                             f"but {found}; remove parallel or key the table by an integer column")
    if spec.table:
        cursor.execute(TABLE_BLOCKS_QUERY, (quoted_table(spec.table),))
        row = cursor.fetchone()
        blocks = int(row[0]) if row and row[0] else 0
        parts = ranges_from_bounds("block", split_integers(0, blocks - 1, count) if blocks > 1 else [], manifest_id)
        log.info("%s: %d ranges of its %d blocks", label, len(parts), blocks)
        return parts
    assert key is not None  # a query without a key is refused by the config
    cursor.execute(key_percentiles_query(query, key, count))
    row = cursor.fetchone()
    bounds = sorted({v for v in (row[0] if row and row[0] else []) if v is not None})
    parts = ranges_from_bounds("key", bounds, manifest_id, key)
    log.info("%s: %d ranges of %s by its percentiles", label, len(parts), key)
    return parts


@contextmanager
def _planning_cursor(access: SourceAccess) -> Iterator[Any]:
    if access.postgres_conninfo is not None:
        from sndw.extract.sql import connect_source

        with connect_source(access.postgres_conninfo) as conn, conn.cursor() as cur:
            yield cur
        return
    if access.dbapi_connect is None:
        raise PermanentError("a sql source needs a connection")
    conn = access.dbapi_connect()
    try:
        cur = conn.cursor()
        try:
            yield cur
        finally:
            cur.close()
    finally:
        conn.close()


@contextmanager
def _exported_snapshot(access: SourceAccess) -> Iterator[tuple[SourceAccess, Any]]:
    """PostgreSQL: a repeatable-read transaction held open, its snapshot exported for the ranges to
    read in (and its cursor to plan them); other sources: as they are, planned on a connection of its own."""
    if access.postgres_conninfo is None or access.postgres_snapshot is not None:
        yield access, None
        return
    import dataclasses

    from sndw.extract.sql import connect_source

    with connect_source(access.postgres_conninfo) as conn, conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        row = cur.fetchone()
        assert row is not None
        yield dataclasses.replace(access, postgres_snapshot=str(row[0])), cur


def _extract_in_ranges(request: ExtractRequest, access: SourceAccess,
                       should_pause: Callable[[], bool] | None) -> Manifest:
    """Every range of a parallel extract from this process, side by side, then their publication.

    PostgreSQL ranges run in a pool of processes (the Arrow decoding and Parquet writing of two
    ranges in threads of one process took as long as one range alone: they share one interpreter);
    other sources' ranges in threads (their connection factory stays in this process).
    """
    import dataclasses
    from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

    from sndw.lake import discard_staged

    run = request.resume_key or request.run_id or "run"
    with _exported_snapshot(access) as (reading, cursor):
        parts = plan_ranges(request, reading, cursor)
        requests = [dataclasses.replace(request, part=part, resume_key=range_resume_key(run, part))
                    for part in parts]
        pool: Executor
        if reading.postgres_conninfo is not None and len(requests) > 1 and should_pause is None:
            import multiprocessing

            # Several ranges mean a first run: the watermark is read by the plan only (none), so the
            # processes need no warehouse; the source is reached by its connection string and snapshot.
            reading = dataclasses.replace(reading, warehouse=None)
            pool = ProcessPoolExecutor(max_workers=len(requests), mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_range_process, initargs=(logging.getLogger().level,))
        else:
            pool = ThreadPoolExecutor(max_workers=len(requests), thread_name_prefix="sndw-range")
        with pool:
            futures = [pool.submit(extract_range, r, reading, should_pause=should_pause) for r in requests]
            staged, failures = [], []
            for future in futures:
                try:
                    staged.append(future.result())
                except BaseException as exc:
                    failures.append(exc)
        if failures:
            discard_staged(staged)
            raise failures[0]
    return publish_ranges(request, staged)


def _range_process(level: int) -> None:
    """A range's process (the command line's pool): its log lines to stderr, as the parent's."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def range_resume_key(run: str, part: Mapping[str, Any]) -> str:
    """The resume key of one range: the same for every attempt of that range in one run."""
    return f"{run}|range {part['index'] + 1}/{part['count']}"


def _describe_part(part: Mapping[str, Any]) -> str:
    if part["kind"] == "all":
        return "in one range"
    what = part.get("column") or "blocks"
    return f"range {part['index'] + 1} of {part['count']} ({what} from {part.get('low')} to {part.get('high')})"


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
    from sndw.extract.sql import connect_source, incremental_query, table_query

    postgres = access.postgres_conninfo is not None
    query = (spec.query or table_query(spec.table or "")).strip().rstrip(";")
    if spec.incremental is not None:
        query = incremental_query(query, spec.incremental.cursor, low, "postgres" if postgres else "other")
    statement = f"SELECT count(*) FROM ({query}) AS sndw_source_count"  # noqa: S608  # the config's own query
    label = sql_label(request.source, spec)
    try:
        if postgres:  # in the extract's session: a query that reads a value's text counts what it read
            with connect_source(access.postgres_conninfo or "") as conn:
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


def key_batches(request: ExtractRequest, access: SourceAccess) -> Iterator[pa.RecordBatch]:
    """The source's whole key set of an incremental table with deletes (sndw.warehouse.deletes): sql, its
    ``keys_query`` (default ``SELECT <primary_key> FROM <table>``); http and file, the same read
    without the incremental filter (unnested lists left out), of which the writer keeps the keys."""
    spec = request.table
    log.info("Reading every key of %s.%s for its deletes", request.source, spec.name)
    if isinstance(spec, SqlTable):
        from sndw.extract.sql import default_keys_query

        query = spec.keys_query or default_keys_query(spec.table or "", spec.primary_key)
        types = {k: v for k, v in spec.column_types.items() if normalize_identifier(k) in spec.key_columns}
        yield from _sql_batches(request, spec.model_copy(update={"column_types": types}), access, query=query)
        return
    whole = spec.model_copy(update={"incremental": None, "unnest": []})
    yield from table_batches(replace(request, table=whole), access)


def sql_label(source: str, spec: SqlTable) -> str:
    """How errors name a SQL table: the source and table names, and the source table when set."""
    return f"{source}.{spec.name}" + (f" (source table {spec.table})" if spec.table else "")


def _sql_batches(request: ExtractRequest, spec: SqlTable, access: SourceAccess, low: Any = None,
                 after: Any = None, positioned: bool = False, query: str | None = None) -> Iterator[Any]:
    from sndw.extract.sql import (
        incremental_query,
        iter_postgres_batches,
        keyed_query,
        postgres_batch_bytes,
        range_query,
        table_query,
        with_key_positions,
    )

    postgres = access.postgres_conninfo is not None
    if not postgres and access.dbapi_connect is None:
        raise PermanentError(f"{spec.name}: a sql source needs a connection")
    dialect = "postgres" if postgres else "other"
    if query is None:  # else a query of its own (the keys read): no range, no incremental filter
        query = range_query(spec.query or table_query(spec.table or ""), request.part, spec.table)
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
