"""The pipeline runner of the command line: `sndw run` and `sndw test-connection`, without Airflow.

Compatible with the runner seed's CLI: a connector file ``{"protocol": "http", "base_url": ...}``
and a relative path as ``--query``::

    python -m sndw.cli run --config connector.json --query /users --source api_users \\
        --table stg_users --lake ./lake [--schema public] [--pipeline default]

One run extracts the resource with the same HTTP client as the DAGs (pagination, retries, rate
limit, auth), writes the lake partition of today's UTC date, loads it into the warehouse
(``AIRFLOW_CONN_DW`` or the ``DW_*`` variables; ``.env`` in the working folder is read for the
ones not set) and records one row in ``etl_audit_log``, success or failure (a row the warehouse
cannot take waits in ``<lake>/_audit_spool/``; the next run that reaches it writes it). It prints a JSON
result on stdout and a summary on stderr; exit 0 on success, 1 on a failure (audited), 2 when
the arguments or the connector file are wrong (nothing ran, nothing audited).

Connector keys: ``protocol`` (``http``/``https``), ``base_url``; optional ``auth`` with ``login``,
``password`` and ``extra`` (the fields of an Airflow connection; ``${VAR}`` takes a value from the
environment, so the file needs no secret), ``headers``, and any http table key except ``name``,
``endpoint``, ``write_mode``, ``primary_key``, ``incremental`` and ``unnest``
(``records_path``, ``pagination``, ``params``, ``retries``, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sndw.errors import ConfigError, SndwError

log = logging.getLogger(__name__)

CONNECTION_KEYS = {"protocol", "base_url", "login", "password", "extra", "headers"}
NOT_IN_CONNECTOR = {"name", "endpoint", "write_mode", "primary_key", "incremental", "unnest", "target_table",
                    "batch_rows"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Connector:
    path: str
    base_url: str
    login: str | None = None
    password: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    table_options: dict[str, Any] = field(default_factory=dict)


def read_env_file(path: str | os.PathLike[str] = ".env") -> list[str]:
    """Set the variables of a ``.env`` file that the environment does not set yet; returns their names."""
    file = Path(path)
    if not file.is_file():
        return []
    added = []
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key and key not in os.environ:
            os.environ[key] = value
            added.append(key)
    return added


def _expand(value: Any, path: str, where: str) -> Any:
    if isinstance(value, str):
        def variable(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(path, where, f"${{{name}}} is not set in the environment")
            return os.environ[name]

        return _VAR.sub(variable, value)
    if isinstance(value, dict):
        return {k: _expand(v, path, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_connector(path: str) -> Connector:
    """Read a connector file (JSON or YAML); errors name the file and the key."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(path, "", f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the file must hold an object with protocol and base_url")
    protocol = str(data.get("protocol") or "").lower()
    if protocol not in ("http", "https"):
        raise ConfigError(path, "protocol", f"`run` supports protocol 'http' (REST/JSON APIs); got {protocol!r}")
    base_url = data.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(path, "base_url", "must be an http:// or https:// URL")
    from sndw.config import HttpTable

    unknown = sorted(k for k in data if k not in CONNECTION_KEYS and (k in NOT_IN_CONNECTOR or k not in HttpTable.model_fields))
    if unknown:
        raise ConfigError(path, unknown[0], "unknown key for a connector file")
    data = _expand(data, path, "")
    extra = data.get("extra") or {}
    headers = data.get("headers") or {}
    if not isinstance(extra, dict) or not isinstance(headers, dict):
        raise ConfigError(path, "extra" if not isinstance(extra, dict) else "headers", "must be an object")
    return Connector(path=path, base_url=data["base_url"], login=data.get("login"), password=data.get("password"),
                     extra=extra, headers={str(k): str(v) for k, v in headers.items()},
                     table_options={k: v for k, v in data.items() if k not in CONNECTION_KEYS})


def http_table(connector: Connector, name: str, endpoint: str, write_mode: str = "replace") -> Any:
    from sndw.config import table_spec

    return table_spec("http", {**connector.table_options, "name": name, "endpoint": endpoint,
                               "write_mode": write_mode}, where=connector.path)


