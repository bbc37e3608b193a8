"""COPY of one lake file into a table: batches of about ``LOAD_BATCH_BYTES``, encoded by
``BatchEncoder``, through a bounded queue; text-carried columns through a staging table."""

from __future__ import annotations

from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from sndw import storage
from sndw.checkstats import RowStats
from sndw.ddl import drop_temp
from sndw.errors import LoadError, PermanentError
from sndw.lake import iter_file_batches
from sndw.progress import Progress
from sndw.transform import BatchTransform, output_schema, transformed_batches
from sndw.typeplan import ColumnPlan, declared_type, pg_type_for, plan_column
from sndw.warehouse.encode import BatchEncoder

# The load reads and encodes a file in batches of about this many (uncompressed) bytes: 1M bench
# rows (148 bytes each) loaded 1.01-1.06x psql's binary COPY in batches of 100,000 rows and
# 1.09-1.21x in batches of 10,000-20,000 (3 runs of 6 paired rounds), with 100 MiB less peak RSS:
# smaller batches fit the CPU caches and hand the server its first rows sooner.
LOAD_BATCH_BYTES = 2 << 20

class _BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued writer holds up to 1024 chunks of 512 KiB; 64 keep the send as fast and
    the load's peak memory ~130 MiB lower (measured by `make bench`)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        super().__init__(cursor)
        self._queue = type(self._queue)(maxsize=64)


def copy_file(cur: psycopg.Cursor[Any], target: sql.Composable, path: str, columns: dict[str, str],
              table: str, constants: dict[str, tuple[pa.DataType, Any]], batch_rows: int = 100_000,
              progress: Progress | None = None, transform: BatchTransform | None = None,
              freeze: bool = False, only: list[str] | None = None,
              drop: frozenset[str] = frozenset(), stats: RowStats | None = None) -> tuple[int, int]:
    """Binary COPY of one Parquet file into ``target``; returns rows and NUL replacements. With a
    ``transform``, each batch goes through it first (the first batch's output is the schema).
    ``freeze``: COPY ... FREEZE, only for a table truncated or created in the current subtransaction.
    ``only``: just these columns of the file (no transform), e.g. a merge's keys. ``drop``: columns
    left out (a schema contract's discarded ones). ``stats``: sees each batch as it is encoded, for
    the load's quality checks (sndw.checkstats)."""
    file_schema = output_schema(transform, table, path, batch_rows) if transform else storage.read_schema(path)
    if only is None and drop & set(file_schema.names):
        only = [name for name in file_schema.names if name not in drop]
    if only is not None:
        file_schema = pa.schema([file_schema.field(name) for name in only])
    plans: list[ColumnPlan] = []
    for f in file_schema:
        planned = plan_column(table, f.name, columns[f.name], f.type, declared_type(f))
        if isinstance(planned, str):  # evolve_table has already widened it; plan again
            raise LoadError(f"{table}.{f.name} was not widened before the load")
        plans.append(planned)
    encoder = BatchEncoder(plans, constants)
    staged = [p for p in plans if p.output == "staged"]
    final_target = target
    if staged:  # columns carried as text: COPY them into text columns, cast on the way to the table
        target = _staging_table(cur, plans, constants, columns)
    # FREEZE writes the rows frozen and all-visible: no hint-bit rewrite or freezing vacuum of the
    # whole table later (not for the text staging table: its rows reach the table by INSERT).
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(
        target, sql.SQL(", ").join(sql.Identifier(c) for c in encoder.column_names),
        sql.SQL(", FREEZE" if freeze and not staged else ""))
    rows = 0
    # A queued writer sends to the server from its own thread while this one reads and encodes
    # the next batch (shared/POSTGRES-LOADING.md: 0.94x of psql's binary COPY against 0.86x).
    with cur.copy(statement, writer=_BoundedQueuedWriter(cur)) as copy:
        copy.write(encoder.header())
        batches = iter_file_batches(path, batch_rows, columns=None if transform else only,
                                    batch_bytes=LOAD_BATCH_BYTES)
        if transform is not None:
            batches = transformed_batches(transform, table, path, batches)
            if only is not None:
                kept = only
                batches = (b.select([n for n in kept if n in b.schema.names]) for b in batches)
        for number, batch in enumerate(batches, 1):
            if batch.num_rows == 0:
                continue
            if transform is not None and batch.schema.names != file_schema.names:
                raise PermanentError(
                    f"{table}: transform {transform.reference} returned the columns {batch.schema.names} for "
                    f"batch {number} of {path}, but {file_schema.names} for its first batch: a transform must "
                    "return the same columns for every batch")
            if stats is not None:
                stats.observe(batch, plans)
            try:
                data = encoder.encode(batch)
            except LoadError as exc:  # the value's column: the table and the lake file it came from
                raise LoadError(f"{table}: {exc} in {path}") from None
            copy.write(data)
            rows += batch.num_rows
            if progress is not None:
                progress.add(batch.num_rows, len(data))
        copy.write(encoder.finish())
    if stats is not None:
        stats.nul_replaced += encoder.nul_replaced
    if staged:
        names = encoder.column_names
        casts = {p.name: sql.SQL("{}::{}").format(sql.Identifier(p.name), sql.SQL(p.pg_type)) for p in staged}
        try:
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                final_target, sql.SQL(", ").join(sql.Identifier(n) for n in names),
                sql.SQL(", ").join(casts.get(n, sql.Identifier(n)) for n in names), target))
        except psycopg.errors.DataError as exc:
            raise LoadError(f"{table}: a value of {', '.join(p.name for p in staged)} does not fit its "
                            f"type in {path}: {exc}") from exc
        cur.execute(sql.SQL("DROP TABLE {}").format(target))
    return rows, encoder.nul_replaced


def _staging_table(cur: psycopg.Cursor[Any], plans: list[ColumnPlan], constants: dict[str, tuple[pa.DataType, Any]],
                   columns: dict[str, str]) -> sql.Composable:
    """A temporary table with the target's column types, text for the "staged" columns."""
    name = sql.Identifier("_sndw_cast")
    items = [sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL("text" if p.output == "staged" else p.pg_type))
             for p in plans]
    items += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(columns.get(c) or pg_type_for(t)))
              for c, (t, _) in constants.items()]
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    drop_temp(cur, name)
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(name, sql.SQL(", ").join(items)))
    return name


