"""Applying one run's change partition of a table to the warehouse, inside the caller's transaction.

The change rows are COPYed as text into a temporary table, then applied set-based, in commit order:
a truncate empties the table (the changes before the last one cannot show, so they are passed
over), and the changes are cut into segments at each update that changed a row's key and left
values unchanged (their values come from the old key's row, so what comes before is applied first). In a segment, the last change
of each key decides: a delete removes the row; an insert or update replaces it, its values cast
server-side to the warehouse column types. A value an update left unchanged (a TOASTed value
pgoutput did not send) is taken from the key's last change in the segment that carried it, else
from the warehouse row: never replaced by NULL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from sndw import storage
from sndw.cdc.changes import CHANGE_COLUMNS
from sndw.errors import LoadError, PermanentError
from sndw.naming import FILE_ID, PARTITION_DATE
from sndw.warehouse import LoadSpec, copy_file, evolve_table, register_file, table_columns

log = logging.getLogger(__name__)

STAGE = "_sndw_cdc_changes"
ROWS = "_sndw_cdc_rows"


@dataclass
class Applied:
    rows_upserted: int = 0
    rows_deleted: int = 0
    truncates: int = 0
    changes: int = 0
    schema_changes: list[dict[str, Any]] | None = None
    file_ids: list[int] | None = None
    last_lsn: int | None = None  # the commit LSN of the last change applied


def data_schema(paths: Sequence[str]) -> list[pa.Schema]:
    """Each change file's table columns (with their warehouse types), without the change columns."""
    schemas = []
    for path in paths:
        schema = storage.read_schema(path)
        schemas.append(pa.schema([f for f in schema if f.name not in CHANGE_COLUMNS]))
    return schemas


def apply_changes(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], partition: date,
                  run_id: str | None, batch_rows: int = 100_000, after_lsn: int | None = None) -> Applied:
    """Apply the change files of one table (one run) to ``spec``'s table; the caller commits.
    ``after_lsn`` (replay): the transactions that committed at or before it are passed over."""
    applied = Applied(schema_changes=[], file_ids=[])
    assert applied.schema_changes is not None and applied.file_ids is not None
    schemas = data_schema(paths)
    for schema in schemas:  # a column added at the source arrives in a later relation message
        _, changes = evolve_table(cur, spec, schema)
        retyped = [c for c in changes if c["change"] == "widen_column"]
        if retyped:  # the caller's transaction rolls the widening back
            raise PermanentError(
                f"{spec.qualified}: the source retyped " + ", ".join(
                    f"column {c['column']!r} (the warehouse's {c['from']} would become {c['to']})" for c in retyped)
                + ": an ALTER TABLE ... TYPE may rewrite every row at the source (USING, a new scale), and change "
                "capture carries none of that, so the table would keep old values beside new ones. Nothing was "
                "applied; take a new snapshot: sndw cdc reset <the source's config>")
        applied.schema_changes.extend(changes)
    columns = table_columns(cur, spec.schema, spec.table)
    names: list[str] = []
    for schema in schemas:
        names += [n for n in schema.names if n not in names]
    stage_types = {n: "text" for n in names} | {
        "cdc_op": "text", "cdc_lsn": "bigint", "cdc_seq": "bigint", "cdc_commit_time": "timestamp with time zone",
        "cdc_xid": "bigint", "cdc_unchanged": "text", "cdc_old_key": "text", PARTITION_DATE: "date", FILE_ID: "integer"}
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGE)))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
        sql.Identifier(STAGE), sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))
                                                  for n, t in stage_types.items())))
    from sndw.warehouse import file_constants

    for path in paths:
        file_id = register_file(cur, spec, path, partition, run_id)
        applied.file_ids.append(file_id)
        rows, _ = copy_file(cur, sql.Identifier(STAGE), path, stage_types, spec.qualified,
                            file_constants(file_id, partition), batch_rows)
        applied.changes += rows
    if after_lsn is not None:  # applied already, from an earlier partition (a run whose apply failed re-read them)
        cur.execute(sql.SQL("DELETE FROM {} WHERE cdc_lsn <= %s").format(sql.Identifier(STAGE)), (after_lsn,))
        applied.changes -= cur.rowcount
    cur.execute(sql.SQL("SELECT max(cdc_lsn) FROM {}").format(sql.Identifier(STAGE)))
    row = cur.fetchone()
    applied.last_lsn = row[0] if row else None
    keys = list(spec.primary_key)
    key_list = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    cur.execute(sql.SQL("CREATE INDEX ON {} ({}, cdc_lsn, cdc_seq)").format(sql.Identifier(STAGE), key_list))
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(STAGE)))
    # Segment boundaries, in commit order: truncates, and key changes with values left unchanged.
    cur.execute(sql.SQL("SELECT cdc_lsn, cdc_seq, cdc_op FROM {} WHERE cdc_op = 'T' OR "
                        "(cdc_old_key IS NOT NULL AND cdc_unchanged IS NOT NULL) ORDER BY 1, 2").format(
        sql.Identifier(STAGE)))
    bounds: list[tuple[int, int, str]] = cur.fetchall()
    start: tuple[int, int] | None = None
    truncates = [i for i, (_, _, op) in enumerate(bounds) if op == "T"]
    if truncates:  # the changes before the last truncate cannot show: it empties the table
        applied.truncates = len(truncates)
        lsn, seq, _ = bounds[truncates[-1]]
        cur.execute(sql.SQL("DELETE FROM {}").format(spec.ident()))  # not TRUNCATE: foreign keys may point here
        start, bounds = (lsn, seq), bounds[truncates[-1] + 1:]
    for lsn, seq, _ in bounds:
        _apply_segment(cur, spec, columns, names, start, (lsn, seq), applied)
        start = (lsn, seq)
    _apply_segment(cur, spec, columns, names, start, None, applied)
    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(STAGE)))
    log.info("%s: %d changes applied (%d rows written, %d deleted, %d truncates)", spec.qualified,
             applied.changes, applied.rows_upserted, applied.rows_deleted, applied.truncates)
    return applied


