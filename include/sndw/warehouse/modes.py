"""The write modes: how the rows of one load reach the table (append, replace, partition, merge),
inside the load's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from sndw.ddl import drop_temp
from sndw.errors import PermanentError
from sndw.naming import LOADED_AT, PARTITION_DATE, partition_child_table
from sndw.progress import Progress
from sndw.transform import BatchTransform
from sndw.warehouse.copy import copy_file
from sndw.warehouse.lineage import file_constants, register_file
from sndw.warehouse.spec import LoadResult, LoadSpec
from sndw.warehouse.tables import MERGE_ROW_COLUMN, is_partitioned


def _copy_all(cur: psycopg.Cursor[Any], target: sql.Composable, spec: LoadSpec, paths: Sequence[str],
              columns: dict[str, str], partition: date, run_id: str | None, result: LoadResult,
              batch_rows: int, freeze: bool = False) -> None:
    progress = Progress(f"load {spec.qualified}")
    for path in paths:
        file_id = register_file(cur, spec, path, partition, run_id)
        result.file_ids.append(file_id)
        rows, nul = copy_file(cur, target, path, columns, spec.qualified, file_constants(file_id, partition),
                              batch_rows, progress,
                              spec.transform if isinstance(spec.transform, BatchTransform) else None, freeze,
                              drop=spec.drop_columns, stats=result.observed)
        result.rows_loaded += rows
        result.nul_replaced += nul


def _append(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
            partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _append_partition(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
                      partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Replay of an append table: the date's rows are replaced, the other dates are kept."""
    cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(spec.ident(), sql.Identifier(PARTITION_DATE)),
                (partition,))
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _referenced_keys(cur: psycopg.Cursor[Any], spec: LoadSpec) -> list[list[str]]:
    """The keys of this table that foreign keys of other tables point at (each a column list)."""
    cur.execute(
        """
        SELECT array_agg(a.attname::text ORDER BY k.ord)
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
        WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND c.conrelid <> c.confrelid
        GROUP BY c.oid ORDER BY c.oid
        """,
        (spec.ident().as_string(cur.connection),),
    )
    return [list(row[0]) for row in cur.fetchall()]


def _replace(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
             partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Full refresh in place: TRUNCATE + COPY in the load's transaction (readers wait, never see
    it empty). The table stays the same object, so its grants, owner, comments, indexes,
    constraints, policies, triggers and dependent views all stay; a new table swapped in by
    rename kept none of the first three or the foreign keys pointing at it, for no measurable
    speed gain. A table that other tables' foreign keys point at cannot be truncated: see
    ``_replace_referenced``."""
    keys = _referenced_keys(cur, spec)
    if keys:
        _replace_referenced(cur, spec, keys[0], paths, columns, partition, run_id, result, batch_rows)
        return
    cur.execute(sql.SQL("TRUNCATE {}").format(spec.ident()))
    # Truncated in this (sub)transaction, so COPY may FREEZE; with wal_level=minimal the new
    # file's rows also need no WAL (README "Performance": the settings each figure depends on).
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows,
              freeze=not is_partitioned(cur, spec.schema, spec.table))


def _replace_referenced(cur: psycopg.Cursor[Any], spec: LoadSpec, key: list[str], paths: Sequence[str],
                        columns: dict[str, str], partition: date, run_id: str | None, result: LoadResult,
                        batch_rows: int) -> None:
    """Replace the rows of a table that foreign keys point at, on the key they reference: rows
    whose key left the source are deleted (the referencing tables' own ON DELETE rules apply, so
    a key still in use fails the load), the others are updated in place or inserted. TRUNCATE
    would fail, and TRUNCATE ... CASCADE would empty the referencing tables."""
    staging = f"_sndw_replace_{spec.table[:40]}"
    drop_temp(cur, sql.Identifier(staging))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        sql.Identifier(staging), spec.ident()))
    _copy_all(cur, sql.Identifier(staging), spec, paths, columns, partition, run_id, result, batch_rows)
    keys = [sql.Identifier(k) for k in key]
    cur.execute(sql.SQL("SELECT count(*) - count(DISTINCT ({keys})) FROM {staging} WHERE {not_null}").format(
        keys=sql.SQL(", ").join(keys), staging=sql.Identifier(staging),
        not_null=sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(k) for k in keys)))
    row = cur.fetchone()
    if row and row[0]:
        raise PermanentError(f"{spec.qualified}: other tables' foreign keys point at ({', '.join(key)}), so a "
                             f"replace matches rows on it, but {row[0]} rows of the extract repeat a key")
    cur.execute(sql.SQL("DELETE FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM {staging} s WHERE {match})").format(
        target=spec.ident(), staging=sql.Identifier(staging),
        match=sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=k) for k in keys)))
    names = [c for c in columns if c != LOADED_AT]
    cols = [sql.Identifier(c) for c in names]
    updates = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
               for c in names if c not in key]
    updates.append(sql.SQL("{} = now()").format(sql.Identifier(LOADED_AT)))
    cur.execute(sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM {staging} "
                        "ON CONFLICT ({keys}) DO UPDATE SET {updates}").format(
        target=spec.ident(), cols=sql.SQL(", ").join(cols), staging=sql.Identifier(staging),
        keys=sql.SQL(", ").join(keys), updates=sql.SQL(", ").join(updates)))


def _partition(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
               partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Replace one date partition: TRUNCATE the child table of that date and COPY into it."""
    child = partition_child_table(spec.table, partition)
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})").format(
        spec.ident(child), spec.ident(), sql.Literal(partition)))
    cur.execute(sql.SQL("TRUNCATE {}").format(spec.ident(child)))
    _copy_all(cur, spec.ident(child), spec, paths, columns, partition, run_id, result, batch_rows)


