"""Reading a slot's waiting changes into the lake: one change partition per table and run.

The changes are peeked (``pg_logical_slot_peek_binary_changes``), never consumed: the slot moves
only when the warehouse has committed them (``slot.advance_slot``). They are read through a
server-side cursor a few thousand messages at a time and written in batches, so memory stays
bounded however many changes wait. A transaction that commits before the position the warehouse
stored was applied by an earlier run (killed before it confirmed): it is skipped here.

Each change row holds the table's columns as the source's text, and:
``cdc_op`` (I insert, U update, D delete, T truncate), ``cdc_lsn`` (the LSN of its transaction's
commit), ``cdc_seq`` (its place in the transaction), ``cdc_commit_time``, ``cdc_xid``,
``cdc_unchanged`` (a JSON list of the columns an update left unchanged and did not send: TOASTed
values), ``cdc_old_key`` (an update that changed the key: the old key's values, as JSON). An
update that changes the key is written as that update, then a delete of the old key.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from sndw import storage
from sndw.cdc import pgoutput
from sndw.cdc.pgoutput import UNCHANGED, Begin, Commit, Delete, Insert, Relation, Truncate, Update, Value
from sndw.cdc.slot import CdcError, CdcTable, connect
from sndw.lake import Manifest, PartitionWriter, open_partition
from sndw.naming import unique_column_names
from sndw.typeplan import PG_TYPE_KEY

log = logging.getLogger(__name__)

CHANGE_FIELDS = [
    pa.field("cdc_op", pa.string()), pa.field("cdc_lsn", pa.int64()), pa.field("cdc_seq", pa.int64()),
    pa.field("cdc_commit_time", pa.timestamp("us", tz="UTC")), pa.field("cdc_xid", pa.int64()),
    pa.field("cdc_unchanged", pa.string()), pa.field("cdc_old_key", pa.string()),
]
CHANGE_COLUMNS = [f.name for f in CHANGE_FIELDS]
FETCH_ROWS = 2_000
BATCH_ROWS = 10_000
BATCH_BYTES = 16 << 20


def change_folder(table: str, upto: int) -> str:
    """The lake "table" of one run's changes: ``<table>/changes-<LSN as 16 hex digits>`` (sorts in LSN order)."""
    return f"{table}/changes-{upto:016X}"


