"""The pipeline runner of the command line: ``run``, ``test-connection``, ``sync`` and ``check``, without Airflow.

The runner seed's command line, for every source kind (``python -m etl.cli`` is ``sndw``)::

    python -m etl.cli run --config connector.json --query /users --source api_users \\
        --table stg_users --lake ./lake [--schema public] [--pipeline default]
    python -m etl.cli run --config examples/postgres_connector.json --query "SELECT 1 AS n" \\
        --source test --table dw_test --lake ./lake

The connector file (``sndw.connectors``) says which kind of source ``--query`` reads: a path of an
HTTP API, SQL on PostgreSQL or SQLite, a file path or glob. One run goes through the same core
pipeline as the DAGs (``sndw.pipeline``): the lake partition of today's UTC date, the load into the
warehouse (``AIRFLOW_CONN_DW`` or the ``DW_*`` variables; ``.env`` in the working folder is read for
the ones not set) and one row in ``etl_audit_log``, success or failure. It prints a JSON result on
stdout and a summary on stderr; exit 0 on success, 1 on a failure (audited), 2 when the arguments or
the connector file are wrong (nothing ran, nothing audited).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sndw import storage
from sndw.connectors import Connector, load_connector
from sndw.errors import ConfigError, SndwError

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------- run


def warehouse_factory(url: str) -> Callable[[], Any]:
    def connect() -> Any:
        import psycopg

        return psycopg.connect(url)
    return connect


def run_table(*, url: str, pipeline: str, source: str, kind: str, table: Any, access: Any, lake: str,
              schema: str, partition: date, what: str = "", source_name: str | None = None,
              prepare: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Extract, stage, load and audit one table through the core pipeline; never raises on a failure.
    ``prepare`` (sync: rendering the table's templates) runs first, inside the audited attempt.

    Returns the JSON-ready result: the plan's ``run_id, status, rows_loaded, parquet_files,
    duration_seconds`` and the details. Unnested child tables of an http table are loaded after it.
    ``source`` names the lake folder; ``source_name`` (default: the same) is what the audit rows say.
    """
    import psycopg

    from sndw.audit import AuditRecord, error_text
    from sndw.lake import Manifest
    from sndw.naming import qualified
    from sndw.pipeline import ExtractRequest, extract_table, load_table
    from sndw.spool import flush_spool, spool_record
    from sndw.warehouse import LoadSpec

    started = datetime.now(UTC)
    clock = time.perf_counter()
    audit = AuditRecord(pipeline_name=pipeline, source_name=source_name or source, protocol=kind,
                        target_table=qualified(schema, table.target), status="success", started_at=started,
                        step="extract", partition_date=partition)
    audit.attempt_id = f"cli|{audit.run_id}"  # one row per run, also when it comes from the spool
    result: dict[str, Any] = {
        "run_id": audit.run_id, "status": "success", "pipeline": pipeline, "source": source, "protocol": kind,
        "query": what, "target_table": audit.target_table, "write_mode": table.write_mode,
        "partition": partition.isoformat(), "rows_extracted": 0, "rows_loaded": 0, "parquet_files": 0,
        "lake_paths": [], "schema_changes": [], "error": None,
    }
    children: list[tuple[Any, Manifest]] = []
    try:
        table = prepare(table) if prepare else table
        request = ExtractRequest(pipeline=pipeline, source=source, kind=kind, table=table, partition=partition,
                                 lake_root=lake, run_id=audit.run_id)
        manifest = extract_table(request, access, on_child=lambda child, m: children.append((child, m)))
        result.update(rows_extracted=manifest.rows, parquet_files=len(manifest.paths), lake_paths=manifest.paths)
        audit.step = "load"
        audit.rows_extracted, audit.bytes, audit.lake_paths = manifest.rows, manifest.bytes, manifest.paths
        with psycopg.connect(url) as conn:
            _flush(conn, lake, flush_spool)
            spec = LoadSpec(schema=schema, table=table.target, write_mode=table.write_mode,
                            primary_key=table.key_columns, allow_empty=getattr(table, "allow_empty", False),
                            transform=getattr(table, "transform", None), checks=getattr(table, "checks", ()),
                            deletes=getattr(table, "deletes", None),
                            max_delete_fraction=getattr(table, "max_delete_fraction", 0.5),
                            schema_contract=getattr(table, "schema_contract", "evolve"))
            loaded = load_table(conn, manifest, spec, pipeline=pipeline, audit=audit)
            result.update(rows_loaded=loaded.rows_loaded, schema_changes=loaded.schema_changes)
            if loaded.rows_deleted is not None:
                result["rows_deleted"] = loaded.rows_deleted
            if loaded.checks is not None:
                result.update(checks=loaded.checks, rows_rejected=loaded.rows_rejected)
            for child, child_manifest in children:
                child_audit = AuditRecord(pipeline_name=pipeline, source_name=audit.source_name, protocol=kind,
                                          target_table=qualified(schema, child.target), status="success",
                                          started_at=datetime.now(UTC), step="load", partition_date=partition,
                                          rows_extracted=child_manifest.rows, lake_paths=child_manifest.paths)
                child_audit.attempt_id = f"cli|{audit.run_id}|{child.name}"
                child_spec = LoadSpec(schema=schema, table=child.target, write_mode=child.write_mode,
                                      primary_key=child.key_columns, allow_empty=True)
                child_loaded = load_table(conn, child_manifest, child_spec, pipeline=pipeline, audit=child_audit)
                result.setdefault("children", []).append(
                    {"target_table": child_audit.target_table, "rows_loaded": child_loaded.rows_loaded})
    except Exception as exc:  # every failure leaves its audit row (spooled when the warehouse is down)
        result.update(status="failure", step=audit.step, error=error_text(exc))
        audit.status, audit.error_message, audit.finished_at = "failure", error_text(exc), datetime.now(UTC)
        try:
            from sndw.audit import write_audit_record

            with psycopg.connect(url) as conn:
                _flush(conn, lake, flush_spool)
                write_audit_record(conn, audit)
            result["audited"] = True
        except (SndwError, psycopg.Error, OSError) as audit_exc:
            result["audited"] = False
            result["audit_error"] = error_text(audit_exc)
            try:  # the next run that reaches the warehouse writes it
                result["audit_spooled"] = str(spool_record(lake, audit))
            except OSError as spool_exc:
                result["audit_spool_error"] = error_text(spool_exc)
    seconds = round(time.perf_counter() - clock, 3)
    result["duration_seconds"] = result["seconds"] = seconds
    return result


