"""DDL that concurrent loads may run at the same moment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as pgsql


def create_schema(cur: psycopg.Cursor[Any], schema: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` that survives a concurrent creator.

    PostgreSQL's ``IF NOT EXISTS`` is not safe against a transaction that creates the same schema at
    the same moment: the second one waits for the first to commit, then fails on the catalog's unique
    index (parallel first loads of two tables into a new schema did exactly this). The statement runs
    in a savepoint, so that failure means the schema now exists and the caller's transaction goes on;
    when the schema is already there, nothing is run at all.
    """
    import psycopg
    from psycopg import sql

    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    if cur.fetchone() is not None:
        return
    try:
        with cur.connection.transaction():
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    except psycopg.errors.UniqueViolation:
        pass  # created and committed by a concurrent transaction meanwhile


def ensure_table(conn: psycopg.Connection[Any], schema: str, name: str, statements: Sequence[pgsql.Composed]) -> None:
    """Create one of the product's own tables (and its indexes) once: nothing is run when it
    exists; otherwise ``statements`` (``CREATE ... IF NOT EXISTS``) run under an advisory lock on
    the table's name, so two loads making it at the same moment do not collide."""
    from psycopg import sql

    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),))
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sndw:ddl:{schema}.{name}",))
        create_schema(cur, schema)
        for statement in statements:
            cur.execute(statement)


def drop_temp(cur: psycopg.Cursor[Any], name: pgsql.Composable) -> None:
    """Drop a load's temporary table of that name if an earlier load of the same transaction left it:
    ``ON COMMIT DROP`` drops it at the commit, and a replay loads a table's partitions in one
    transaction (a second merge failed on ``_sndw_stage_<table> already exists``)."""
    from psycopg import sql

    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
