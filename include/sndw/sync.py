"""``sync`` and ``check``: a whole source config run, and counted, without Airflow.

``sync dags/sources/<source>.yaml`` runs every table of the source through the same core pipeline
as its DAG (extract to the lake, load, audit), one after the other, and prints per table the rows,
seconds and write mode. The source's connection comes from ``AIRFLOW_CONN_<CONN_ID>`` (a URI or
Airflow's JSON form), else from Airflow's metadata DB (``airflow connections get``, where `make demo`
puts its connections); the command line itself never imports Airflow.

``check [--schema S] [<source>.yaml]`` prints the row count of each warehouse table the product
loaded, with its last load; with a source config, the source's own counts beside them (sql and
file sources) and exit 1 when a ``replace`` or ``merge`` table does not agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sndw.config import FileSource, HttpSource, SqlSource, TableBase
from sndw.errors import ConfigError

Source = HttpSource | SqlSource | FileSource


@dataclass
class ConnectionInfo:
    """The fields of an Airflow connection, read from ``AIRFLOW_CONN_<ID>`` without Airflow."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def connection_from_env(conn_id: str, environ: Mapping[str, str] | None = None) -> ConnectionInfo:
    env = os.environ if environ is None else environ
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = env.get(name)
    if not value:
        raise ConfigError("environment", name, f"connection {conn_id!r} is not defined: set {name} "
                          "(a URI such as postgresql://user:password@host:5432/db, or Airflow's JSON form)")
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError("environment", name, f"not valid JSON: {exc.msg}") from None
        extra = data.get("extra") or {}
        return ConnectionInfo(conn_id, str(data.get("conn_type") or ""), data.get("host"),
                              int(data["port"]) if data.get("port") else None, data.get("login"),
                              data.get("password"), data.get("schema"),
                              json.loads(extra) if isinstance(extra, str) else dict(extra))
    parts = urlsplit(value)
    conn_type = parts.scheme.replace("-", "_")
    return ConnectionInfo(conn_id, "postgres" if conn_type in ("postgresql", "postgres") else conn_type,
                          unquote(parts.hostname or "") or None, parts.port,
                          unquote(parts.username) if parts.username else None,
                          unquote(parts.password) if parts.password else None,
                          unquote(parts.path.removeprefix("/")) or None, dict(parse_qsl(parts.query)))


def find_connection(conn_id: str, environ: Mapping[str, str] | None = None) -> ConnectionInfo:
    """A connection as Airflow would find it: ``AIRFLOW_CONN_<ID>``, else Airflow's metadata DB
    (where `make demo` and Admin > Connections put theirs), read through ``airflow connections get``
    in a subprocess: the command line itself never imports Airflow."""
    env = os.environ if environ is None else environ
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    if env.get(name):
        return connection_from_env(conn_id, env)
    found, reason = connection_from_airflow(conn_id, env)
    if found is not None:
        return found
    raise ConfigError("environment", name, f"connection {conn_id!r} is not defined: set {name} "
                      "(a URI such as postgresql://user:password@host:5432/db, or Airflow's JSON form), or add it "
                      f"to Airflow (Admin > Connections, `airflow connections add`); Airflow's metadata DB: {reason}")


def connection_from_airflow(conn_id: str, environ: Mapping[str, str]) -> tuple[ConnectionInfo | None, str]:
    """The connection from ``airflow connections get`` (the metadata DB of ``AIRFLOW_HOME``), or
    None and why not. Only with ``AIRFLOW_HOME`` set (``. scripts/dev-env`` sets it): Airflow would
    otherwise make ~/airflow and a database of its own there."""
    import shutil
    import subprocess
    import sys

    if not environ.get("AIRFLOW_HOME"):
        return None, "not looked up (AIRFLOW_HOME is not set: run `. scripts/dev-env` first)"
    beside = Path(sys.executable).with_name("airflow")
    airflow = str(beside) if beside.is_file() else shutil.which("airflow", path=environ.get("PATH"))
    if not airflow:
        return None, "not looked up (no airflow command)"
    try:
        done = subprocess.run([airflow, "connections", "get", conn_id, "--output", "json"], env=dict(environ),
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`airflow connections get` failed: {exc}"
    text = done.stdout[done.stdout.find("["):] if "[" in done.stdout else ""
    try:
        rows = json.loads(text) if done.returncode == 0 and text else []
    except json.JSONDecodeError:
        rows = []
    if not rows or not isinstance(rows[0], dict):
        last = (done.stderr.strip() or done.stdout.strip() or "no answer").splitlines()[-1]
        return None, f"not found there ({last[:200]})"
    data = rows[0]
    extra = data.get("extra_dejson") or {}
    return ConnectionInfo(conn_id, str(data.get("conn_type") or ""), data.get("host") or None,
                          int(data["port"]) if data.get("port") else None, data.get("login") or None,
                          data.get("password") or None, data.get("schema") or None,
                          dict(extra) if isinstance(extra, dict) else {}), "found"


def source_access(source: Source, config_path: str | os.PathLike[str], warehouse: Callable[[], Any] | None,
                  environ: Mapping[str, str] | None = None) -> Any:
    """The ``SourceAccess`` of a source config, from its connection (``find_connection``)."""
    from sndw.audit import register_secret
    from sndw.pipeline import SourceAccess

    if isinstance(source, FileSource):
        return SourceAccess(base_path=file_base_path(source, config_path), warehouse=warehouse)
    conn = find_connection(source.conn_id, environ)
    register_secret(conn.password, login=conn.login)
    if isinstance(source, SqlSource):
        if conn.conn_type == "postgres":
            from psycopg.conninfo import make_conninfo

            options = {k: v for k, v in conn.extra.items()
                       if k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "connect_timeout")}
            conninfo = make_conninfo(host=conn.host or "localhost", port=conn.port or 5432, dbname=conn.schema or "",
                                     user=conn.login or "", password=conn.password or "", **options)
            return SourceAccess(postgres_conninfo=conninfo, warehouse=warehouse)
        if conn.conn_type == "sqlite":
            import sqlite3

            path = sqlite_path(conn)
            if not os.path.isfile(path):  # sqlite3.connect would create an empty database there
                raise ConfigError("environment", f"AIRFLOW_CONN_{source.conn_id.upper()}", f"no SQLite database at {path}")
            uri = f"{Path(path).absolute().as_uri()}?mode=ro"
            return SourceAccess(dbapi_connect=lambda: sqlite3.connect(uri, uri=True), warehouse=warehouse)
        raise ConfigError("environment", f"AIRFLOW_CONN_{source.conn_id.upper()}",
                          f"the command line reads sql sources on postgres or sqlite, not {conn.conn_type!r} "
                          "(run the DAG instead)")
    base_url = _http_base_url(conn)

    def client(table: Any) -> Any:
        from sndw.extract.http import requests_client

        return requests_client(base_url, table, login=conn.login, password=conn.password, extra=conn.extra,
                               where=f"connection {source.conn_id!r}")
    return SourceAccess(http_client=client, warehouse=warehouse)