def _client(connector: Connector, table: Any) -> Any:
    from sndw.extract.http import requests_client

    return requests_client(connector.base_url, table, login=connector.login, password=connector.password,
                           extra=connector.extra, headers=connector.headers, where=connector.path)


# ---------------------------------------------------------------------------------- run


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Extract, stage, load and audit one resource; the result as a JSON-ready dict (never raises SndwError)."""
    import psycopg

    from sndw.audit import AuditRecord, error_text, write_audit_record
    from sndw.extract.http import iter_http_batches, join_url, safe_url
    from sndw.lake import write_partition
    from sndw.naming import normalize_identifier, qualified
    from sndw.settings import dw_url
    from sndw.spool import spool_record
    from sndw.warehouse import LoadSpec, load_manifest

    connector = load_connector(args.config)  # ConfigError: a usage error, raised to the caller
    url = dw_url()  # no warehouse configured: a usage error too, before anything runs
    schema, target = normalize_identifier(args.schema), normalize_identifier(args.table)
    source = normalize_identifier(args.source)
    table = http_table(connector, target, args.query, args.write_mode)
    lake = str(Path(args.lake).resolve())
    started = datetime.now(UTC)
    clock = time.perf_counter()
    partition = started.date()
    audit = AuditRecord(pipeline_name=args.pipeline, source_name=args.source, protocol="http",
                        target_table=qualified(schema, target), status="success", started_at=started,
                        step="extract", partition_date=partition)
    audit.attempt_id = f"cli|{audit.run_id}"  # one row per run, also when it comes from the spool
    result: dict[str, Any] = {
        "status": "success", "run_id": audit.run_id, "pipeline": args.pipeline, "source": args.source,
        "protocol": "http", "query": args.query, "target_table": audit.target_table, "write_mode": args.write_mode,
        "partition": partition.isoformat(), "rows_extracted": 0, "rows_loaded": 0, "parquet_files": 0,
        "lake_paths": [], "schema_changes": [], "error": None, "url": safe_url(join_url(connector.base_url, args.query)),
    }
    try:
        with _client(connector, table) as client:
            manifest = write_partition(iter_http_batches(client, table), lake, "http", source, table.name,
                                       partition, run_id=audit.run_id)
        result.update(rows_extracted=manifest.rows, parquet_files=len(manifest.paths), lake_paths=manifest.paths)
        audit.step = "load"
        audit.rows_extracted, audit.bytes, audit.lake_paths = manifest.rows, manifest.bytes, manifest.paths
        with psycopg.connect(url) as conn:
            _flush_spool(conn, lake)  # rows of earlier runs first: ids stay in time order
            loaded = load_manifest(conn, manifest, LoadSpec(schema=schema, table=target, write_mode=args.write_mode),
                                   audit=audit)
        result.update(rows_loaded=loaded.rows_loaded, schema_changes=loaded.schema_changes)
    except Exception as exc:  # every failure leaves its audit row
        result.update(status="failure", step=audit.step, error=error_text(exc))
        audit.status, audit.error_message, audit.finished_at = "failure", error_text(exc), datetime.now(UTC)
        try:
            with psycopg.connect(url) as conn:
                _flush_spool(conn, lake)
                write_audit_record(conn, audit)
            result["audited"] = True
        except (SndwError, psycopg.Error, OSError) as audit_exc:
            result["audited"] = False
            result["audit_error"] = error_text(audit_exc)
            try:  # the next run that reaches the warehouse writes it
                result["audit_spooled"] = str(spool_record(lake, audit))
            except OSError as spool_exc:
                result["audit_spool_error"] = error_text(spool_exc)
    result["seconds"] = round(time.perf_counter() - clock, 3)
    return result


def _flush_spool(conn: Any, lake: str) -> None:
    """Write the audit rows that earlier runs left in the lake's spool; never fails the run."""
    from sndw.audit import error_text
    from sndw.spool import flush_spool

    try:
        flush_spool(conn, lake)
    except Exception as exc:
        log.warning("the audit spool in %s was not flushed: %s", lake, error_text(exc))


