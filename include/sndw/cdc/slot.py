"""The source side of change capture: tables and their keys, the publication, the slot and its snapshot.

Everything here talks to the source PostgreSQL only. A table is refused, by name, before anything
runs when its changes could not be applied exactly: no key to find a row by (no primary key, no
replica identity index, not ``REPLICA IDENTITY FULL`` with a ``primary_key`` in the config), or a
generated column (``pgoutput`` does not send it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from sndw.audit import redact
from sndw.config import SqlSource, SqlTable
from sndw.errors import PermanentError
from sndw.extract.sql import SOURCE_SESSION_SETTINGS
from sndw.naming import normalize_identifier

log = logging.getLogger(__name__)

# The text form of every value, whatever the server's defaults: the extract's (ISO dates, the
# shortest exact float text, hex bytea) and UTC offsets. pgoutput runs the output functions in the
# session that reads the slot.
SESSION_SETTINGS = {**SOURCE_SESSION_SETTINGS, "TimeZone": "UTC"}


class CdcError(PermanentError):
    """Change capture cannot run as configured; the message says what to do."""


@dataclass(frozen=True)
class CdcTable:
    """One configured table as the source has it."""

    spec: SqlTable
    relid: int
    schema: str
    name: str
    identity: str  # d default (primary key), i index, f full
    key: tuple[str, ...]  # warehouse (normalised) names of the columns that identify a row

    @property
    def source_name(self) -> str:
        return f"{self.schema}.{self.name}"


def slot_names(source: SqlSource) -> tuple[str, str]:
    """The slot and publication of a CDC source (default ``sndw_<source>``)."""
    assert source.cdc is not None
    default = f"sndw_{source.name}"
    return source.cdc.slot or default, source.cdc.publication or default


def connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
    except psycopg.Error as exc:  # libpq may echo the connection string: never pass it on
        raise CdcError(f"cannot connect to the PostgreSQL source: {redact(str(exc))}") from None
    for name, value in SESSION_SETTINGS.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    return conn


_TABLE_FACTS = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident,
       (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary),
       (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisreplident),
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''),
       (SELECT json_agg(u.cols) FROM (SELECT array_agg(a.attname::text) AS cols FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
         GROUP BY i.indexrelid) u)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""


def quoted_name(table: str) -> str:
    """The config's ``table`` (``name`` or ``schema.name``) quoted as written, as the extract reads it."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))


def source_tables(conn: psycopg.Connection[Any], source: SqlSource) -> list[CdcTable]:
    """Each configured table with its key; refuses, naming every one, the tables CDC cannot follow."""
    tables: list[CdcTable] = []
    problems: list[str] = []
    for spec in source.tables:
        label = f"{source.name}.{spec.name} (source table {spec.table})"
        row = conn.execute(_TABLE_FACTS, (quoted_name(spec.table or ""),)).fetchone()
        if row is None:
            problems.append(f"{label}: no such table on the source")
            continue
        relid, schema, name, relkind, identity, primary, index_key, generated, uniques = row
        if relkind not in ("r", "p"):
            problems.append(f"{label}: not a table (relkind {relkind}); change capture follows tables only")
            continue
        if generated:
            problems.append(f"{label}: generated column(s) {', '.join(generated)}, which pgoutput does not send: "
                            "leave the table out of the cdc source")
            continue
        configured = tuple(spec.key_columns)
        if identity == "d" and primary:
            key = tuple(normalize_identifier(k) for k in primary)
        elif identity == "i" and index_key:
            key = tuple(normalize_identifier(k) for k in index_key)
        elif identity == "f" and configured and not any(
                {normalize_identifier(c) for c in cols} <= set(configured) for cols in uniques or []):
            # Changes are applied by this key: two source rows of one key would become one row.
            columns = ", ".join(f'"{k}"' for k in configured)
            problems.append(f"{label}: REPLICA IDENTITY FULL and primary_key {list(configured)}, but no unique index "
                            "of the source holds these columns unique: two source rows with one key would become "
                            f"one warehouse row. Add one (CREATE UNIQUE INDEX ON {quoted_name(spec.table or '')} "
                            f"({columns})) or a primary key")
            continue
        elif identity == "f" and configured:
            key = configured
        elif identity == "f":
            problems.append(f"{label}: REPLICA IDENTITY FULL but no primary_key in the config: set primary_key to "
                            "the columns that identify a row")
            continue
        else:
            problems.append(
                f"{label}: no primary key or replica identity, so the source cannot publish its updates and deletes "
                f"(PostgreSQL then refuses them): add a primary key, or run "
                f"ALTER TABLE {quoted_name(spec.table or '')} REPLICA IDENTITY FULL and set primary_key")
            continue
        if configured and identity != "f" and configured != key:
            problems.append(f"{label}: primary_key {list(configured)} differs from the source's key {list(key)}, "
                            "which is what deletes and updates carry: use the source's key")
            continue
        tables.append(CdcTable(spec, int(relid), schema, name, identity, key))
    if problems:
        raise CdcError(f"source {source.name}: change capture cannot follow "
                       + ("this table" if len(problems) == 1 else f"{len(problems)} tables") + ":\n  "
                       + "\n  ".join(problems))
    return tables


