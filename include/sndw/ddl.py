"""DDL that concurrent loads may run at the same moment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


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
