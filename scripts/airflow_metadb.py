"""Airflow's metadata database on PostgreSQL: create it on a cluster and migrate it once per version.

Used by scripts/dev-env (``url``), scripts/airflow-init (``ensure``) and tests/conftest.py. SQLite
is not an option: the scheduler, API server and DAG processor of ``make up`` write to it at once,
and SQLite then fails with ``database is locked``.

    python scripts/airflow_metadb.py url POSTGRES_URL [DATABASE]   the SQLAlchemy URL Airflow wants
    python scripts/airflow_metadb.py ensure                        create + migrate the configured DB
    python scripts/airflow_metadb.py dw-connection FILE            AIRFLOW_CONN_DW as `connections import` reads it

The migration stamp lives in the database itself (its comment), so a recreated cluster is migrated
again and a migrated one is never migrated twice; a database whose comment we may not set (not its
owner) is migrated at every ``ensure`` (``airflow db migrate`` is idempotent). Imports no Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_DATABASE = "airflow"
# psycopg 3: what the provider and the warehouse already use; Airflow derives postgresql+asyncpg
# for its async engine from it (asyncpg comes with apache-airflow).
SCHEME = "postgresql+psycopg"


def metadata_url(pg_url: str, database: str = DEFAULT_DATABASE) -> str:
    """``postgresql://u:p@h:port/any`` -> ``postgresql+psycopg://u:p@h:port/<database>``."""
    parts = urlsplit(pg_url)
    if parts.scheme not in ("postgres", "postgresql", SCHEME, "postgresql+psycopg2"):
        raise ValueError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    return urlunsplit(parts._replace(scheme=SCHEME, path=f"/{database}"))


def libpq_url(sqlalchemy_url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it (``postgresql://``)."""
    parts = urlsplit(sqlalchemy_url)
    if not parts.scheme.startswith("postgresql"):
        raise ValueError(
            f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN must be a PostgreSQL URL (postgresql+psycopg://...), "
            f"not {parts.scheme!r}: SQLite locks up under make up")
    return urlunsplit(parts._replace(scheme="postgresql"))


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}{parts.path}"


def _stamp() -> str:
    return f"sndw: airflow db migrate done for Airflow {version('apache-airflow')}"


def create_database(url: str) -> bool:
    """Create the URL's database through the cluster's ``postgres`` database when it is missing;
    True when it was created."""
    url = libpq_url(url)
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    try:
        with psycopg.connect(url, connect_timeout=10):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise SystemExit(f"airflow-metadb: cannot connect to {_safe(url)}: {str(exc).strip()}") from None
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def is_migrated(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    return bool(row and row[0] == _stamp())


def ensure(url: str, log: Path | None = None) -> bool:
    """Create and migrate Airflow's metadata DB at ``url`` unless done for this Airflow version;
    True when ``airflow db migrate`` ran. Airflow runs with this URL whatever the environment says."""
    pq_url = libpq_url(url)
    create_database(pq_url)
    with psycopg.connect(pq_url, autocommit=True, connect_timeout=10) as conn:
        if is_migrated(conn):
            return False
        env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}
        result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                                text=True, check=False)
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"airflow-metadb: airflow db migrate on {_safe(url)} failed:\n"
                             f"{(result.stdout + result.stderr)[-3000:]}")
        try:
            name = conn.execute("SELECT current_database()").fetchone()
            assert name is not None
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name[0]),
                                                                        sql.Literal(_stamp())))
        except psycopg.Error:
            pass  # not the owner: migrate again next time, which is harmless
    return True


def dw_connection(value: str) -> dict[str, object]:
    """The warehouse connection ``dw`` from AIRFLOW_CONN_DW (a URI or Airflow's JSON form)."""
    if value.lstrip().startswith("{"):
        conn = dict(json.loads(value))
    else:
        parts = urlsplit(value)
        conn = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port,
                "login": unquote(parts.username or ""), "password": unquote(parts.password or ""),
                "schema": unquote(parts.path.lstrip("/"))}
    conn.setdefault("description", "the warehouse (scripts/airflow-init, from AIRFLOW_CONN_DW; that variable wins)")
    return {"dw": conn}


def write_dw_connection(path: Path, value: str) -> bool:
    """Write the ``dw`` connection file (mode 600: a password) when it differs; whether it changed."""
    text = json.dumps(dw_connection(value), indent=2)
    if path.is_file() and path.read_text() == text:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return True


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "dw-connection":
        value = os.environ.get("AIRFLOW_CONN_DW", "")
        if not value:
            return 0  # no warehouse configured here: nothing to register
        write_dw_connection(Path(argv[1]), value)
        return 0
    if len(argv) >= 2 and argv[0] == "url":
        print(metadata_url(argv[1], argv[2] if len(argv) > 2 else DEFAULT_DATABASE))
        return 0
    if argv == ["ensure"]:
        url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
        if not url:
            print("airflow-metadb: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set (source scripts/dev-env)",
                  file=sys.stderr)
            return 1
        home = Path(os.environ.get("AIRFLOW_HOME", "."))
        try:
            if ensure(url, home / "db-migrate.log"):
                # A new (or recreated) database: the demo's connections must be imported again.
                (home / ".demo-connections-imported").unlink(missing_ok=True)
                print(f"airflow-init: migrated the metadata DB {_safe(url)} "
                      f"(Airflow {version('apache-airflow')})", file=sys.stderr)
        except ValueError as exc:
            print(f"airflow-metadb: {exc}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