def ensure_publication(conn: psycopg.Connection[Any], publication: str, tables: list[CdcTable]) -> None:
    """The publication of the source's tables, with every action: created, or the missing tables added."""
    idents = [sql.Identifier(t.schema, t.name) for t in tables]
    row = conn.execute("SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication "
                       "WHERE pubname = %s", (publication,)).fetchone()
    try:
        if row is None:
            statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(idents))
            if conn.info.server_version >= 130000:  # a partitioned table's changes under its own name
                statement += sql.SQL(" WITH (publish_via_partition_root = true)")
            _privileged(conn, statement, f"create the publication {publication}")
            log.info("created publication %s for %d tables", publication, len(tables))
            return
        if not row[0]:
            raise CdcError(f"publication {publication} does not publish every action (insert, update, delete, "
                           f"truncate): run ALTER PUBLICATION {publication} SET (publish = "
                           "'insert, update, delete, truncate')")
        published = {(r[0], r[1]) for r in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))}
        missing = [t for t in tables if (t.schema, t.name) not in published]
        if missing:
            statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in missing))
            _privileged(conn, statement, f"add {', '.join(t.source_name for t in missing)} to publication "
                                         f"{publication}")
    except psycopg.Error as exc:
        raise CdcError(f"publication {publication}: {exc}") from None


def _privileged(conn: psycopg.Connection[Any], statement: sql.Composed, what: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        user = conn.info.user
        raise CdcError(f"user {user} may not {what}; ask the source's administrator to run:\n"
                       f"  {statement.as_string(conn)};") from None


def slot_info(conn: psycopg.Connection[Any], slot: str) -> dict[str, Any] | None:
    """The slot on the source, with the WAL it holds back (bytes) and whether it is in use."""
    cur = conn.execute(
        """
        SELECT slot_name, plugin, slot_type, database, active, restart_lsn::text, confirmed_flush_lsn::text,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,
               pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS pending_bytes,
               wal_status
        FROM pg_replication_slots WHERE slot_name = %s
        """, (slot,))
    row = cur.fetchone()
    if row is None:
        return None
    names = [d.name for d in cur.description or []]
    return dict(zip(names, row, strict=True))


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Drop the slot if it exists (its retained WAL is freed); True when it did."""
    info = slot_info(conn, slot)
    if info is None:
        return False
    if info["active"]:
        raise CdcError(f"slot {slot} is in use by another session (a run in progress?): try again when it ends")
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    log.warning("dropped replication slot %s", slot)
    return True


@contextmanager
def exported_snapshot(conninfo: str, slot: str) -> Iterator[tuple[str, str]]:
    """Create the slot and yield (snapshot name, LSN): the snapshot shows the source exactly at the
    slot's starting point. It stays valid while this block runs (the replication connection stays
    open and idle); read every table's first copy inside it."""
    try:
        conn = psycopg.connect(conninfo, autocommit=True, replication="database")
    except psycopg.Error as exc:
        raise CdcError(f"cannot open a replication connection to the source: {redact(str(exc))}") from None
    try:
        try:  # a replication command: no parameters, so the simple query protocol
            row = conn.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')").format(
                sql.Identifier(slot))).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            raise CdcError(f"user {conn.info.user} may not create replication slots; ask the source's administrator "
                           f"to run:\n  ALTER ROLE {sql.Identifier(conn.info.user).as_string(conn)} WITH "
                           "REPLICATION;") from None
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            raise CdcError(f"the source cannot decode changes: {exc} (set wal_level = logical in its "
                           "postgresql.conf and restart it)") from None
        except psycopg.Error as exc:
            raise CdcError(f"creating replication slot {slot} failed: {exc}") from None
        assert row is not None
        _, consistent_point, snapshot, _ = row
        log.info("created replication slot %s at %s (snapshot %s)", slot, consistent_point, snapshot)
        yield str(snapshot), str(consistent_point)
    finally:
        conn.close()


def advance_slot(conn: psycopg.Connection[Any], slot: str, lsn: str) -> None:
    """Confirm every change up to ``lsn``: the source may free the WAL before it."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn))