def _segment(alias: str, start: tuple[int, int] | None, end: tuple[int, int] | None) -> sql.Composable:
    parts: list[sql.Composable] = [sql.SQL("{}.cdc_op <> 'T'").format(sql.Identifier(alias))]
    if start is not None:
        parts.append(sql.SQL("({a}.cdc_lsn, {a}.cdc_seq) >= ({l}, {s})").format(
            a=sql.Identifier(alias), l=sql.Literal(start[0]), s=sql.Literal(start[1])))
    if end is not None:
        parts.append(sql.SQL("({a}.cdc_lsn, {a}.cdc_seq) < ({l}, {s})").format(
            a=sql.Identifier(alias), l=sql.Literal(end[0]), s=sql.Literal(end[1])))
    return sql.SQL(" AND ").join(parts)


def _apply_segment(cur: psycopg.Cursor[Any], spec: LoadSpec, columns: dict[str, str], names: list[str],
                   start: tuple[int, int] | None, end: tuple[int, int] | None, applied: Applied) -> None:
    stage = sql.Identifier(STAGE)
    keys = list(spec.primary_key)
    where_s = _segment("s", start, end)
    cur.execute(sql.SQL("SELECT DISTINCT jsonb_array_elements_text(s.cdc_unchanged::jsonb) FROM {} s "
                        "WHERE s.cdc_unchanged IS NOT NULL AND {}").format(stage, where_s))
    kept = [row[0] for row in cur.fetchall() if row[0] in names]

    def cast(alias: str, name: str) -> sql.Composable:
        return sql.SQL("{}.{}::{}").format(sql.Identifier(alias), sql.Identifier(name), sql.SQL(columns[name]))

    def not_unchanged(alias: str, name: str) -> sql.Composable:
        return sql.SQL("NOT coalesce({}.cdc_unchanged::jsonb ? {}, false)").format(
            sql.Identifier(alias), sql.Literal(name))

    same_key = sql.SQL(" AND ").join(sql.SQL("s.{k} = l.{k}").format(k=sql.Identifier(k)) for k in keys)
    selects: list[sql.Composable] = [sql.SQL("l.cdc_op")]
    joins: list[sql.Composable] = []
    if kept:  # the warehouse row, by the key (or the old key of a key change that starts the segment)
        first = sql.SQL("LEFT JOIN LATERAL (SELECT s.cdc_old_key FROM {} s WHERE {} AND {} "
                        "ORDER BY s.cdc_lsn, s.cdc_seq LIMIT 1) f ON true").format(stage, same_key, where_s)
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{k} = coalesce(f.cdc_old_key::jsonb ->> {i}, l.{k})::{typ}").format(
                k=sql.Identifier(k), i=sql.Literal(i), typ=sql.SQL(columns[k])) for i, k in enumerate(keys))
        joins += [first, sql.SQL("LEFT JOIN {} t ON {}").format(spec.ident(), match)]
    for name in names:
        if name not in kept:
            selects.append(sql.SQL("{} AS {}").format(cast("l", name), sql.Identifier(name)))
            continue
        supplier = sql.Identifier(f"sup_{kept.index(name)}")
        joins.append(sql.SQL("LEFT JOIN LATERAL (SELECT true AS found, s.{c} AS v FROM {stage} s WHERE {same} AND "
                             "{seg} AND {sent} ORDER BY s.cdc_lsn DESC, s.cdc_seq DESC LIMIT 1) {sup} ON true").format(
            c=sql.Identifier(name), stage=stage, same=same_key, seg=where_s, sent=not_unchanged("s", name),
            sup=supplier))
        selects.append(sql.SQL("CASE WHEN {sent} THEN {value} WHEN {sup}.found THEN {sup}.v::{typ} ELSE t.{c} END "
                               "AS {c}").format(sent=not_unchanged("l", name), value=cast("l", name), sup=supplier,
                                                typ=sql.SQL(columns[name]), c=sql.Identifier(name)))
    selects += [sql.SQL("l.{}").format(sql.Identifier(PARTITION_DATE)), sql.SQL("l.{}").format(sql.Identifier(FILE_ID))]
    key_list = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in keys)
    last = sql.SQL("(SELECT DISTINCT ON ({keys}) * FROM {stage} s WHERE {seg} "
                   "ORDER BY {keys}, s.cdc_lsn DESC, s.cdc_seq DESC) l").format(keys=key_list, stage=stage, seg=where_s)
    rows = sql.Identifier(ROWS)
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(rows))
    try:
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} {}").format(
            rows, sql.SQL(", ").join(selects), last, sql.SQL(" ").join(joins)))
    except psycopg.errors.DataError as exc:
        raise LoadError(f"{spec.qualified}: a changed value does not fit its warehouse column: {exc}") from exc
    if not cur.rowcount:
        return
    cur.execute(sql.SQL("SELECT count(*) FROM {rows} r JOIN {target} t ON {match} WHERE r.cdc_op = 'D'").format(
        rows=rows, target=spec.ident(),
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = r.{k}").format(k=sql.Identifier(k)) for k in keys)))
    row = cur.fetchone()
    applied.rows_deleted += int(row[0]) if row else 0  # rows the warehouse held (not inserted and deleted in between)
    # Every key the segment touched goes; the rows whose last change is not a delete come back.
    cur.execute(sql.SQL("DELETE FROM {target} t USING (SELECT DISTINCT {casts} FROM {stage} s WHERE {seg}) d "
                        "WHERE {match}").format(
        target=spec.ident(), stage=stage, seg=where_s,
        casts=sql.SQL(", ").join(sql.SQL("{} AS {}").format(cast("s", k), sql.Identifier(k)) for k in keys),
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = d.{k}").format(k=sql.Identifier(k)) for k in keys)))
    written = [*names, PARTITION_DATE, FILE_ID]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in written)
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE cdc_op <> 'D'").format(
        spec.ident(), cols, cols, rows))
    applied.rows_upserted += cur.rowcount
    cur.execute(sql.SQL("DROP TABLE {}").format(rows))