def sqlite_path(conn: ConnectionInfo) -> str:
    """The database file of a sqlite connection, as Airflow's SqliteHook opens it: the host (JSON
    form; relative to the working folder) or the URI's path, which is absolute: ``sqlite:///data/app.db``
    and ``sqlite:////data/app.db`` both name /data/app.db (the hook refuses the second; this reads it
    as SQLAlchemy does)."""
    if conn.host:
        return f"{conn.host}/{conn.schema}" if conn.schema else conn.host
    return "/" + (conn.schema or "").lstrip("/")


def _http_base_url(conn: ConnectionInfo) -> str:
    host = conn.host or ""
    if "://" in host:
        return host
    scheme = conn.schema if conn.schema in ("http", "https") else ("https" if conn.conn_type == "https" else "http")
    return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")


def file_base_path(source: FileSource, config_path: str | os.PathLike[str]) -> str:
    """The folder a file source's relative paths start from (as the DAG factory resolves it)."""
    return source.folder(config_path)


def render(table: TableBase, partition: date, where: str = "", field: str = "") -> TableBase:
    """The table with ``{{ partition_date }}`` (and ``ds``, ``ds_nodash``) rendered, as the DAG renders it.
    Its quality checks are left as they are: the check engine fills in their own placeholders.
    A template that fails (an undefined name) is a ConfigError naming ``where`` (the config file) and
    the field, below ``field`` (``tables[1]``)."""
    import jinja2

    values = {"partition_date": partition.isoformat(), "ds": partition.isoformat(),
              "ds_nodash": partition.strftime("%Y%m%d")}

    def walk(value: Any, at: str) -> Any:
        if isinstance(value, str) and "{{" in value:
            try:
                return jinja2.Template(value, undefined=jinja2.StrictUndefined).render(**values)
            except jinja2.TemplateError as exc:
                raise ConfigError(where or table.name, at, f"template error: {exc} (sync knows "
                                  f"{', '.join(values)})") from None
        if isinstance(value, dict):
            return {k: walk(v, f"{at}.{k}" if at else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(value)]
        return value

    data = table.model_dump(mode="json")
    checks = data.pop("checks", [])
    return type(table).model_validate({**walk(data, field), "checks": checks})


def source_count(source: Source, table: TableBase, access: Any) -> int | None:
    """The source's row count of one table: sql (``count(*)`` of its query) and file sources; None for http."""
    from sndw.extract.sql import connect_source, table_query

    if isinstance(source, SqlSource):
        query = getattr(table, "query", None) or table_query(getattr(table, "table", None) or "")
        statement = f"SELECT count(*) FROM ({query}) AS sndw_count"  # noqa: S608 - the config's own query
        if access.postgres_conninfo is not None:  # in the extract's session, as the load's source_count check
            with connect_source(access.postgres_conninfo) as conn:
                row = conn.execute(statement).fetchone()
        else:
            conn = access.dbapi_connect()
            try:
                row = conn.execute(statement).fetchone()
            finally:
                conn.close()
        return int(row[0]) if row else None
    if isinstance(source, FileSource):
        from sndw.extract.files import iter_file_batches

        return sum(b.num_rows for b in iter_file_batches(table, access.base_path))  # type: ignore[arg-type]
    return None