@dataclass
class ChangeRead:
    """What one read found: the change partitions (tables with changes only) and the position to confirm."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    position: str = "0/0"
    transactions: int = 0
    skipped_transactions: int = 0


class _TableChanges:
    """The change rows of one table, written to its change partition in batches."""

    def __init__(self, table: CdcTable, writer: PartitionWriter) -> None:
        self.table = table
        self.writer = writer
        self.count = 0
        self.names: list[str] = []
        self.fields: list[pa.Field] = []
        self.key_index: list[int] = []
        self.rows: list[tuple[Any, ...]] = []
        self.bytes = 0

    def relation(self, relation: Relation, types: list[str]) -> None:
        self.flush()
        self.names = unique_column_names([c.name for c in relation.columns], context=self.table.spec.name)
        clash = sorted(set(self.names) & set(CHANGE_COLUMNS))
        if clash:
            raise CdcError(f"{self.table.source_name}: column {clash[0]} has the name of a change column")
        missing = [k for k in self.table.key if k not in self.names]
        if missing:
            raise CdcError(f"{self.table.source_name}: the key column(s) {', '.join(missing)} are no longer in the "
                           "table's changes (dropped or renamed at the source): run `sndw cdc reset`")
        self.key_index = [self.names.index(k) for k in self.table.key]
        self.fields = [pa.field(n, pa.string(), metadata={PG_TYPE_KEY: t.encode()})
                       for n, t in zip(self.names, types, strict=True)]

    def add(self, op: str, values: list[Value] | None, begin: Begin, seq: int,
            unchanged: list[str] | None = None, old_key: list[Value] | None = None) -> None:
        if values is None:
            values = [None] * len(self.names)
        row = (*values, op, begin.final_lsn, seq, begin.commit_time, begin.xid,
               json.dumps(unchanged) if unchanged else None, json.dumps(old_key) if old_key is not None else None)
        self.rows.append(row)
        self.bytes += sum(len(v) for v in values if isinstance(v, str))
        self.count += 1
        if len(self.rows) >= BATCH_ROWS or self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = list(zip(*self.rows, strict=True))
        schema = pa.schema(self.fields + CHANGE_FIELDS)
        arrays = [pa.array(list(values), type=f.type) for values, f in zip(columns, schema, strict=True)]
        self.writer.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
        self.rows, self.bytes = [], 0

    def key_of(self, values: tuple[Value, ...]) -> list[Value]:
        return [values[i] for i in self.key_index]


def _column_types(conn: psycopg.Connection[Any], table: CdcTable, relation: Relation) -> list[str]:
    """The warehouse type of each column of a relation message, by the extract's own rules
    (``sndw.extract.sql``: domains as their base type, enums as text, ``column_types`` overrides)."""
    from sndw.extract.sql import _pg_column, _type_rows
    from sndw.naming import normalize_identifier

    overrides = {normalize_identifier(k): v for k, v in table.spec.column_types.items()}
    types = [(c.type_oid, c.typmod) for c in relation.columns]
    with conn.cursor() as cur:
        rows = _type_rows(cur, types)
        label = f"{table.spec.name} (source table {table.source_name})"
        return [_pg_column(cur, label, c.name, c.type_oid, c.typmod, overrides.get(normalize_identifier(c.name)),
                           row).warehouse for c, row in zip(relation.columns, rows, strict=True)]


def read_changes(conninfo: str, slot: str, publication: str, tables: list[CdcTable], stored: str, *,
                 lake_root: str, source: str, partition: date, run_id: str | None = None) -> ChangeRead:
    """Every change waiting in the slot after ``stored`` (the warehouse's position), into the lake."""
    stored_lsn = pgoutput.parse_lsn(stored)
    result = ChangeRead()
    by_relid = {t.relid: t for t in tables}
    with connect(conninfo) as conn, connect(conninfo) as types_conn:
        row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        assert row is not None
        upto = pgoutput.parse_lsn(row[0])
        writers: dict[int, _TableChanges] = {}
        last_end = 0
        with ExitStack() as stack:  # an error removes every partition not committed yet
            for t in tables:
                writer = stack.enter_context(open_partition(
                    lake_root, "cdc", source, change_folder(t.spec.name, upto), partition, run_id=run_id))
                writers[t.relid] = _TableChanges(t, writer)
            begin: Begin | None = None
            skip = False
            seq = 0
            with conn.transaction():
                cur = conn.cursor(name="sndw_cdc_changes")
                try:
                    cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, "
                                "'proto_version', '1', 'publication_names', %s)",
                                (slot, pgoutput.lsn_text(upto), publication))
                except psycopg.errors.ObjectInUse:
                    raise CdcError(f"slot {slot} is in use by another session (a run in progress?)") from None
                except psycopg.errors.UndefinedObject as exc:
                    raise CdcError(f"slot {slot}: {exc}") from None
                while True:
                    chunk = cur.fetchmany(FETCH_ROWS)
                    if not chunk:
                        break
                    for (data,) in chunk:
                        message = pgoutput.decode(data)
                        if isinstance(message, Begin):
                            begin, seq = message, 0
                            skip = message.final_lsn < stored_lsn
                            if skip:
                                result.skipped_transactions += 1
                        elif isinstance(message, Commit):
                            if not skip:
                                result.transactions += 1
                                last_end = max(last_end, message.end_lsn)
                            begin = None
                        elif isinstance(message, Relation):
                            if message.relid in writers:
                                writers[message.relid].relation(
                                    message, _column_types(types_conn, by_relid[message.relid], message))
                        elif skip or begin is None:
                            continue
                        elif isinstance(message, Truncate):
                            for relid in message.relids:
                                if relid in writers:
                                    seq += 1
                                    writers[relid].add("T", None, begin, seq)
                        elif isinstance(message, (Insert, Update, Delete)) and message.relid in writers:
                            seq = _row_change(writers[message.relid], message, begin, seq)
                cur.close()
            for relid, changes in writers.items():
                changes.flush()
                name = by_relid[relid].spec.name
                result.changes[name] = changes.count
                if changes.count:
                    result.manifests[name] = changes.writer.commit()
                else:
                    changes.writer.abort()
    result.position = pgoutput.lsn_text(max(upto, last_end, stored_lsn))
    log.info("slot %s: %d transactions to apply (%d applied before), up to %s", slot, result.transactions,
             result.skipped_transactions, result.position)
    return result


