"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
PG_LOCAL = ROOT / "scripts" / "pg-local"
TEST_PG_DIR = Path(os.environ.get("SNDW_TEST_PG_DIR", ROOT / ".local" / "pg-test"))
TEMPLATE_DB = "sndw_test_template"
TEST_DB_PREFIX = "sndw_t_"

# Airflow reads these at import: the project's embedded Airflow, unless the caller set its own.
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server of the test session's own (scripts/pg-local in .local/pg-test)."""
    env = {**os.environ, "PG_LOCAL_DIR": str(TEST_PG_DIR)}
    started = subprocess.run([str(PG_LOCAL), "start"], env=env, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        pytest.fail(f"could not start the test PostgreSQL:\n{started.stdout}\n{started.stderr}")
    url = subprocess.run([str(PG_LOCAL), "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    with psycopg.connect(url, autocommit=True) as conn:
        stale = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                             (TEST_DB_PREFIX + "%",)).fetchall()
        for (name,) in stale:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    yield url


@pytest.fixture
def dw_url(pg_url: str) -> Iterator[str]:
    """A fresh database for one test, cloned from the template and dropped afterwards."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB)))
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def dw(dw_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dw_url) as conn:
        yield conn


@pytest.fixture
def source_db(pg_url: str) -> Iterator[str]:
    """A second fresh database, used as a SQL source."""
    name = f"{TEST_DB_PREFIX}src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def count(conn: psycopg.Connection, table: str) -> int:
    schema, _, name = table.rpartition(".")
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema or "public"), sql.Identifier(name))).fetchone()
    assert row is not None
    return int(row[0])