def _flush(conn: Any, lake: str, flush: Callable[[Any, str], int]) -> None:
    """Write the audit rows that earlier runs left in the lake's spool first (ids stay in time
    order); a flush problem never fails the run."""
    from sndw.audit import error_text

    try:
        flush(conn, lake)
    except Exception as exc:  # the spool waits for the next run; this one goes on
        log.warning("audit: the spool in %s was not flushed: %s", lake, error_text(exc))


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """``run``: one resource of a connector. ConfigError (exit 2) before anything runs."""
    from sndw.naming import normalize_identifier
    from sndw.settings import dw_url

    connector = load_connector(args.config)
    url = dw_url()  # no warehouse configured: a usage error too, before anything runs
    schema, target = normalize_identifier(args.schema), normalize_identifier(args.table)
    source = normalize_identifier(args.source)
    table = connector.table(target, args.query, args.write_mode)
    lake = args.lake if storage.is_url(args.lake) else str(Path(args.lake).resolve())
    result = run_table(url=url, pipeline=args.pipeline, source=source, kind=connector.kind, table=table,
                       access=connector.access(warehouse=warehouse_factory(url)), lake=lake, schema=schema,
                       partition=datetime.now(UTC).date(), what=args.query, source_name=args.source)
    result["source"] = args.source
    result["connector"] = connector.describe()
    if connector.kind == "http":
        from sndw.extract.http import join_url, safe_url

        result["url"] = safe_url(join_url(connector.settings["base_url"], args.query))
    return result