def _row_change(changes: _TableChanges, message: Insert | Update | Delete, begin: Begin, seq: int) -> int:
    if isinstance(message, Insert):
        changes.add("I", list(message.new), begin, seq + 1)
        return seq + 1
    if isinstance(message, Delete):
        values: list[Value] = [None] * len(changes.names)
        for i in changes.key_index if message.old_kind == "K" else range(len(values)):
            values[i] = message.old[i]
        changes.add("D", [None if v is UNCHANGED else v for v in values], begin, seq + 1)
        return seq + 1
    new = list(message.new)
    old = message.old
    if old is not None and message.old_kind == "O":  # REPLICA IDENTITY FULL: the old row fills what was not sent
        new = [o if n is UNCHANGED and o is not UNCHANGED else n for n, o in zip(new, old, strict=True)]
    unchanged = [name for name, value in zip(changes.names, new, strict=True) if value is UNCHANGED]
    new_key = changes.key_of(tuple(new))
    old_key = changes.key_of(old) if old is not None else None
    if old_key is not None:
        old_key = [n if o is UNCHANGED else o for o, n in zip(old_key, new_key, strict=True)]
    values = [None if v is UNCHANGED else v for v in new]
    if old_key is None or old_key == new_key:
        changes.add("U", values, begin, seq + 1, unchanged)
        return seq + 1
    # The key changed: the new row, then the old key's delete (apply reads the old row's unchanged
    # values before it deletes anything).
    changes.add("U", values, begin, seq + 1, unchanged, old_key)
    gone: list[Value] = [None] * len(changes.names)
    for i, value in zip(changes.key_index, old_key, strict=True):
        gone[i] = value
    changes.add("D", gone, begin, seq + 2)
    return seq + 2


# ------------------------------------------------------------------ what the lake holds of a CDC table (replay)

SNAPSHOT_PREFIX = "snapshot-"


@dataclass
class SnapshotRecord:
    """A completed snapshot of one table, as ``<lake_root>/cdc/<source>/<table>/snapshot-<LSN>.json`` records
    it: the slot's starting point, the date partition of the copy (``<lake_root>/sql/<source>/<table>/<date>``),
    the manifest id of its files, and the key the changes are applied by."""

    lsn: str
    partition: str
    manifest_id: str | None
    key: list[str]

    @property
    def lsn_value(self) -> int:
        return pgoutput.parse_lsn(self.lsn)


def _cdc_table_root(lake_root: str, source: str, table: str) -> str:
    return (storage.join(lake_root, "cdc", source, table) if storage.is_url(lake_root)
            else str(Path(lake_root) / "cdc" / source / table))


def write_snapshot_record(lake_root: str, source: str, table: str, record: SnapshotRecord) -> str:
    """Record a completed snapshot beside the table's change partitions (written whole, then renamed)."""
    name = f"{SNAPSHOT_PREFIX}{pgoutput.parse_lsn(record.lsn):016X}.json"
    text = json.dumps(asdict(record))
    folder = _cdc_table_root(lake_root, source, table)
    if storage.is_url(lake_root):  # one object, whole when it exists
        path = storage.join(folder, name)
        with storage.open_output(path) as out:
            out.write(text.encode())
        return path
    Path(folder).mkdir(parents=True, exist_ok=True)
    final = Path(folder) / name
    temporary = final.with_name(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    temporary.write_text(text)
    os.replace(temporary, final)
    return str(final)


def _children(lake_root: str, source: str, table: str) -> list[str]:
    folder = _cdc_table_root(lake_root, source, table)
    if storage.is_url(lake_root):
        fs = storage.filesystem(lake_root)
        fs.invalidate_cache(storage.strip(folder))
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(storage.strip(folder), detail=False)]
        except FileNotFoundError:
            return []
    return [p.name for p in Path(folder).iterdir()] if Path(folder).is_dir() else []


def snapshot_records(lake_root: str, source: str, table: str) -> list[SnapshotRecord]:
    """The table's recorded snapshots, oldest (lowest LSN) first."""
    records = []
    folder = _cdc_table_root(lake_root, source, table)
    for name in _children(lake_root, source, table):
        if not (name.startswith(SNAPSHOT_PREFIX) and name.endswith(".json")):
            continue
        path = storage.join(folder, name) if storage.is_url(lake_root) else str(Path(folder) / name)
        if storage.is_url(path):
            with storage.filesystem(path).open(storage.strip(path), "rb") as raw:
                data = json.loads(raw.read())
        else:
            data = json.loads(Path(path).read_text())
        records.append(SnapshotRecord(**{k: data[k] for k in ("lsn", "partition", "manifest_id", "key")}))
    return sorted(records, key=lambda r: r.lsn_value)


def change_partitions(lake_root: str, source: str, table: str) -> list[tuple[int, date, list[str]]]:
    """The table's change partitions as (LSN read up to, date, files), in LSN order."""
    from sndw.lake import partition_dates, partition_files

    found = []
    for name in _children(lake_root, source, table):
        if not name.startswith("changes-"):
            continue
        try:
            upto = int(name.removeprefix("changes-"), 16)
        except ValueError:
            continue
        folder = f"{table}/{name}"
        for day in partition_dates(lake_root, "cdc", source, folder):
            files = partition_files(lake_root, "cdc", source, folder, day)
            if files:
                found.append((upto, day, files))
    return sorted(found, key=lambda c: (c[0], c[1]))