# The statistics a merge's temporary key table gets before its join with the table: its row count
# and its keys' range are all the planner needs to walk the two key indexes in a merge join. A
# sample of 3,000 keys takes 12 ms where the default 30,000 take 35-40 ms (250,000 keys); without
# statistics PostgreSQL hashes the whole table instead (0.52-0.65 s against 0.25 s).
KEY_STATISTICS = 10


class _RepeatedKeys(Exception):
    """A merge's load holds a key more than once, or a NULL key: merged through the staging table
    instead (it keeps the last row of a repeated key, and names how many rows have a NULL key)."""


def _merge(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
           partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Upsert on the primary key; within one load the last row of a key wins; NULL keys fail the load.

    Only the keys go to a temporary table first (a narrow COPY of the files' key columns); the
    table's rows with those keys are deleted and the rows are COPYed straight into the table: no
    per-row INSERT ... SELECT, no full-row UPDATE per key, no sort. A load that repeats a key, a
    transform, or a table that other tables' foreign keys point at go through ``_merge_staged``.
    One transaction either way: readers never see half a merge.
    """
    missing = [k for k in spec.primary_key if k not in columns]
    if missing:
        raise PermanentError(f"{spec.qualified}: primary key columns {missing} are not in the data")
    referenced = bool(_referenced_keys(cur, spec))
    if isinstance(spec.transform, BatchTransform) or referenced:
        _merge_staged(cur, spec, paths, columns, partition, run_id, result, batch_rows, referenced)
        return
    keys = [sql.Identifier(k) for k in spec.primary_key]
    key_list = sql.SQL(", ").join(keys)
    key_table = sql.Identifier(f"_sndw_keys_{spec.table[:40]}")
    try:
        with cur.connection.transaction():  # a savepoint: repeated keys roll the key table back
            drop_temp(cur, key_table)
            cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                key_table, key_list, spec.ident()))
            # NOT NULL: the COPY itself refuses a NULL key, instead of a scan of the keys after it (15 ms
            # of a 250,000-row merge). STATISTICS: see KEY_STATISTICS.
            cur.execute(sql.SQL("ALTER TABLE {} {}").format(key_table, sql.SQL(", ").join(
                sql.SQL("ALTER COLUMN {k} SET NOT NULL, ALTER COLUMN {k} SET STATISTICS {n}").format(
                    k=k, n=sql.Literal(KEY_STATISTICS)) for k in keys)))
            try:
                for path in paths:
                    copy_file(cur, key_table, path, columns, spec.qualified, {}, batch_rows,
                              only=list(spec.primary_key))
            except psycopg.errors.NotNullViolation:
                raise _RepeatedKeys from None  # the staged merge counts the NULL keys in its error
            # A unique index on the load's keys finds a repeated key (it fails to build), and the
            # DELETE below walks it beside the table's own key index: a merge join with no sort.
            # Measured on 250k keys: 45-65 ms, against 190-200 ms for a GROUP BY check, and the
            # DELETE 50 ms faster. Its sort stays in memory up to 128 MB (this transaction only).
            cur.execute("SET LOCAL maintenance_work_mem = '128MB'")
            cur.execute("SET LOCAL work_mem = '128MB'")
            try:
                cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(key_table, key_list))
            except psycopg.errors.UniqueViolation:
                raise _RepeatedKeys from None
    except _RepeatedKeys:
        _merge_staged(cur, spec, paths, columns, partition, run_id, result, batch_rows, referenced)
        return
    cur.execute(sql.SQL("ANALYZE {}").format(key_table))  # a temporary table has no statistics: the join needs them
    cur.execute(sql.SQL("DELETE FROM {target} t USING {keys} k WHERE {match}").format(
        target=spec.ident(), keys=key_table,
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = k.{k}").format(k=k) for k in keys)))
    cur.execute(sql.SQL("DROP TABLE {}").format(key_table))
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _check_null_keys(cur: psycopg.Cursor[Any], spec: LoadSpec, table: sql.Identifier,
                     keys: list[sql.Identifier]) -> None:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        table, sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(k) for k in keys)))
    row = cur.fetchone()
    if row and row[0]:
        raise PermanentError(f"{spec.qualified}: {row[0]} rows have a NULL primary key ({', '.join(spec.primary_key)})")


def _merge_staged(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
                  partition: date, run_id: str | None, result: LoadResult, batch_rows: int,
                  referenced: bool) -> None:
    """The whole rows go to a staging table by COPY; the last row of a repeated key is kept there,
    then the keys are deleted from the table and the rows inserted. A table that other tables'
    foreign keys point at keeps its rows as the same rows: it is updated in place with ON CONFLICT."""
    staging = sql.Identifier(f"_sndw_stage_{spec.table[:40]}")
    drop_temp(cur, staging)
    cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        staging, spec.ident()))
    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
        staging, sql.Identifier(MERGE_ROW_COLUMN)))
    _copy_all(cur, staging, spec, paths, columns, partition, run_id, result, batch_rows)
    keys = [sql.Identifier(k) for k in spec.primary_key]
    key_list = sql.SQL(", ").join(keys)
    _check_null_keys(cur, spec, staging, keys)
    # A temporary table has no statistics: the joins on the key need its keys' (only theirs: the other
    # columns' would cost a sample of every column and serve nothing).
    cur.execute(sql.SQL("ALTER TABLE {} {}").format(staging, sql.SQL(", ").join(
        sql.SQL("ALTER COLUMN {} SET STATISTICS {}").format(k, sql.Literal(KEY_STATISTICS)) for k in keys)))
    cur.execute(sql.SQL("ANALYZE {} ({})").format(staging, key_list))
    # The key joins hash the load's keys: in memory instead of spilling at the default 4 MB (this
    # transaction only).
    cur.execute("SET LOCAL work_mem = '128MB'")
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} GROUP BY {} HAVING count(*) > 1)").format(staging, key_list))
    row = cur.fetchone()
    if row and row[0]:  # a key more than once in this load: the last row wins
        cur.execute(sql.SQL("DELETE FROM {staging} s USING {staging} t WHERE {match} AND s._sndw_row < t._sndw_row").format(
            staging=staging, match=sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=k) for k in keys)))
    names = [c for c in columns if c != LOADED_AT]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in names)
    if referenced:
        updates = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                   for c in names if c not in spec.primary_key]
        updates.append(sql.SQL("{} = now()").format(sql.Identifier(LOADED_AT)))
        cur.execute(sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM {staging} "
                            "ON CONFLICT ({keys}) DO UPDATE SET {updates}").format(
            target=spec.ident(), cols=cols, staging=staging, keys=key_list, updates=sql.SQL(", ").join(updates)))
        return
    cur.execute(sql.SQL("DELETE FROM {target} t USING {staging} s WHERE {match}").format(
        target=spec.ident(), staging=staging,
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=k) for k in keys)))
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(spec.ident(), cols, cols, staging))


WRITERS = {"append": _append, "replace": _replace, "partition": _partition, "merge": _merge,
            "append_partition": _append_partition}