def cmd_run(args: argparse.Namespace) -> int:
    progress = _logging(args)
    read_env_file()
    try:
        result = run_pipeline(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.end()
    print(json.dumps(result, default=str))
    if result["status"] == "success":
        print(f"ok: {result['rows_loaded']} rows from {result.get('url') or result['connector']} loaded into "
              f"{result['target_table']} ({args.write_mode}) in {result['seconds']:.1f}s; lake: "
              f"{len(result['lake_paths'])} files, partition {result['partition']}", file=sys.stderr)
        return 0
    _failed(result)
    return 1


def _failed(result: dict[str, Any]) -> None:
    print(f"FAILED ({result.get('step')}): {result['target_table']}: {result['error']}", file=sys.stderr)
    if not result.get("audited"):
        print(f"the audit row could not be written either: {result.get('audit_error')}", file=sys.stderr)
        if result.get("audit_spooled"):
            print(f"it waits in {result['audit_spooled']}; the next run that reaches the warehouse writes it",
                  file=sys.stderr)


# ----------------------------------------------------------------------- test-connection


def test_source(connector: Connector, query: str | None) -> dict[str, Any]:
    """Reach the connector's source: one request (http), ``SELECT 1`` (sql), the folder or glob (file)."""
    from sndw.audit import error_text

    clock = time.perf_counter()
    target = connector.describe()
    try:
        if connector.kind == "http":
            return _test_http(connector, query)
        if connector.protocol == "sqlite":
            import sqlite3

            with sqlite3.connect(f"file:{connector.sqlite_path()}?mode=ro", uri=True) as db:
                db.execute(query or "SELECT 1").fetchone()
        elif connector.kind == "sql":
            import psycopg

            connector.access()  # registers the password with the redaction
            with psycopg.connect(connector.postgres_conninfo(), connect_timeout=10) as conn:
                conn.execute(query or "SELECT 1").fetchone()
        else:
            from sndw.extract.files import resolve_paths

            base = connector.base_path()
            if not Path(base).is_dir():
                return {"ok": False, "target": target, "error": f"no folder {base}"}
            if query and not resolve_paths(query, base):
                return {"ok": False, "target": target, "error": f"no file matches {query} under {base}"}
    except Exception as exc:  # any failure to connect is the answer
        return {"ok": False, "target": target, "error": error_text(f"{type(exc).__name__}: {exc}")}
    return {"ok": True, "target": target, "seconds": round(time.perf_counter() - clock, 3)}


def _test_http(connector: Connector, query: str | None) -> dict[str, Any]:
    from sndw.audit import error_text
    from sndw.extract.http import join_url

    table = connector.table("connection_test", query or "")
    clock = time.perf_counter()
    with connector.http_client(table) as client:
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
    _logging(args)
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


def _logging(args: argparse.Namespace | None = None) -> Any:
    """Warnings (``-v``: every step) on stderr, and the progress of long extracts and loads: one live
    line on a terminal, plain lines otherwise. Returns the progress handler (``.end()`` it)."""
    from sndw.progress import show_progress

    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return show_progress(sys.stderr)


def add_commands(sub: Any) -> None:
    """The runner's subcommands on the CLI's subparsers (``sndw.cli.build_parser``)."""
    run = sub.add_parser("run", help="extract one resource of a connector, stage it in the lake, load it, audit it")
    run.add_argument("--config", required=True, help="connector file (JSON or YAML): protocol and how to reach it")
    run.add_argument("--query", required=True,
                     help="the resource: a path relative to base_url (http), SQL (postgres, sqlite), a file "
                          "path or glob (file)")
    run.add_argument("--source", required=True, help="logical name of the source system")
    run.add_argument("--table", required=True, help="target table in the warehouse")
    run.add_argument("--lake", required=True, help="folder where the Parquet files are staged")
    run.add_argument("--schema", default="public", help="target schema (default: public)")
    run.add_argument("--pipeline", default="default", help="logical name of this pipeline (default: default)")
    run.add_argument("--write-mode", default="replace", choices=["replace", "append", "partition"],
                     help="how the load writes the table (default: replace)")
    run.add_argument("-v", "--verbose", action="store_true", help="log progress and each step")
    run.set_defaults(func=cmd_run)
    test = sub.add_parser("test-connection", help="check a connector's source, or the warehouse (--source dw)")
    test.add_argument("--config", help="connector file to test")
    test.add_argument("--source", help="'dw' tests the warehouse connection")
    test.add_argument("--query", help="http: a path that must answer 2xx; sql: a query to run; file: a glob that must match")
    test.set_defaults(func=cmd_test_connection)