def cmd_run(args: argparse.Namespace) -> int:
    _logging()
    read_env_file()
    try:
        result = run_pipeline(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    if result["status"] == "success":
        print(f"ok: {result['rows_loaded']} rows from {result.get('url', args.query)} loaded into "
              f"{result['target_table']} ({args.write_mode}) in {result['seconds']:.1f}s; lake: "
              f"{len(result['lake_paths'])} files, partition {result['partition']}", file=sys.stderr)
        return 0
    print(f"FAILED ({result['step']}): {result['error']}", file=sys.stderr)
    if not result.get("audited"):
        print(f"the audit row could not be written either: {result.get('audit_error')}", file=sys.stderr)
        if result.get("audit_spooled"):
            print(f"it waits in {result['audit_spooled']}; the next run that reaches the warehouse writes it",
                  file=sys.stderr)
    return 1


# ----------------------------------------------------------------------- test-connection


def test_source(connector: Connector, query: str | None) -> dict[str, Any]:
    """One request to the base URL (or ``query``): reachable, and the credentials are accepted."""
    from sndw.audit import error_text
    from sndw.extract.http import join_url

    table = http_table(connector, "connection_test", query or "")
    clock = time.perf_counter()
    with _client(connector, table) as client:
        target = join_url(client.base_url, query or "")
        url = client.safe(target)
        try:
            response = client.send(target, dict(table.params))
        except Exception as exc:  # any failure to connect is the answer
            return {"ok": False, "target": url, "error": error_text(client.clean(f"{type(exc).__name__}: {exc}"))}
    status = response.status_code
    ok = status < 400 or (not query and status in (404, 405))
    if status in (401, 403, 407) or status >= 500:
        ok = False
    result = {"ok": ok, "target": url, "status": status, "seconds": round(time.perf_counter() - clock, 3)}
    if not ok:
        result["error"] = (f"HTTP {status}: the credentials were refused (auth {table.auth or 'default'})"
                           if status in (401, 403, 407) else f"HTTP {status} {response.reason}")
    return result


def test_warehouse() -> dict[str, Any]:
    import psycopg

    from sndw.audit import error_text
    from sndw.settings import dw_url

    url = dw_url()
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_database(), current_user, current_setting('server_version')").fetchone()
            info = conn.info
            assert row is not None
            return {"ok": True, "target": "dw", "host": info.host, "port": info.port, "database": row[0],
                    "user": row[1], "server_version": row[2]}
    except psycopg.Error as exc:
        return {"ok": False, "target": "dw", "error": error_text(str(exc))}


def cmd_test_connection(args: argparse.Namespace) -> int:
    _logging()
    read_env_file()
    try:
        if args.config:
            result = test_source(load_connector(args.config), args.query)
        elif args.source == "dw":
            result = test_warehouse()
        else:
            print("error: test-connection needs --config <connector file> or --source dw", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    if result["ok"]:
        where = result.get("database") or result["target"]
        print(f"ok: {result['target']} reachable ({where}{', HTTP ' + str(result['status']) if 'status' in result else ''})",
              file=sys.stderr)
        return 0
    print(f"FAILED: {result['target']}: {result.get('error')}", file=sys.stderr)
    return 1


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def add_commands(sub: Any) -> None:
    """The runner's subcommands on the CLI's subparsers (``sndw.cli.build_parser``)."""
    run = sub.add_parser("run", help="extract one resource of a connector, stage it in the lake, load it, audit it")
    run.add_argument("--config", required=True, help="connector file (JSON or YAML): protocol, base_url, ...")
    run.add_argument("--query", required=True, help="the resource: a path relative to base_url, e.g. /users")
    run.add_argument("--source", required=True, help="logical name of the source system")
    run.add_argument("--table", required=True, help="target table in the warehouse")
    run.add_argument("--lake", required=True, help="folder where the Parquet files are staged")
    run.add_argument("--schema", default="public", help="target schema (default: public)")
    run.add_argument("--pipeline", default="default", help="logical name of this pipeline (default: default)")
    run.add_argument("--write-mode", default="replace", choices=["replace", "append", "partition"],
                     help="how the load writes the table (default: replace)")
    run.set_defaults(func=cmd_run)
    test = sub.add_parser("test-connection", help="check a connector's source, or the warehouse (--source dw)")
    test.add_argument("--config", help="connector file to test")
    test.add_argument("--source", help="'dw' tests the warehouse connection")
    test.add_argument("--query", help="a path to request instead of the base URL (must answer 2xx)")
    test.set_defaults(func=cmd_test_connection)
