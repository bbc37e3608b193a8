"""Command line: `python -m sndw.cli` (or `sndw`). Works without Airflow."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sndw import storage
from sndw.config import FileSource, HttpSource, SqlSource, iter_sources
from sndw.errors import ConfigError, SndwError


def cmd_validate(args: argparse.Namespace) -> int:
    failures = 0
    checked = 0
    for target in args.paths:
        path = Path(target)
        folder_items = iter_sources(path) if path.is_dir() else _single(path)
        for file, parsed in folder_items:
            checked += 1
            if isinstance(parsed, ConfigError):
                failures += 1
                for line in str(parsed).splitlines():  # one line per problem of the file
                    print(f"INVALID {line}", file=sys.stderr)
            else:
                tables = ", ".join(t.name for t in parsed.tables)
                print(f"ok      {file}: {parsed.kind} source {parsed.name!r} ({tables})")
                if isinstance(parsed, FileSource):  # the environment here may not be the one the DAGs run in
                    for name in parsed.unset_variables():
                        print(f"WARNING {file}: base_path: ${{{name}}} is not set in this environment; the DAG "
                              "file shows the source as invalid where it is not set either", file=sys.stderr)
    if not checked:
        print("no source configs found", file=sys.stderr)
        return 1
    print(f"{checked - failures} valid, {failures} invalid")
    return 1 if failures else 0


def _single(path: Path) -> Iterator[tuple[Path, HttpSource | SqlSource | FileSource | ConfigError]]:
    from sndw.config import load_source_file

    try:
        yield path, load_source_file(path)
    except ConfigError as exc:
        yield path, exc


def _dw() -> Any:
    import psycopg

    from sndw.settings import dw_url

    return psycopg.connect(dw_url())


def _source(path: str) -> HttpSource | SqlSource | FileSource:
    from sndw.config import load_source_file

    return load_source_file(path)


def cmd_state(args: argparse.Namespace) -> int:
    from sndw.state import list_watermarks, manual_value, set_watermark

    if args.action == "set":
        if not (args.cursor and args.value):
            print("error: state set needs --cursor and --value", file=sys.stderr)
            return 2
        try:
            args.value = manual_value(args.value, args.type)
        except ValueError as exc:
            print(f"error: --value {exc} (--type {args.type})", file=sys.stderr)
            return 2
    with _dw() as conn:
        if args.action == "list":
            rows = list_watermarks(conn)
            for pipeline, table, cursor, value, value_type, updated, run_id in rows:
                print(f"{pipeline}.{table}: {cursor} = {value} ({value_type}, {updated:%Y-%m-%d %H:%M:%S} UTC, {run_id})")
            if not rows:
                print("no watermarks yet")
        elif args.action == "reset":
            set_watermark(conn, args.pipeline, args.table, args.cursor or "", None, "text")
            print(f"{args.pipeline}.{args.table}: watermark removed; the next run reads from the start")
        else:
            set_watermark(conn, args.pipeline, args.table, args.cursor, args.value, args.type)
            print(f"{args.pipeline}.{args.table}: {args.cursor} = {args.value}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from sndw.replay import find_table, replay_table
    from sndw.settings import lake_root

    source = _source(args.config)
    tables = [find_table(source, name) for name in args.table] if args.table else list(source.tables)
    with _dw() as conn:
        for table in tables:
            try:
                results = replay_table(conn, source, table, args.lake or lake_root(), args.date_from, args.date_to)
            except Exception as exc:  # the table is as it was (one transaction); the attempt leaves its row
                _audit_replay_failure(conn, source, table, exc)
                raise
            if isinstance(source, SqlSource) and source.cdc is not None:  # the snapshot, then the changes
                print(f"{source.name}.{table.name}: snapshot ({results[0].rows_loaded} rows) and {len(results) - 1} "
                      f"change partitions replayed into {source.target_schema}.{table.target}")
                continue
            rows = sum(r.rows_loaded for r in results)
            print(f"{source.name}.{table.name}: {len(results)} partitions, {rows} rows replayed into "
                  f"{source.target_schema}.{table.target}")
    return 0


def _audit_replay_failure(conn: Any, source: Any, table: Any, exc: Exception) -> None:
    """The failure row of a replay of ``table`` that changed nothing (its transaction rolled back)."""
    from datetime import UTC, datetime

    from sndw.audit import AuditRecord, error_text, write_audit_record
    from sndw.naming import qualified

    conn.rollback()
    now = datetime.now(UTC)
    write_audit_record(conn, AuditRecord(
        pipeline_name=source.name, source_name=source.name, protocol=source.kind,
        target_table=qualified(source.target_schema, table.target), status="failure", started_at=now,
        finished_at=now, step="replay", error_message=error_text(exc), dag_id=source.name,
        task_id=f"replay_{table.name}", try_number=1))
    conn.commit()


def cmd_gaps(args: argparse.Namespace) -> int:
    import json

    from sndw.reconcile import format_report, reconcile
    from sndw.settings import lake_root

    source = _source(args.config)
    with _dw() as conn:
        report = reconcile(conn, source, args.lake or lake_root(), args.date_from, args.date_to)
    if args.json:
        print(json.dumps([r.to_dict() for r in report], indent=2))
    else:
        print(format_report(report))
    bad = [r for r in report if r.status in ("missing", "failed") or r.counts_agree is False]
    return 1 if bad and args.strict else 0


def cmd_sync(args: argparse.Namespace) -> int:
    import json

    from sndw.runner import _logging, read_env_file, run_table, warehouse_factory
    from sndw.settings import dw_url, lake_root
    from sndw.sync import render, source_access

    progress = _logging(args)
    read_env_file()
    try:
        source = _source(args.config)
        url = dw_url()
        access = source_access(source, args.config, warehouse_factory(url))
        # Each table after those its relationships checks relate to (SourceBase.load_order).
        tables = [t for t in source.load_order() if not args.table or t.name in args.table]
        if args.table and isinstance(source, SqlSource) and source.cdc is not None:
            raise ConfigError(args.config, "cdc", "a cdc source syncs every table in one run: leave out --table")
        if args.table and len(tables) != len(set(args.table)):
            known = ", ".join(t.name for t in source.tables)
            raise ConfigError(args.config, "tables", f"no table {sorted(set(args.table) - {t.name for t in tables})} "
                                                     f"(known: {known})")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    partition = args.date or datetime.now(UTC).date()
    lake = args.lake or lake_root()
    lake = lake if storage.is_url(lake) else str(Path(lake).resolve())
    results = []
    print(f"sync {source.name} ({source.kind}), partition {partition}, lake {lake}", file=sys.stderr)
    if isinstance(source, SqlSource) and source.cdc is not None:  # every table in one run: sndw.cdc
        results = _sync_cdc(source, access, url, lake, partition)
        progress.end()
        for result, cdc_table in zip(results, source.tables, strict=False):
            _print_sync(result, cdc_table.name)
    for table in [] if isinstance(source, SqlSource) and source.cdc is not None else tables:
        field = f"tables[{[t.name for t in source.tables].index(table.name)}]"

        def prepare(spec: Any, field: str = field) -> Any:  # inside the audited attempt: a template error is audited
            return render(spec, partition, args.config, field)

        result = run_table(url=url, pipeline=source.name, source=source.name, kind=source.kind, table=table,
                           prepare=prepare, access=access, lake=lake, schema=source.target_schema,
                           partition=partition, what=table.name)
        progress.end()
        results.append(result)
        _print_sync(result, table.name)
    if args.json:
        print(json.dumps(results, default=str))
    failed = [r for r in results if r["status"] != "success"]
    total = sum(r["rows_loaded"] for r in results)
    print(f"{len(results) - len(failed)} of {len(results)} tables synced, {total} rows", file=sys.stderr)
    return 1 if failed else 0


def _print_sync(result: dict[str, Any], name: str) -> None:
    status = "ok" if result["status"] == "success" else "FAILED"
    deleted = f", {result['rows_deleted']} deleted" if result.get("rows_deleted") is not None else ""
    print(f"{status:6} {name:30} {result['rows_loaded']:>10} rows{deleted} {result['seconds']:>8.1f}s  "
          f"{result['write_mode']:9} -> {result['target_table']}"
          + (f"\n       {result['error']}" if result["error"] else ""), file=sys.stderr)


# ---------------------------------------------------------------- change data capture (sndw.cdc)


def _sync_cdc(source: SqlSource, access: Any, url: str, lake: str, partition: date) -> list[dict[str, Any]]:
    from sndw.audit import error_text
    from sndw.cdc.run import audit_refused_run, sync_cdc

    try:
        return sync_cdc(source, access, url=url, lake=lake, partition=partition)
    except Exception as exc:  # before any change was read: nothing changed; the attempt leaves its rows
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return audit_refused_run(source, url, lake, partition, exc)


def cmd_cdc(args: argparse.Namespace) -> int:
    import json

    from sndw.cdc.run import cdc_reset, cdc_status
    from sndw.runner import read_env_file, warehouse_factory
    from sndw.settings import dw_url
    from sndw.sync import source_access

    read_env_file()
    try:
        source = _source(args.config)
        if not isinstance(source, SqlSource) or source.cdc is None:
            raise ConfigError(args.config, "cdc", f"source {source.name} does not use change data capture")
        url = dw_url()
        access = source_access(source, args.config, warehouse_factory(url))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "reset":
        done = cdc_reset(source, access, url)
        print(json.dumps(done) if args.json else
              f"{source.name}: slot {done['slot']} {'dropped' if done['slot_dropped'] else 'did not exist'}, position "
              "forgotten: the next sync takes a new snapshot of every table")
        return 0
    status = cdc_status(source, access, url)
    if args.json:
        print(json.dumps(status, default=str))
    elif not status["exists"]:
        print(f"{source.name}: slot {status['slot']} does not exist"
              + (f" (position {status['stored_position']} stored: run `sndw cdc reset`)" if status["stored_position"]
                 else " (the next sync creates it and takes the snapshot)"))
    else:
        age = status["seconds_since_confirmed"]
        print(f"{source.name}: slot {status['slot']} ({'active' if status['active'] else 'idle'}, "
              f"wal {status['wal_status']}), retains {_bytes(status['retained_wal_bytes'])} of WAL, "
              f"{_bytes(status['pending_wal_bytes'])} not confirmed; position {status['stored_position']}, "
              f"confirmed {'never' if age is None else f'{age:.0f}s ago'}")
    return 1 if status["stored_position"] and not status["exists"] else 0


def _bytes(value: int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def add_cdc_commands(sub: Any) -> None:
    cdc = sub.add_parser("cdc", help="change data capture: the slot's status, or reset it (a new snapshot)")
    cdc.add_argument("action", choices=["status", "reset"],
                     help="status: retained WAL and time since the last confirmation; reset: drop the slot, "
                          "the next sync takes a new snapshot")
    cdc.add_argument("config", help="the source's config file (a sql source with cdc:)")
    cdc.add_argument("--json", action="store_true", help="print JSON")
    cdc.set_defaults(func=cmd_cdc)


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from sndw.check import check_counts, format_counts
    from sndw.runner import read_env_file, warehouse_factory
    from sndw.settings import dw_url

    read_env_file()
    try:
        source = _source(args.config) if args.config else None
        url = dw_url()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quality:  # the tables' quality checks on what is loaded (sndw.check.check_quality)
        return _check_quality(args, source, warehouse_factory(url))
    rows = check_counts(warehouse_factory(url), source, args.config, schema=args.schema)
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
    else:
        print(format_counts(rows))
    return 1 if any(r.get("agrees") is False or r.get("source_error") for r in rows) else 0


def _check_quality(args: argparse.Namespace, source: Any, connect: Any) -> int:
    import json

    from sndw.check import check_quality, format_quality

    if source is None:
        print("error: check --quality needs a source config", file=sys.stderr)
        return 2
    rows = check_quality(connect, source, args.date)
    print(json.dumps(rows, default=str, indent=1) if args.json else format_quality(rows))
    return 1 if any(r["status"] in ("fail", "error") for r in rows) else 0


def cmd_freshness(args: argparse.Namespace) -> int:
    """Measure only: the state the maintenance DAG keeps (and alerts on) is left as it is."""
    import json

    from sndw.freshness import measure

    path = Path(args.config)
    found = iter_sources(path) if path.is_dir() else _single(path)
    sources = [s for _, s in found if not isinstance(s, ConfigError)]
    with _dw() as conn:
        results = [r for source in sources for r in measure(conn, source)]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        for result in results:
            print(f"{result.status.upper():6s} {result.describe()}")
        if not results:
            print("no table has a freshness policy (freshness: {warn_after, error_after})")
    return 1 if any(r.status == "error" for r in results) else 0


def _date(text: str) -> date:
    return date.fromisoformat(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sndw", description="Single-node data warehouse tools")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check source configs; exit 1 if any is invalid")
    validate.add_argument("paths", nargs="*", default=["dags/sources"], help="config files or folders")
    validate.set_defaults(func=cmd_validate)

    state = sub.add_parser("state", help="show, set or reset the watermarks of incremental tables")
    state.add_argument("action", choices=["list", "set", "reset"])
    state.add_argument("--pipeline", help="source name (the DAG id)")
    state.add_argument("--table", help="table name in the source config")
    state.add_argument("--cursor", help="cursor column (set)")
    state.add_argument("--value", help="new watermark (set): ISO-8601 timestamp or number")
    state.add_argument("--type", default="timestamp", choices=["timestamp", "number", "text"])
    state.set_defaults(func=cmd_state)

    replay = sub.add_parser("replay", help="rebuild warehouse tables from the lake, without the source")
    replay.add_argument("config", help="the source's config file")
    replay.add_argument("--table", action="append", help="only this table (repeatable; default: all of the source's tables)")
    replay.add_argument("--from", dest="date_from", type=_date, help="first partition date (YYYY-MM-DD)")
    replay.add_argument("--to", dest="date_to", type=_date, help="last partition date")
    replay.add_argument("--lake", help="lake root (default: SNDW_LAKE_ROOT)")
    replay.set_defaults(func=cmd_replay)

    gaps = sub.add_parser(
        "gaps", help="per table and date: loaded, missing or failed partitions, row counts",
        description="Per table and date partition: loaded, failed, extracted (in the lake, not loaded), missing "
        "(the schedule asks for it, nothing ran) or unscheduled, with the row counts of the extract, the lake, the "
        "load and the warehouse. Only partition tables (and append tables templated on the date) have missing "
        "dates; a replace or merge table shows its last load.")
    gaps.add_argument("config", help="the source's config file")
    gaps.add_argument("--from", dest="date_from", type=_date,
                      help="first date (YYYY-MM-DD); default: the source's start_date with catchup: true, else each "
                      "table's first extracted or audited partition")
    gaps.add_argument("--to", dest="date_to", type=_date, help="last date (YYYY-MM-DD); default: today (UTC)")
    gaps.add_argument("--lake", help="lake root (default: SNDW_LAKE_ROOT)")
    gaps.add_argument("--json", action="store_true", help="print JSON")
    gaps.add_argument("--strict", action="store_true",
                      help="exit 1 when a partition is missing or failed, or its counts do not agree")
    gaps.set_defaults(func=cmd_gaps)

    from sndw.runner import add_commands  # run, test-connection (the runner seed's commands)

    add_commands(sub)

    sync = sub.add_parser("sync", help="run every table of a source config without Airflow (extract, load, audit)",
                          description="Run every table of a source config without Airflow. The source's connection: "
                          "AIRFLOW_CONN_<CONN_ID> when set, else Airflow's metadata DB (`airflow connections get`, "
                          "where `make demo` puts its connections; needs AIRFLOW_HOME, set by . scripts/dev-env).")
    sync.add_argument("config", help="the source's config file, e.g. dags/sources/manufacturing.yaml")
    sync.add_argument("--table", action="append", help="only this table (repeatable)")
    sync.add_argument("--date", type=_date, help="partition date (default: today, UTC)")
    sync.add_argument("--lake", help="lake root (default: SNDW_LAKE_ROOT)")
    sync.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    sync.add_argument("-v", "--verbose", action="store_true", help="log progress and each step")
    sync.set_defaults(func=cmd_sync)

    check = sub.add_parser("check", help="row counts of the loaded warehouse tables, beside the source's; exit 1 "
                                         "when a replace/merge table differs or the source cannot be counted")
    check.add_argument("config", nargs="?", help="a source config: its tables, with the source's counts")
    check.add_argument("--schema", help="only tables of this warehouse schema")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument("--quality", action="store_true",
                       help="run the config's quality checks on what is loaded, without loading; exit 1 if one blocks")
    check.add_argument("--date", type=_date, help="--quality: the partition of partition tables (default: newest)")
    check.set_defaults(func=cmd_check)

    add_cdc_commands(sub)
    fresh = sub.add_parser("freshness", help="age of each table with a freshness policy; exit 1 if one is past error_after")
    fresh.add_argument("config", help="a source config, or a folder of them")
    fresh.add_argument("--json", action="store_true", help="print JSON")
    fresh.set_defaults(func=cmd_freshness)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "state" and args.action != "list" and not (args.pipeline and args.table):
        parser.error("state set/reset need --pipeline and --table")
    try:
        return int(args.func(args))
    except SndwError as exc:
        from sndw.audit import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # a warehouse that cannot be reached: its message, not a traceback
        if not type(exc).__module__.startswith("psycopg"):
            raise
        from sndw.audit import redact

        print(f"error: PostgreSQL: {' '.join(redact(str(exc)).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
