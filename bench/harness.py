"""`make bench`: sndw's load and extract against psql's own COPY and the peers, on the local PostgreSQL.

    python -m bench.harness          (make bench sets up .venv-bench and runs this)

Every measured method runs in a process of its own (bench/workers.py; psql itself for the
references, started by bench/spawn.py) so its peak RSS is its own. Methods are interleaved within each of
BENCH_ROUNDS rounds (the order rotates every round) and the median wall time is reported.
Preparation (data, reference files, target tables, CHECKPOINT) is never timed.

Settings (environment):
  BENCH_ROWS           rows of the generated table (default 1,000,000: `make bench` in < 10 min on 2 cores)
  BENCH_ROUNDS         rounds per measurement (default 3)
  BENCH_OUT            where latest.json / latest.png go (default bench/results)
  BENCH_WORK           scratch folder for lake files and COPY files (default .local/bench-work)
  BENCH_PG_DIR         the benchmark's own pg-local cluster (default .local/pg-bench)
  BENCH_PG_URL         use this server instead of starting a cluster (databases are created on it)
  BENCH_DB             name of the benchmark database (default sndw_bench; Pagila goes to <name>_pagila)
  BENCH_PANDAS_ROWS    rows for pandas to_sql (default 100,000: it is too slow for the full N)
  BENCH_INSERT_ROWS    rows for PostgresHook.insert_rows (default 20,000)
  BENCH_DLT_CSV_ROWS   rows for dlt's default (CSV) path (default 200,000)
  BENCH_PARSE_SOURCES  source-config counts for the DAG-folder parse (default 1,10,100)
  BENCH_DATASETS       folder holding pagila/ (default <repo>/../shared/datasets)
  BENCH_SKIP           comma-separated sections or methods to skip (e.g. dlt,pandas,pagila,memory,replace,
                       wal_minimal: the replace figures after a restart with wal_level=minimal; e2e: the
                       end-to-end copies of a table; sling, dlt_connectorx: those peers in them)
  BENCH_ONLY           comma-separated sections to run, every other one skipped (e.g. checks; the data and
                       the load inputs are always prepared)
  BENCH_KEEP           1 keeps the scratch folder and the databases
  (BENCH_SKIP also takes the sections load, extract, write_modes, replace, wal_minimal, parse, dags_test:
   `airflow dags test` of 1- and 10-table sources, and checks: a load with a table's quality checks against
   the same load without)
  BENCH_CDC_CHANGES    changes (3 updates : 1 delete) of the CDC apply section (default 100,000; also 4x for
                       memory; at most BENCH_ROWS / 4). BENCH_SKIP=cdc skips it
  BENCH_DAGS_TEST_ROUNDS rounds of the `airflow dags test` section (default 1: ~25 s a run)
  BENCH_TIMEOUT        seconds one measured process may take (default 3600)
  SLING_BINARY         Sling's binary (default: the one of the sling-linux-amd64 package beside this interpreter)
  BENCH_SNDW_PYTHON    interpreter of sndw's own methods and Airflow's CLI (make bench: .venv's, without the
                       peers' packages; default: this one)
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from sndw.audit import redact
from sndw.config import DEFAULT_BATCH_ROWS

from bench import report

ROOT = Path(__file__).resolve().parents[1]
PG_LOCAL = ROOT / "scripts" / "pg-local"
SPAWN = Path(__file__).resolve().parent / "spawn.py"
PARTITION = "2024-01-02"
SCHEMA = "bench"
SOURCE_TABLE = "bench_src"
PROCESS_TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "3600"))
# sndw's own methods (and Airflow's CLI) run on the product's runtime interpreter, the peers on
# this one: pandas beside pyarrow costs every process that converts a Python value 0.17 s.
SNDW_PYTHON = os.environ.get("BENCH_SNDW_PYTHON") or sys.executable
SNDW_METHODS = {"load_sndw", "extract_sndw", "dagbag", "apply_cdc", "e2e_sndw_steps"}
# Sling's binary, from the PyPI package sling-linux-amd64 (the `sling` package downloads it at run time).
SLING_BINARY = os.environ.get("SLING_BINARY") or str(
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    / "sling_linux_amd64" / "bin" / "sling-linux-amd64")
E2E_SCHEMA = "e2e"


# The sections BENCH_SKIP and BENCH_ONLY name.
SECTIONS = ("load", "extract", "write_modes", "replace", "wal_minimal", "memory", "pagila", "parse", "dags_test",
            "checks", "e2e", "cdc", "etl_page")


def _skipped() -> set[str]:
    skip = {x.strip() for x in os.environ.get("BENCH_SKIP", "").split(",") if x.strip()}
    only = {x.strip() for x in os.environ.get("BENCH_ONLY", "").split(",") if x.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown section {sorted(unknown)[0]!r}: use {', '.join(SECTIONS)}")
    return skip | (set(SECTIONS) - only if only else set())


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)).replace(",", "").replace("_", ""))


@dataclass
class Settings:
    rows: int = field(default_factory=lambda: _int_env("BENCH_ROWS", 1_000_000))
    rounds: int = field(default_factory=lambda: _int_env("BENCH_ROUNDS", 3))
    out_dir: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "results")))
    work_dir: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_WORK", ROOT / ".local" / "bench-work")))
    pg_dir: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_PG_DIR", ROOT / ".local" / "pg-bench")))
    pg_url: str = field(default_factory=lambda: os.environ.get("BENCH_PG_URL", ""))
    db: str = field(default_factory=lambda: os.environ.get("BENCH_DB", "sndw_bench"))
    pandas_rows: int = field(default_factory=lambda: _int_env("BENCH_PANDAS_ROWS", 100_000))
    insert_rows: int = field(default_factory=lambda: _int_env("BENCH_INSERT_ROWS", 20_000))
    dlt_csv_rows: int = field(default_factory=lambda: _int_env("BENCH_DLT_CSV_ROWS", 200_000))
    parse_sources: list[int] = field(default_factory=lambda: [
        int(x) for x in os.environ.get("BENCH_PARSE_SOURCES", "1,10,100").split(",") if x.strip()])
    datasets: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_DATASETS", ROOT.parent / "shared" / "datasets")))
    skip: set[str] = field(default_factory=_skipped)
    dags_test_rounds: int = field(default_factory=lambda: _int_env("BENCH_DAGS_TEST_ROUNDS", 1))
    cdc_changes: int = field(default_factory=lambda: _int_env("BENCH_CDC_CHANGES", 100_000))
    keep: bool = field(default_factory=lambda: os.environ.get("BENCH_KEEP", "") == "1")


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Sample:
    seconds: float
    rows: int
    rss_kib: int
    details: dict[str, Any] = field(default_factory=dict)
    process_seconds: float | None = None  # the whole process: interpreter start, imports, exit


class MethodError(RuntimeError):
    pass


def run_process(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
                tree: bool = False) -> tuple[float, int, str, str]:
    """Run ``cmd`` to the end: its wall time, its own peak RSS (KiB), stdout, stderr. ``tree``: the
    peak of the sum of the RSS of all its processes instead (a pipe, a tool with workers).

    The command is started by bench/spawn.py, a small interpreter, so that its peak RSS is its own
    and not the harness's size at fork time.
    """
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{uuid.uuid4().hex}"
    out_path, err_path, report_path = (scratch.with_suffix(s) for s in (".out", ".err", ".json"))
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(SPAWN), str(report_path), *cmd], stdout=out,
                                stderr=err, env=env, cwd=cwd, start_new_session=True)
        try:
            proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    try:
        measured = json.loads(report_path.read_text())
        report_path.unlink()
    except FileNotFoundError:
        measured = {"seconds": float("nan"), "maxrss_kib": 0}
    if proc.returncode != 0:
        # Redacted: a peer's traceback may echo the connection URL with its password.
        raise MethodError(redact(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {(stderr or stdout)[-1500:]}"))
    rss = measured.get("tree_rss_kib", measured["maxrss_kib"]) if tree else measured["maxrss_kib"]
    return float(measured["seconds"]), int(rss), stdout, stderr


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.work = settings.work_dir
        self.server_url = ""
        self.url = ""
        self.started_cluster = False
        self.psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
        self.results: dict[str, Any] = {}
        self.columns: list[str] = []

    # ----------------------------------------------------------------------- environment

    def worker_env(self) -> dict[str, str]:
        home = self.work / "airflow-home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.work / "no-dags"),
            "AIRFLOW_CONN_BENCH_DW": self.url,
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "PYTHONWARNINGS": "ignore",
        }

    def worker(self, method: str, args: dict[str, Any], env: dict[str, str] | None = None,
               tree: bool = False) -> Sample:
        python = SNDW_PYTHON if method in SNDW_METHODS else sys.executable
        if method == "extract_sndw":  # the extract operator's batches at a table's default batch_rows
            args = {"batch_rows": DEFAULT_BATCH_ROWS, **args}
        process_seconds, rss, stdout, _ = run_process([python, "-m", "bench.workers", method, json.dumps(args)],
                                                      env=env or self.worker_env(), tree=tree)
        line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("BENCH_RESULT ")), None)
        if line is None:
            raise MethodError(f"{method} printed no result: {stdout[-1000:]}")
        result = json.loads(line.removeprefix("BENCH_RESULT "))
        return Sample(result.pop("seconds"), int(result.pop("rows")), rss, result, process_seconds)

    def psql_cmd(self, command: str, url: str | None = None) -> Sample:
        seconds, rss, stdout, _ = run_process([self.psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", url or self.url,
                                               "-c", command])
        rows = 0
        for token in stdout.split():
            if token.isdigit():
                rows = int(token)
        return Sample(seconds, rows, rss, process_seconds=seconds)

    def execute(self, statement: str | sql.Composable, params: Iterable[Any] | None = None, url: str | None = None) -> list[Any]:
        with psycopg.connect(url or self.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def checkpoint(self) -> None:
        self.execute("CHECKPOINT")

    def wal_lsn(self) -> str:
        return str(self.execute("SELECT pg_current_wal_lsn()::text")[0][0])

    def wal_bytes_since(self, lsn: str) -> int:
        return int(self.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [lsn])[0][0])

    def drop(self, *tables: str) -> None:
        for table in tables:
            self.execute(sql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(sql.Identifier(SCHEMA), sql.Identifier(table)))

    def count(self, table: str, schema: str = SCHEMA, url: str | None = None) -> int:
        return int(self.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)), url=url)[0][0])

    # --------------------------------------------------------------------------- server

    def start(self) -> None:
        if self.s.pg_url:
            self.server_url = self.s.pg_url
        else:
            env = {**os.environ, "PG_LOCAL_DIR": str(self.s.pg_dir)}
            running = subprocess.run([str(PG_LOCAL), "status"], env=env, capture_output=True, check=False).returncode == 0
            subprocess.run([str(PG_LOCAL), "start"], env=env, check=True, stdout=subprocess.DEVNULL)
            self.started_cluster = not running
            self.server_url = subprocess.run([str(PG_LOCAL), "url"], env=env, capture_output=True, text=True,
                                             check=True).stdout.strip()
        self.url = self.create_database(self.s.db)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{name}"))

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        if not self.s.keep:
            self.drop_database(self.s.db)
            self.drop_database(f"{self.s.db}_pagila")
            shutil.rmtree(self.work, ignore_errors=True)
        if self.started_cluster:
            env = {**os.environ, "PG_LOCAL_DIR": str(self.s.pg_dir)}
            subprocess.run([str(PG_LOCAL), "stop"], env=env, check=False, stdout=subprocess.DEVNULL)

    def meta(self) -> dict[str, Any]:
        versions: dict[str, str | None] = {}
        for package in ("pgpq", "pyarrow", "adbc-driver-postgresql", "psycopg", "polars", "pandas", "dlt",
                        "connectorx", "sling-linux-amd64", "apache-airflow", "apache-airflow-providers-postgres"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = None
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip()
        psql_version = subprocess.run([self.psql, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        return {
            "rows": self.s.rows, "rounds": self.s.rounds, "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "server": self.execute("SHOW server_version")[0][0], "psql": psql_version,
            "cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "commit": commit or None, "versions": versions,
            "settings": {k: self.execute(f"SHOW {k}")[0][0] for k in ("fsync", "synchronous_commit", "shared_buffers", "wal_buffers")},
        }

    # ----------------------------------------------------------------------------- data

    def generate(self, table: str, rows: int) -> None:
        """~10 mixed-type columns, deterministic, made by PostgreSQL itself."""
        log(f"generating {table} ({rows:,} rows)")
        self.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        self.execute(sql.SQL("""
            CREATE TABLE {} AS
            SELECT g::bigint                                          AS id,
                   (g % 100000)::integer                              AS customer_id,
                   ((g * 7919) % 1000003) / 1000.0::double precision  AS score,
                   'sku-' || (g % 5000)                               AS sku,
                   md5(g::text) || ' ' || md5((g * 31)::text) || ' ' || repeat('x', (g % 40)::integer) AS description,
                   (g % 3 = 0)                                        AS active,
                   DATE '2024-01-01' + (g % 366)::integer             AS order_date,
                   TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' AS created_at,
                   CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || (g % 97) END AS note,
                   ((g % 1000000) / 100.0)::numeric(12, 2)            AS amount
            FROM generate_series(1, {}::bigint) AS g
        """).format(sql.Identifier(table), sql.Literal(rows)))
        self.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))

    def lake_extract(self, name: str, query: str, lake: Path, url: str | None = None) -> list[str]:
        """Make a lake partition with this product's extract (untimed preparation)."""
        sample = self.worker("extract_sndw", {"url": url or self.url, "query": query, "lake_root": str(lake),
                                              "table": name, "partition": PARTITION})
        return list(sample.details["paths"])

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        self.generate(SOURCE_TABLE, self.s.rows)
        lake = self.work / "input-lake"
        log("writing the load inputs with sndw's extract")
        self.paths = self.lake_extract("full", f"SELECT * FROM {SOURCE_TABLE}", lake)  # noqa: S608
        self.slices: dict[int, list[str]] = {}
        wanted = {min(n, self.s.rows) for n in (self.s.pandas_rows, self.s.insert_rows, self.s.dlt_csv_rows,
                                                max(1, self.s.rows // 4))}
        for n in sorted(wanted):
            if n < self.s.rows:
                self.slices[n] = self.lake_extract(f"first_{n}", f"SELECT * FROM {SOURCE_TABLE} WHERE id <= {n}", lake)  # noqa: S608
            else:
                self.slices[n] = self.paths
        # The reference rows: exactly what sndw's load writes (data columns + _source_file,
        # _partition_date, _run_id), dumped by psql once. _loaded_at is left to its default, as in sndw.
        log("writing psql's reference files")
        self.worker("load_sndw", {"url": self.url, "paths": self.paths, "schema": SCHEMA, "table": "ref_base",
                                  "partition": PARTITION})
        self.measure_size()
        self.columns = [r[0] for r in self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "AND column_name <> '_loaded_at' ORDER BY ordinal_position", (SCHEMA, "ref_base"))]
        self.column_list = ", ".join(f'"{c}"' for c in self.columns)
        self.ref_bin = self.work / "ref.bin"
        self.ref_csv = self.work / "ref.csv"
        select = f"SELECT {self.column_list} FROM {SCHEMA}.ref_base"  # noqa: S608
        self.psql_cmd(f"\\copy ({select}) TO {quote(self.ref_bin)} (FORMAT binary)")
        self.psql_cmd(f"\\copy ({select}) TO {quote(self.ref_csv)} (FORMAT csv)")
        log(f"reference files: binary {self.ref_bin.stat().st_size / 2**20:.0f} MiB, "
            f"csv {self.ref_csv.stat().st_size / 2**20:.0f} MiB")

    def measure_size(self) -> None:
        """The loaded table's size against its source's (heap + TOAST, both vacuumed): lineage and
        bookkeeping columns must not blow the warehouse up."""
        sizes = {}
        for table in (SOURCE_TABLE, f"{SCHEMA}.ref_base"):
            self.execute(f"VACUUM {table}")
            sizes[table] = self.execute("SELECT pg_table_size(%s::regclass)", (table,))[0][0]
        ratio = sizes[f"{SCHEMA}.ref_base"] / sizes[SOURCE_TABLE]
        self.results["size"] = {"source_bytes": sizes[SOURCE_TABLE], "loaded_bytes": sizes[f"{SCHEMA}.ref_base"],
                                "ratio": round(ratio, 3)}
        log(f"loaded table {sizes[f'{SCHEMA}.ref_base'] / 2**20:.0f} MiB = {ratio:.2f}x its source")

    # ------------------------------------------------------------------------ measuring

    def interleave(self, methods: dict[str, Callable[[], Sample]], rounds: int | None = None,
                   warmup: Iterable[str] = ()) -> dict[str, list[Sample]]:
        """Every method once per round, the order rotating. ``warmup``: these run once, untimed,
        first (the first run of a process after set-up read its files and modules from disk: a
        1M-row load took 2.6 s in round 1 and 1.3-1.4 s after)."""
        names = list(methods)
        samples: dict[str, list[Sample]] = {n: [] for n in names}
        rounds = rounds or self.s.rounds
        for name in names:
            if name in warmup:
                sample = methods[name]()
                log(f"  warm-up {name}: {sample.seconds:.2f}s (not counted)")
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                sample = methods[name]()
                samples[name].append(sample)
                log(f"  round {r + 1}/{rounds} {name}: {sample.rows:,} rows in {sample.seconds:.2f}s, "
                    f"peak RSS {sample.rss_kib / 1024:.0f} MiB")
        return samples

    def available(self, name: str, module: str | None = None) -> str | None:
        """None when the method can run, else why not."""
        if name in self.s.skip:
            return "skipped (BENCH_SKIP)"
        if module and importlib.util.find_spec(module) is None:
            return f"skipped: {module} is not installed (requirements-bench.txt; make bench installs it)"
        return None

    # ---------------------------------------------------------------------------- load

    def load_methods(self) -> tuple[dict[str, Callable[[], Sample]], dict[str, dict[str, Any]]]:
        """The load methods and what each row of the table says about them."""
        methods: dict[str, Callable[[], Sample]] = {}
        info: dict[str, dict[str, Any]] = {}

        def add(name: str, label: str, fn: Callable[[], Sample], rows: int, reason: str | None = None,
                note: str = "") -> None:
            info[name] = {"label": label, "rows": rows, "skipped": reason, "note": note}
            if reason is None:
                methods[name] = fn

        def psql_load(table: str, path: Path, fmt: str) -> Callable[[], Sample]:
            def run() -> Sample:
                self.drop(table)
                self.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE {SCHEMA}.ref_base INCLUDING DEFAULTS)")
                self.checkpoint()
                sample = self.psql_cmd(f"\\copy {SCHEMA}.{table} ({self.column_list}) FROM {quote(path)} (FORMAT {fmt})")
                sample.rows = self.count(table)
                self.drop(table)
                return sample
            return run

        def sndw_load() -> Sample:
            self.drop("l_sndw")
            self.checkpoint()
            sample = self.worker("load_sndw", {"url": self.url, "paths": self.paths, "schema": SCHEMA,
                                               "table": "l_sndw", "partition": PARTITION})
            self.drop("l_sndw")
            return sample

        n = self.s.rows
        add("sndw", "sndw load_files (pgpq binary COPY, psycopg 3)", sndw_load, n)
        add("psql_binary", "psql \\copy FROM binary (reference)", psql_load("l_psql_bin", self.ref_bin, "binary"), n)
        add("psql_csv", "psql \\copy FROM csv", psql_load("l_psql_csv", self.ref_csv, "csv"), n)

        pandas_n = min(self.s.pandas_rows, n)

        def pandas_load() -> Sample:
            self.drop("l_pandas")
            self.checkpoint()
            sample = self.worker("load_pandas", {"url": self.url, "paths": self.slices[pandas_n], "schema": SCHEMA,
                                                 "table": "l_pandas"})
            self.drop("l_pandas")
            return sample

        add("pandas", "pandas read_parquet + to_sql", pandas_load, pandas_n, self.available("pandas", "pandas"),
            f"first {pandas_n:,} rows" if pandas_n < n else "")

        insert_n = min(self.s.insert_rows, n)

        def insert_rows_load() -> Sample:
            self.drop("l_insert_rows")
            self.execute(f"CREATE TABLE {SCHEMA}.l_insert_rows (LIKE {SCHEMA}.ref_base INCLUDING DEFAULTS)")
            self.checkpoint()
            sample = self.worker("load_insert_rows", {"conn_id": "bench_dw", "paths": self.slices[insert_n],
                                                      "schema": SCHEMA, "table": "l_insert_rows"})
            self.drop("l_insert_rows")
            return sample

        add("insert_rows", "Airflow PostgresHook.insert_rows", insert_rows_load, insert_n,
            self.available("insert_rows", "airflow.providers.postgres"),
            f"first {insert_n:,} rows" if insert_n < n else "")

        def dlt_load(file_format: str | None, rows: int) -> Callable[[], Sample]:
            dataset = f"dlt_{file_format or 'default'}"

            def run() -> Sample:
                self.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(dataset)))
                work = self.work / f"dlt-{uuid.uuid4().hex[:8]}"
                self.checkpoint()
                try:
                    sample = self.worker("load_dlt", {"url": self.url, "paths": self.slices.get(rows, self.paths),
                                                      "schema": dataset, "table": "l_dlt", "work_dir": str(work),
                                                      "file_format": file_format})
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                    self.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(dataset)))
                return sample
            return run

        dlt_reason = self.available("dlt", "dlt")
        add("dlt_parquet", 'dlt, loader_file_format="parquet" (ADBC)', dlt_load("parquet", n), n, dlt_reason)
        dlt_n = min(self.s.dlt_csv_rows, n)
        add("dlt_default", "dlt, default file format (CSV + gzip)", dlt_load(None, dlt_n), dlt_n, dlt_reason,
            f"first {dlt_n:,} rows" if dlt_n < n else "")
        return methods, info

    def bench_load(self) -> None:
        log("LOAD: Parquet partition -> new warehouse table")
        methods, info = self.load_methods()
        samples = self.interleave_tolerant(methods, required={"sndw", "psql_binary", "psql_csv"},
                                           warmup={"sndw", "psql_binary", "psql_csv"})
        self.results["load"] = summarise(info, samples, reference="psql_binary")

    def interleave_tolerant(self, methods: dict[str, Callable[[], Sample]], required: set[str],
                            warmup: Iterable[str] = ()) -> dict[str, Any]:
        """Like interleave, but a peer that fails is reported with its error instead of ending the run."""
        wrapped: dict[str, Callable[[], Sample]] = {}
        errors: dict[str, str] = {}
        for name, fn in methods.items():
            def guarded(name: str = name, fn: Callable[[], Sample] = fn) -> Sample:
                if name in errors:
                    return Sample(float("nan"), 0, 0, {"error": errors[name]})
                try:
                    return fn()
                except MethodError as exc:
                    if name in required:
                        raise
                    errors[name] = str(exc)[-600:]
                    log(f"  {name} failed: {errors[name]}")
                    return Sample(float("nan"), 0, 0, {"error": errors[name]})
            wrapped[name] = guarded
        return self.interleave(wrapped, warmup=warmup)

    # ------------------------------------------------------------------------- extract

    def bench_extract(self) -> None:
        log("EXTRACT: PostgreSQL table -> Parquet partition")
        query = f"SELECT * FROM {SOURCE_TABLE}"  # noqa: S608
        out = self.work / "extract"
        info: dict[str, dict[str, Any]] = {}
        methods: dict[str, Callable[[], Sample]] = {}

        def sndw_extract() -> Sample:
            shutil.rmtree(out / "sndw", ignore_errors=True)
            self.checkpoint()
            sample = self.worker("extract_sndw", {"url": self.url, "query": query, "lake_root": str(out / "sndw"),
                                                  "table": SOURCE_TABLE, "partition": PARTITION})
            shutil.rmtree(out / "sndw", ignore_errors=True)
            return sample

        def psql_extract(fmt: str) -> Callable[[], Sample]:
            def run() -> Sample:
                target = out / f"psql.{fmt}"
                out.mkdir(parents=True, exist_ok=True)
                self.checkpoint()
                sample = self.psql_cmd(f"\\copy ({query}) TO {quote(target)} (FORMAT {fmt})")
                sample.details["bytes"] = target.stat().st_size
                target.unlink()
                return sample
            return run

        def pandas_extract() -> Sample:
            target = out / "pandas.parquet"
            self.checkpoint()
            sample = self.worker("extract_pandas", {"url": self.url, "query": query, "path": str(target)})
            target.unlink(missing_ok=True)
            return sample

        n = self.s.rows
        for name, label, fn, reason in (
            ("sndw", "sndw iter_postgres_batches (ADBC) + write_partition", sndw_extract, None),
            ("psql_csv", "psql \\copy TO csv (reference)", psql_extract("csv"), None),
            ("psql_binary", "psql \\copy TO binary", psql_extract("binary"), None),
            ("pandas", "pandas read_sql (one shot) + to_parquet", pandas_extract, self.available("pandas", "pandas")),
        ):
            info[name] = {"label": label, "rows": n, "skipped": reason, "note": ""}
            if reason is None:
                methods[name] = fn
        samples = self.interleave_tolerant(methods, required={"sndw", "psql_csv", "psql_binary"},
                                           warmup={"sndw", "psql_csv", "psql_binary"})
        self.results["extract"] = summarise(info, samples, reference="psql_csv")
        for entry in self.results["extract"]["methods"]:  # what each method wrote: Parquet, CSV, COPY binary
            sizes = [s.details["bytes"] for s in samples.get(entry["method"]) or [] if s.details.get("bytes")]
            if sizes:
                entry["output_bytes"] = int(statistics.median(sizes))
                entry["note"] = "; ".join(filter(None, [entry["note"], f"writes {entry['output_bytes'] / 2**20:.1f} MiB"]))

    # --------------------------------------------------------------------- write modes

    def bench_write_modes(self) -> None:
        log("WRITE MODES: cost of partition / merge / replace relative to append of the same rows")
        slice_rows = max(1, self.s.rows // 4)
        paths = self.slices[slice_rows]

        def load(table: str, mode: str, partition: str = PARTITION, pk: list[str] | None = None) -> Sample:
            # The WAL the load wrote (the bench's own cluster: nothing else writes meanwhile). Every
            # method starts right after a CHECKPOINT, so the first change to an existing page logs
            # the whole page, as the first change after any checkpoint does.
            lsn = self.wal_lsn()
            sample = self.worker("load_sndw", {"url": self.url, "paths": paths, "schema": SCHEMA, "table": table,
                                               "mode": mode, "partition": partition, "primary_key": pk or []})
            sample.details["wal_bytes"] = self.wal_bytes_since(lsn)
            return sample

        def copy_of_base(table: str, key: bool = False, id_offset: int = 0) -> None:
            self.drop(table)
            self.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE {SCHEMA}.ref_base INCLUDING ALL)")
            select = ", ".join(f"id + {id_offset}" if c == '"id"' else c for c in self.column_list.split(", "))
            self.execute(f"INSERT INTO {SCHEMA}.{table} ({self.column_list}) SELECT {select} "  # noqa: S608
                         f"FROM {SCHEMA}.ref_base")
            if key:
                self.execute(f'CREATE UNIQUE INDEX "{table}__sndw_key" ON {SCHEMA}.{table} (id)')
            self.execute(f"VACUUM ANALYZE {SCHEMA}.{table}")

        # The partitioned table: 4 date partitions of slice_rows each; one of them is replaced.
        self.drop("wm_partition")
        for day in ("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"):
            load("wm_partition", "partition", day)
        self.execute(f"VACUUM ANALYZE {SCHEMA}.wm_partition")
        copy_of_base("wm_append")

        def append() -> Sample:  # no index: the table's size does not change what an append costs
            self.checkpoint()
            return load("wm_append", "append")

        def append_keyed() -> Sample:  # the merge's table (unique key on id), none of the rows' keys in it
            copy_of_base("wm_append_keyed", key=True, id_offset=self.s.rows)
            self.checkpoint()
            sample = load("wm_append_keyed", "append")
            self.drop("wm_append_keyed")
            return sample

        def partition() -> Sample:
            self.checkpoint()
            return load("wm_partition", "partition", "2024-01-02")

        def merge() -> Sample:
            copy_of_base("wm_merge", key=True)
            self.checkpoint()
            sample = load("wm_merge", "merge", pk=["id"])
            self.drop("wm_merge")
            return sample

        def replace() -> Sample:
            copy_of_base("wm_replace")
            self.checkpoint()
            sample = load("wm_replace", "replace")
            self.drop("wm_replace")
            return sample

        # The server's own floor for a merge: the same rows already in a table on the server, no
        # client, no Parquet. A merge there is DELETE ... USING + INSERT ... SELECT; the append
        # beside it is INSERT ... SELECT into the keyed table whose keys were moved out of the way,
        # as for append_keyed. Both timed the same way, in-process from connect to commit.
        self.drop("wm_rows")
        self.execute(f"CREATE TABLE {SCHEMA}.wm_rows AS SELECT {self.column_list} FROM {SCHEMA}.ref_base "  # noqa: S608
                     f"WHERE id <= {slice_rows}")
        self.execute(f"VACUUM ANALYZE {SCHEMA}.wm_rows")

        def server(statements: list[str]) -> Sample:
            self.checkpoint()
            started = time.perf_counter()
            with psycopg.connect(self.url) as conn:  # one transaction, committed on leaving the block
                for statement in statements:
                    conn.execute(statement)
            return Sample(seconds=time.perf_counter() - started, rows=slice_rows, rss_kib=0)

        def server_append_keyed() -> Sample:
            copy_of_base("wm_server", key=True, id_offset=self.s.rows)
            sample = server([f"INSERT INTO {SCHEMA}.wm_server ({self.column_list}) "  # noqa: S608
                                          f"SELECT {self.column_list} FROM {SCHEMA}.wm_rows"])
            self.drop("wm_server")
            return sample

        def server_merge() -> Sample:
            copy_of_base("wm_server", key=True)
            sample = server([
                f"DELETE FROM {SCHEMA}.wm_server t USING {SCHEMA}.wm_rows r WHERE t.id = r.id",  # noqa: S608
                f"INSERT INTO {SCHEMA}.wm_server ({self.column_list}) SELECT {self.column_list} FROM {SCHEMA}.wm_rows"])  # noqa: S608
            self.drop("wm_server")
            return sample

        # The floor of a merge whose rows come from a client: the same DELETE ... USING, then psql's
        # binary \copy of the same rows (a file dumped from them), in one transaction of one psql
        # process. What separates it from the server's own merge is COPY against INSERT ... SELECT.
        rows_bin = self.work / "wm_rows.bin"
        self.psql_cmd(f"\\copy (SELECT {self.column_list} FROM {SCHEMA}.wm_rows) TO {quote(rows_bin)} (FORMAT binary)")  # noqa: S608

        def psql_merge() -> Sample:
            copy_of_base("wm_psql", key=True)
            self.checkpoint()
            seconds, rss, _, _ = run_process([
                self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url, "-c", "BEGIN",
                "-c", f"DELETE FROM {SCHEMA}.wm_psql t USING {SCHEMA}.wm_rows r WHERE t.id = r.id",  # noqa: S608
                "-c", f"\\copy {SCHEMA}.wm_psql ({self.column_list}) FROM {quote(rows_bin)} (FORMAT binary)",
                "-c", "COMMIT"])
            self.drop("wm_psql")
            return Sample(seconds, slice_rows, rss, process_seconds=seconds)

        samples = self.interleave({"append": append, "append_keyed": append_keyed, "partition": partition,
                                   "merge": merge, "replace": replace, "server_append_keyed": server_append_keyed,
                                   "server_merge": server_merge, "psql_merge": psql_merge}, warmup={"append"})
        base_rows = self.s.rows
        notes = {
            "append": f"into a plain table of {base_rows:,} rows",
            "append_keyed": f"into the merge's table of {base_rows:,} rows with its unique key on id (new keys)",
            "partition": f"replace 1 of 4 date partitions ({slice_rows:,} rows each): TRUNCATE + COPY",
            "merge": f"upsert on id, every key already in the {base_rows:,}-row table",
            "replace": f"full refresh of a {base_rows:,}-row table in place: TRUNCATE + COPY",
        }
        info = {m: {"label": m, "rows": slice_rows, "skipped": None, "note": notes[m]} for m in notes}
        self.results["write_modes"] = summarise(info, samples, reference="append", ratio="cost")
        # A merge against an append into the same keyed table, paired per round: what the merge
        # costs beyond maintaining the table's key, which any load into that table pays.
        keyed = [m.seconds / a.seconds for m, a in zip(samples["merge"], samples["append_keyed"], strict=True)
                 if m.seconds and a.seconds]
        keyed_wal = [m.details["wal_bytes"] / a.details["wal_bytes"]
                     for m, a in zip(samples["merge"], samples["append_keyed"], strict=True) if a.details.get("wal_bytes")]
        for entry in self.results["write_modes"]["methods"]:
            runs = samples.get(entry["method"]) or []
            if runs and all("wal_bytes" in s.details for s in runs):
                entry["wal_bytes"] = int(statistics.median(s.details["wal_bytes"] for s in runs))
            if entry["method"] == "merge" and keyed:
                entry["keyed_ratio"] = round(statistics.median(keyed), 3)
                entry["keyed_ratio_range"] = [round(min(keyed), 3), round(max(keyed), 3)]
            if entry["method"] == "merge" and keyed_wal:
                entry["keyed_wal_ratio"] = round(statistics.median(keyed_wal), 3)
        floor = [m.seconds / a.seconds for m, a in zip(samples["server_merge"], samples["server_append_keyed"], strict=True)]
        self.results["write_modes"]["server_merge"] = {
            "merge_seconds": round(statistics.median(s.seconds for s in samples["server_merge"]), 3),
            "append_keyed_seconds": round(statistics.median(s.seconds for s in samples["server_append_keyed"]), 3),
            "ratio": round(statistics.median(floor), 3), "ratio_range": [round(min(floor), 3), round(max(floor), 3)],
            "rounds": len(floor)}
        # sndw's merge against the server's own merge of the same rows, paired per round.
        own = [m.seconds / f.seconds for m, f in zip(samples["merge"], samples["server_merge"], strict=True)]
        self.results["write_modes"]["server_merge"].update({
            "sndw_ratio": round(statistics.median(own), 3), "sndw_ratio_range": [round(min(own), 3), round(max(own), 3)]})
        # The client-fed floor (psql) against the server's own, and sndw against that floor.
        fed = [p.seconds / f.seconds for p, f in zip(samples["psql_merge"], samples["server_merge"], strict=True)]
        sndw_fed = [m.seconds / p.seconds for m, p in zip(samples["merge"], samples["psql_merge"], strict=True)]
        self.results["write_modes"]["server_merge"].update({
            "psql_merge_seconds": round(statistics.median(s.seconds for s in samples["psql_merge"]), 3),
            "psql_ratio": round(statistics.median(fed), 3), "psql_ratio_range": [round(min(fed), 3), round(max(fed), 3)],
            "sndw_psql_ratio": round(statistics.median(sndw_fed), 3),
            "sndw_psql_ratio_range": [round(min(sndw_fed), 3), round(max(sndw_fed), 3)]})
        rows_bin.unlink(missing_ok=True)
        self.drop("wm_append", "wm_partition", "wm_rows")

    # ---------------------------------------------------------------------- end to end

    def generate_mixed(self, table: str, rows: int) -> None:
        """A Pagila-like table of mixed types (payment and film columns: smallint, integer,
        numeric(5,2), timestamptz, timestamp, varchar, text, a text[] that is NULL for a third of
        the rows, boolean, date), deterministic, made by PostgreSQL itself."""
        log(f"generating {table} ({rows:,} rows)")
        self.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        self.execute(sql.SQL("""
            CREATE TABLE {} AS
            SELECT g::bigint                                                    AS id,
                   (g % 599 + 1)::smallint                                      AS customer_id,
                   (g % 2 + 1)::smallint                                        AS staff_id,
                   (g % 16044 + 1)::integer                                     AS rental_id,
                   ((g % 1100) / 100.0 + 0.99)::numeric(5, 2)                   AS amount,
                   TIMESTAMPTZ '2022-01-24 00:00:00+00' + g * INTERVAL '37 seconds' AS payment_date,
                   ((ARRAY['ACADEMY DINOSAUR', 'ACE GOLDFINGER', 'ADAPTATION HOLES', 'AFFAIR PREJUDICE'])[g % 4 + 1]
                     || ' ' || (g % 1000))::varchar(255)                        AS title,
                   'A ' || md5(g::text) || ' of a ' || md5((g * 7)::text)       AS description,
                   (ARRAY['G', 'PG', 'PG-13', 'R', 'NC-17'])[g % 5 + 1]         AS rating,
                   CASE g % 3 WHEN 0 THEN ARRAY['Trailers', 'Deleted Scenes'] WHEN 1 THEN ARRAY['Commentaries']
                        END::text[]                                             AS special_features,
                   (2006 + g % 20)::integer                                     AS release_year,
                   TIMESTAMP '2022-02-15 09:57:20' + (g % 1000) * INTERVAL '1 minute' AS last_update,
                   (g % 7 <> 0)                                                 AS active,
                   DATE '2022-05-01' + (g % 90)::integer                       AS return_date
            FROM generate_series(1, {}::bigint) AS g
        """).format(sql.Identifier(table), sql.Literal(rows)))
        self.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))

    def fingerprint(self, schema: str, table: str, columns: list[str]) -> tuple[int, str]:
        """Row count and a hash of the rows over ``columns`` (each row's text, hashed, summed: no
        order, no 1 GB string), computed alike on the source and every copy."""
        row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        count, total = self.execute(sql.SQL("SELECT count(*), coalesce(sum(hashtextextended({}, 0)::numeric), 0) "
                                            "FROM {}.{}").format(row, sql.Identifier(schema), sql.Identifier(table)))[0]
        return int(count), str(total)

    def url_with(self, **params: str) -> str:
        parts = urlsplit(self.url)
        query = "&".join([*(p for p in parts.query.split("&") if p), *(f"{k}={v}" for k, v in params.items())])
        return urlunsplit(parts._replace(query=query))

    def run_cli(self, source: str, target: str, lake: Path) -> Sample:
        """``python -m etl.cli run`` of ``SELECT * FROM public.<source>`` into e2e.<target>: the
        whole process, peak RSS of its process tree."""
        env = {**self.worker_env(), "AIRFLOW_CONN_DW": self.url}
        seconds, rss, stdout, _ = run_process(
            [SNDW_PYTHON, "-m", "etl.cli", "run", "--config", str(self.connector), "--query",
             f"SELECT * FROM public.{source}", "--source", "bench", "--table", target, "--lake", str(lake),  # noqa: S608
             "--schema", E2E_SCHEMA], env=env, tree=True)
        result = json.loads(stdout.strip().splitlines()[-1])
        if result["status"] != "success":
            raise MethodError(f"etl.cli run failed: {result.get('error')}")
        return Sample(seconds, int(result["rows_loaded"]), rss, process_seconds=seconds)

    def write_connector(self) -> None:
        """The connector file of ``etl.cli run`` for the bench database."""
        self.connector = self.work / "e2e-connector.json"
        parts = urlsplit(self.url)
        self.connector.write_text(json.dumps({
            "protocol": "postgres", "host": parts.hostname, "port": parts.port or 5432,
            "database": parts.path.lstrip("/"), "username": parts.username or "", "password": parts.password or "",
            "sslmode": "disable"}))

    def bench_e2e(self) -> None:
        """A whole PostgreSQL table copied into the warehouse: sndw as a user runs it (``python -m
        etl.cli run``, the whole process) and as a DAG run's tasks do (the core's extract_table +
        load_table, timed inside), against psql's binary COPY pipe, dlt and Sling, interleaved."""
        if "e2e" in self.s.skip:
            self.results["e2e"] = {}
            return
        log("END TO END: a PostgreSQL table copied into the warehouse")
        self.generate_mixed("pagila_like", self.s.rows)
        self.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(E2E_SCHEMA)))
        self.write_connector()
        sling_url = self.url_with(sslmode="disable")
        sling_reason = self.available("sling")
        if sling_reason is None and not Path(SLING_BINARY).is_file():
            sling_reason = "skipped: sling-linux-amd64 is not installed (requirements-bench.txt; make bench installs it)"
        dlt_reason = self.available("dlt", "dlt")
        cx_reason = dlt_reason or self.available("dlt_connectorx", "connectorx")
        out: dict[str, Any] = {}
        lake = self.work / "e2e-lake"
        for source in (SOURCE_TABLE, "pagila_like"):
            columns = [r[0] for r in self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s "
                "ORDER BY ordinal_position", (source,))]
            column_list = ", ".join(f'"{c}"' for c in columns)
            expected = self.fingerprint("public", source, columns)
            target = f"{source}_copy"

            def fresh(schema: str = E2E_SCHEMA, target: str = target) -> None:
                self.execute(sql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(sql.Identifier(schema),
                                                                                 sql.Identifier(target)))
                shutil.rmtree(lake, ignore_errors=True)
                self.checkpoint()

            def checked(sample: Sample, schema: str = E2E_SCHEMA, target: str = target,
                        columns: list[str] = columns, expected: tuple[int, str] = expected) -> Sample:
                try:
                    got = self.fingerprint(schema, target, columns)
                except psycopg.Error as exc:
                    sample.details["exact"] = False
                    sample.details["why"] = str(exc).splitlines()[0][:200]
                    return sample
                sample.details["exact"] = got == expected
                if got != expected:
                    sample.details["why"] = f"{got[0]:,} rows, hash {'equal' if got[1] == expected[1] else 'differs'}"
                sample.rows = got[0]
                return sample

            def sndw_cli(source: str = source, target: str = target) -> Sample:
                fresh()
                return checked(self.run_cli(source, target, lake))

            def sndw_steps(source: str = source, target: str = target) -> Sample:
                fresh()
                return checked(self.worker("e2e_sndw_steps", {
                    "url": self.url, "query": f"SELECT * FROM public.{source}", "lake_root": str(lake),  # noqa: S608
                    "schema": E2E_SCHEMA, "table": target, "partition": PARTITION}, tree=True))

            def psql_pipe(source: str = source, target: str = target, column_list: str = column_list) -> Sample:
                fresh()
                self.execute(f"CREATE TABLE {E2E_SCHEMA}.{target} (LIKE public.{source})")
                out_cmd = f"COPY (SELECT {column_list} FROM public.{source}) TO STDOUT (FORMAT binary)"  # noqa: S608
                in_cmd = f"COPY {E2E_SCHEMA}.{target} ({column_list}) FROM STDIN (FORMAT binary)"
                psql = f"{shlex.quote(self.psql)} -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(self.url)}"
                seconds, rss, _, _ = run_process(
                    ["bash", "-o", "pipefail", "-c", f"{psql} -c {shlex.quote(out_cmd)} | {psql} -c {shlex.quote(in_cmd)}"],
                    tree=True)
                return checked(Sample(seconds, 0, rss, process_seconds=seconds))

            def sling(source: str = source, target: str = target) -> Sample:
                fresh()
                home = self.work / "sling-home"
                home.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, "SLING_HOME_DIR": str(home), "HOME": str(home), "SLING_DISABLE_TELEMETRY": "true",
                       "SRC_PG": sling_url, "DST_PG": sling_url}
                seconds, rss, _, _ = run_process(
                    [SLING_BINARY, "run", "--src-conn", "SRC_PG", "--src-stream", f"public.{source}",
                     "--tgt-conn", "DST_PG", "--tgt-object", f"{E2E_SCHEMA}.{target}", "--mode", "full-refresh"],
                    env=env, tree=True)
                return checked(Sample(seconds, 0, rss, process_seconds=seconds))

            def dlt_copy(backend: str, source: str = source, target: str = target) -> Callable[[], Sample]:
                dataset = f"e2e_dlt_{backend}"

                def run() -> Sample:  # the dataset is dlt's schema; its table keeps the source's name
                    fresh(dataset, source)
                    work = self.work / f"dlt-{uuid.uuid4().hex[:8]}"
                    try:
                        sample = self.worker("e2e_dlt", {"src_url": self.url, "src_schema": "public", "table": source,
                                                         "url": self.url, "dataset": dataset, "backend": backend,
                                                         "file_format": "csv", "work_dir": str(work)}, tree=True)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
                    checked(sample, dataset, source)
                    self.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(dataset)))
                    return sample
                return run

            info: dict[str, dict[str, Any]] = {}
            methods: dict[str, Callable[[], Sample]] = {}
            n = self.s.rows
            for name, label, fn, reason in (
                ("sndw_cli", "sndw: python -m etl.cli run (whole process)", sndw_cli, None),
                ("sndw_steps", "sndw: extract_table + load_table (a DAG run's two tasks, timed inside)", sndw_steps,
                 None),
                ("psql_pipe", "psql COPY TO STDOUT | psql COPY FROM STDIN, binary (reference)", psql_pipe, None),
                ("sling", "Sling 1.4.11 full-refresh (PostgreSQL to PostgreSQL)", sling, sling_reason),
                # dlt's fastest reader is connectorx; it cannot read text[] (pagila_like), pyarrow can.
                ("dlt_connectorx", 'dlt sql_table(backend="connectorx"), loader_file_format="csv"',
                 dlt_copy("connectorx"), cx_reason) if source == SOURCE_TABLE else
                ("dlt_pyarrow", 'dlt sql_table(backend="pyarrow"), loader_file_format="csv"', dlt_copy("pyarrow"),
                 dlt_reason),
            ):
                info[name] = {"label": label, "rows": n, "skipped": reason, "note": ""}
                if reason is None:
                    methods[name] = fn
            samples = self.interleave_tolerant(methods, required={"sndw_cli", "sndw_steps", "psql_pipe"},
                                               warmup={"sndw_cli", "psql_pipe"})
            block = summarise(info, samples, reference="psql_pipe")
            for entry in block["methods"]:
                runs = [r for r in samples.get(entry["method"]) or [] if "exact" in r.details]
                if runs:
                    entry["exact"] = all(r.details["exact"] for r in runs)
                    why = next((r.details["why"] for r in runs if "why" in r.details), "")
                    if why:
                        entry["note"] = "; ".join(filter(None, [entry["note"], f"not exact: {why}"]))
                if entry["method"] == "sndw_steps" and runs:
                    entry["extract_seconds"] = round(statistics.median(r.details["extract_seconds"] for r in runs), 3)
                    entry["load_seconds"] = round(statistics.median(r.details["load_seconds"] for r in runs), 3)
            # sndw against the fastest peer of each round (paired: the peers' best time of that round).
            peers = [m for m in ("sling", "dlt_pyarrow", "dlt_connectorx")
                     if samples.get(m) and all(s.seconds == s.seconds for s in samples[m])]  # NaN: failed
            for entry in block["methods"]:
                if entry["method"] in ("sndw_cli", "sndw_steps") and peers and "ratio" in entry:
                    paired = [(s.rows / s.seconds) / max(samples[p][i].rows / samples[p][i].seconds for p in peers)
                              for i, s in enumerate(samples[entry["method"]])]
                    fastest = max(peers, key=lambda p: statistics.median(x.rows / x.seconds for x in samples[p]))
                    entry.update({"peer_ratio": round(statistics.median(paired), 3),
                                  "peer_ratio_range": [round(min(paired), 3), round(max(paired), 3)],
                                  "fastest_peer": fastest})
            out[source] = {"rows": n, "columns": len(columns), **block}
            self.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(E2E_SCHEMA), sql.Identifier(target)))
        self.execute("DROP TABLE IF EXISTS pagila_like")
        shutil.rmtree(self.work / "e2e-lake", ignore_errors=True)
        self.results["e2e"] = out

    # ------------------------------------------------------------------------- replace

    def set_wal_minimal(self, minimal: bool) -> None:
        """Restart the bench's own cluster with wal_level=minimal (and no WAL senders), or back."""
        for name, value in (("wal_level", "minimal"), ("max_wal_senders", "0")):
            self.execute(f"ALTER SYSTEM SET {name} = '{value}'" if minimal else f"ALTER SYSTEM RESET {name}")
        env = {**os.environ, "PG_LOCAL_DIR": str(self.s.pg_dir)}
        for command in ("stop", "start"):
            subprocess.run([str(PG_LOCAL), command], env=env, check=True, stdout=subprocess.DEVNULL)

    def replace_round(self) -> dict[str, Any]:
        """sndw's replace of N rows (a table of N rows: TRUNCATE + COPY FREEZE in one transaction)
        against psql's binary COPY of the same rows into an existing empty table."""
        def sndw_replace() -> Sample:
            self.checkpoint()
            return self.worker("load_sndw", {"url": self.url, "paths": self.paths, "schema": SCHEMA,
                                             "table": "rp_sndw", "mode": "replace", "partition": PARTITION})

        def psql_copy() -> Sample:
            self.drop("rp_psql")
            self.execute(f"CREATE TABLE {SCHEMA}.rp_psql (LIKE {SCHEMA}.ref_base INCLUDING DEFAULTS)")
            self.checkpoint()
            sample = self.psql_cmd(f"\\copy {SCHEMA}.rp_psql ({self.column_list}) FROM {quote(self.ref_bin)} "
                                   "(FORMAT binary)")
            sample.rows = self.count("rp_psql")
            return sample

        level = self.execute("SHOW wal_level")[0][0]
        log(f"  wal_level = {level}")
        samples = self.interleave({"sndw": sndw_replace, "psql_binary": psql_copy}, warmup={"sndw", "psql_binary"})
        n = self.s.rows
        info = {"sndw": {"label": "sndw replace (TRUNCATE + COPY FREEZE, one transaction)", "rows": n,
                         "skipped": None, "note": f"a table of {n:,} rows"},
                "psql_binary": {"label": "psql \\copy FROM binary into an existing empty table (reference)",
                                "rows": n, "skipped": None, "note": ""}}
        return {"wal_level": level, **summarise(info, samples, reference="psql_binary")}

    def bench_replace(self) -> None:
        if "replace" in self.s.skip:
            self.results["replace"] = []
            return
        log("REPLACE: full refresh of N rows against psql's binary COPY into an empty table")
        self.worker("load_sndw", {"url": self.url, "paths": self.paths, "schema": SCHEMA, "table": "rp_sndw",
                                  "mode": "replace", "partition": PARTITION})
        out = [self.replace_round()]
        # wal_level needs a restart: only on the bench's own cluster, never on a BENCH_PG_URL server.
        if "wal_minimal" not in self.s.skip and not self.s.pg_url:
            self.set_wal_minimal(True)
            try:
                out.append(self.replace_round())
            finally:
                self.set_wal_minimal(False)
        self.results["replace"] = out
        self.drop("rp_sndw", "rp_psql")

    # -------------------------------------------------------------------------- memory

    def bench_memory(self) -> None:
        steps = [step for step in ("extract", "load") if self.results.get(step)]  # their N figures come from there
        e2e = (self.results.get("e2e") or {}).get(SOURCE_TABLE)
        at_n_cli = next((m for m in e2e["methods"] if m["method"] == "sndw_cli" and "ratio" in m), None) if e2e else None
        if at_n_cli:
            steps.append("etl.cli run")
        if not steps:
            self.results["memory"] = []
            return
        log(f"MEMORY: sndw's {', '.join(steps)} at N and 4N rows")
        big = self.s.rows * 4
        self.generate("bench_src_4n", big)
        lake = self.work / "lake-4n"
        rows: list[dict[str, Any]] = []
        # Two runs of each at 4N (a process's peak RSS varies by 5-10% run to run), against the
        # median of the rounds at N.
        runs: dict[str, list[Sample]] = {step: [] for step in steps}
        for _ in range(2):
            if "extract" in steps or "load" in steps:
                shutil.rmtree(lake, ignore_errors=True)
                self.checkpoint()
                extract = self.worker("extract_sndw", {"url": self.url, "query": "SELECT * FROM bench_src_4n",
                                                       "lake_root": str(lake), "table": "big", "partition": PARTITION})
                self.checkpoint()
                load = self.worker("load_sndw", {"url": self.url, "paths": extract.details["paths"], "schema": SCHEMA,
                                                 "table": "l_sndw_4n", "partition": PARTITION})
                self.drop("l_sndw_4n")
                for step, sample in (("extract", extract), ("load", load)):
                    if step in runs:
                        runs[step].append(sample)
            if at_n_cli:
                shutil.rmtree(lake, ignore_errors=True)
                self.checkpoint()
                runs["etl.cli run"].append(self.run_cli("bench_src_4n", "cli_4n", lake))
                self.execute(sql.SQL("DROP TABLE {}.cli_4n").format(sql.Identifier(E2E_SCHEMA)))
        self.execute("DROP TABLE bench_src_4n")
        shutil.rmtree(lake, ignore_errors=True)
        for step in steps:
            sample = Sample(statistics.median(s.seconds for s in runs[step]), runs[step][0].rows,
                            int(statistics.median(s.rss_kib for s in runs[step])))
            at_n = at_n_cli if step == "etl.cli run" else next(
                r for r in self.results[step]["methods"] if r["method"] == "sndw")
            assert at_n is not None
            rows.append({
                "step": step, "rows_n": self.s.rows, "rss_mib_n": at_n["peak_rss_mib"],
                "rows_4n": big, "rss_mib_4n": round(sample.rss_kib / 1024, 1),
                "growth": round(sample.rss_kib / 1024 / at_n["peak_rss_mib"], 3),
                "rows_per_s_4n": round(sample.rows / sample.seconds) if sample.seconds else None,
            })
            log(f"  {step}: {at_n['peak_rss_mib']:.0f} MiB at N, {sample.rss_kib / 1024:.0f} MiB at 4N")
        self.results["memory"] = rows

    # -------------------------------------------------------------------------- pagila

    def bench_pagila(self) -> None:
        folder = self.s.datasets / "pagila"
        if "pagila" in self.s.skip:
            self.results["pagila"] = {"skipped": "skipped (BENCH_SKIP)"}
            return
        if not (folder / "pagila-schema.sql").is_file():
            self.results["pagila"] = {"skipped": f"{folder} not found"}
            return
        log(f"PAGILA: rental and payment from {folder}")
        db = f"{self.s.db}_pagila"
        url = self.create_database(db)
        with psycopg.connect(self.server_url, autocommit=True) as conn:  # the dump's objects belong to postgres
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'").fetchone():
                conn.execute("CREATE ROLE postgres NOLOGIN")
        for part in ("pagila-schema.sql", "pagila-data.sql"):
            run_process([self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(folder / part)])
        self.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)), url=url)
        self.execute("VACUUM ANALYZE", url=url)
        out: dict[str, Any] = {}
        extract_dir = self.work / "pagila-extract"
        for table in ("rental", "payment"):
            lake = self.work / "pagila-lake"
            query = f"SELECT * FROM public.{table}"  # noqa: S608
            paths = self.lake_extract(table, query, lake, url=url)
            self.worker("load_sndw", {"url": url, "paths": paths, "schema": SCHEMA, "table": f"{table}_base",
                                      "partition": PARTITION})
            columns = ", ".join(f'"{r[0]}"' for r in self.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                "AND column_name <> '_loaded_at' ORDER BY ordinal_position", (SCHEMA, f"{table}_base"), url=url))
            ref = self.work / f"pagila-{table}.bin"
            select = f"SELECT {columns} FROM {SCHEMA}.{table}_base"  # noqa: S608
            self.psql_cmd(f"\\copy ({select}) TO {quote(ref)} (FORMAT binary)", url=url)

            def sndw_extract(table: str = table, query: str = query) -> Sample:
                shutil.rmtree(extract_dir, ignore_errors=True)
                return self.worker("extract_sndw", {"url": url, "query": query, "lake_root": str(extract_dir),
                                                    "table": table, "partition": PARTITION})

            def psql_extract(query: str = query) -> Sample:
                extract_dir.mkdir(parents=True, exist_ok=True)
                return self.psql_cmd(f"\\copy ({query}) TO {quote(extract_dir / 'out.csv')} (FORMAT csv)", url=url)

            def sndw_load(table: str = table, paths: list[str] = paths) -> Sample:
                self.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{table}_load", url=url)
                return self.worker("load_sndw", {"url": url, "paths": paths, "schema": SCHEMA,
                                                 "table": f"{table}_load", "partition": PARTITION})

            def psql_load(table: str = table, columns: str = columns, ref: Path = ref) -> Sample:
                self.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{table}_psql", url=url)
                self.execute(f"CREATE TABLE {SCHEMA}.{table}_psql (LIKE {SCHEMA}.{table}_base INCLUDING DEFAULTS)",
                             url=url)
                sample = self.psql_cmd(f"\\copy {SCHEMA}.{table}_psql ({columns}) FROM {quote(ref)} (FORMAT binary)",
                                       url=url)
                sample.rows = self.count(f"{table}_psql", url=url)
                return sample

            samples = self.interleave({"extract_sndw": sndw_extract, "extract_psql_csv": psql_extract,
                                       "load_sndw": sndw_load, "load_psql_binary": psql_load})
            n = samples["load_psql_binary"][0].rows
            out[table] = {
                "rows": n,
                "extract": summarise(
                    {"sndw": {"label": "sndw extract", "rows": n, "skipped": None, "note": ""},
                     "psql_csv": {"label": "psql \\copy TO csv (reference)", "rows": n, "skipped": None, "note": ""}},
                    {"sndw": samples["extract_sndw"], "psql_csv": samples["extract_psql_csv"]}, reference="psql_csv"),
                "load": summarise(
                    {"sndw": {"label": "sndw load", "rows": n, "skipped": None, "note": ""},
                     "psql_binary": {"label": "psql \\copy FROM binary (reference)", "rows": n, "skipped": None,
                                     "note": ""}},
                    {"sndw": samples["load_sndw"], "psql_binary": samples["load_psql_binary"]},
                    reference="psql_binary"),
            }
            shutil.rmtree(lake, ignore_errors=True)
            shutil.rmtree(extract_dir, ignore_errors=True)
        self.results["pagila"] = out
        if not self.s.keep:
            self.drop_database(db)

    # ------------------------------------------------------------------------ Airflow

    def bench_parse(self) -> None:
        if "parse" in self.s.skip:
            self.results["parse"] = []
            return
        log(f"AIRFLOW: DAG-folder parse time with {self.s.parse_sources} source configs")
        methods: dict[str, Callable[[], Sample]] = {}
        for count in self.s.parse_sources:
            folder = self.work / f"dags-{count}"
            make_dag_folder(folder, count)
            home = self.work / f"airflow-parse-{count}"

            def run(folder: Path = folder, home: Path = home) -> Sample:
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir(parents=True)
                env = {**self.worker_env(), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder)}
                return self.worker("dagbag", {"dag_folder": str(folder)}, env=env)
            methods[str(count)] = run
        samples = self.interleave(methods)
        rows = []
        for label, runs in samples.items():
            if any(r.details["import_errors"] for r in runs):
                raise MethodError(f"DagBag of {label} sources had import errors: {runs[0].details['errors']}")
            rows.append({"sources": int(label), "dags": runs[0].rows, "tasks": runs[0].details["tasks"],
                         "seconds": round(statistics.median(r.seconds for r in runs), 3),
                         "rounds": [round(r.seconds, 3) for r in runs],
                         "peak_rss_mib": round(statistics.median(r.rss_kib for r in runs) / 1024, 1)})
        self.results["parse"] = rows

    def bench_dags_test(self) -> None:
        """Wall time of ``airflow dags test`` (whole CLI process) for a sql source of 1 and of 10
        tables, each against a DAG of the same shape whose tasks do nothing: the difference is
        what sndw's own code costs, the rest is Airflow's start-up, parse and task runner."""
        if "dags_test" in self.s.skip:
            self.results["dags_test"] = []
            return
        log(f"AIRFLOW: airflow dags test of a sql source of 1 and 10 tables ({DAGS_TEST_ROWS:,} rows each)")
        home = self.work / "airflow-dags-test"
        folder = self.work / "dags-test"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "sources").mkdir(parents=True)
        shutil.copy(ROOT / "dags" / "sndw_sources.py", folder / "sndw_sources.py")
        (folder / "noop.py").write_text(NOOP_DAGS)
        for count in (1, 10):
            tables = "".join(DAGS_TEST_TABLE.format(i=i, rows=DAGS_TEST_ROWS) for i in range(count))
            (folder / "sources" / f"bench_{count}.yaml").write_text(DAGS_TEST_SOURCE.format(count=count) + tables)
        env = {**self.worker_env(), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
               "AIRFLOW_CONN_BENCH_SRC": self.url, "AIRFLOW_CONN_DW": self.url,
               "SNDW_LAKE_ROOT": str(self.work / "dags-test-lake")}
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        airflow = str(Path(SNDW_PYTHON).with_name("airflow"))
        run_process([airflow, "db", "migrate"], env=env)  # untimed
        # Untimed warm-up: the first `dags test` of a fresh home also serialises the folder's DAGs
        # and fills the OS cache (it took 13 s more than the same run later).
        run_process([airflow, "dags", "test", "noop_1", "2024-01-01"], env=env)
        day = iter(range(2, 10_000))

        def dags_test(dag_id: str) -> Callable[[], Sample]:
            def run() -> Sample:  # a new logical date each time: no run of the same date to clash with
                logical = (datetime(2024, 1, 1) + timedelta(days=next(day))).strftime("%Y-%m-%d")
                seconds, rss, stdout, stderr = run_process([airflow, "dags", "test", dag_id, logical], env=env)
                loaded = 0
                if dag_id.startswith("bench_"):
                    loaded = sum(self.count(f"t{i}", schema="dags_test") for i in range(int(dag_id.split("_")[1])))
                    if loaded != int(dag_id.split("_")[1]) * DAGS_TEST_ROWS:
                        raise MethodError(f"dags test {dag_id} loaded {loaded:,} rows: {(stderr or stdout)[-1500:]}")
                return Sample(seconds, loaded, rss)
            return run

        samples = self.interleave({f"{kind}_{n}": dags_test(f"{'bench' if kind == 'sndw' else 'noop'}_{n}")
                                   for n in (1, 10) for kind in ("sndw", "noop")}, rounds=self.s.dags_test_rounds)
        rows = []
        for n in (1, 10):
            sndw, noop = samples[f"sndw_{n}"], samples[f"noop_{n}"]
            own = [a.seconds - b.seconds for a, b in zip(sndw, noop, strict=True)]
            rows.append({"tables": n, "tasks": 2 * n, "seconds": round(statistics.median(s.seconds for s in sndw), 2),
                         "rounds": [round(s.seconds, 2) for s in sndw],
                         "noop_seconds": round(statistics.median(s.seconds for s in noop), 2),
                         "noop_rounds": [round(s.seconds, 2) for s in noop],
                         "sndw_own_seconds": round(statistics.median(own), 2),
                         "sndw_own_range": [round(min(own), 2), round(max(own), 2)],
                         "peak_rss_mib": round(statistics.median(s.rss_kib for s in sndw) / 1024, 1)})
        self.results["dags_test"] = rows

    def bench_etl_page(self) -> None:
        """The ETL page's answer (sndw.stats.overview and its JSON) over N sources x D days of audit rows."""
        if "etl_page" in self.s.skip:
            self.results["etl_page"] = None
            return
        from bench import etl_page

        sources, days = _int_env("BENCH_ETL_PAGE_SOURCES", 100), _int_env("BENCH_ETL_PAGE_DAYS", 365)
        log(f"ETL PAGE: {sources} sources x {days} days of audit rows")
        name = f"{self.s.db}_etl_page"
        url = self.create_database(name)
        try:
            folder = self.work / "etl-page-sources"
            etl_page.write_sources(folder, sources, self.work)
            with psycopg.connect(url) as conn:
                made = etl_page.fill(conn, sources, days)
            self.results["etl_page"] = {**etl_page.time_overview(url, folder, self.s.rounds + 2), "days": days,
                                        "audit_rows": made.audit_rows}
        finally:
            if not self.s.keep:
                self.drop_database(name)
    # --------------------------------------------------------------------------- checks

    def bench_checks(self) -> None:
        """What a typical table's quality checks add to its load: the same N rows loaded (append into
        a new table) with CHECKS and without, the two paired within each round."""
        if "checks" in self.s.skip:
            self.results["checks"] = None
            return
        log(f"CHECKS: a load of {self.s.rows:,} rows with a typical table's quality checks vs without")

        def load(table: str, checks: list[dict[str, Any]]) -> Callable[[], Sample]:
            def run() -> Sample:
                self.drop(table)
                self.checkpoint()
                sample = self.worker("load_sndw", {"url": self.url, "paths": self.paths, "schema": SCHEMA,
                                                   "table": table, "partition": PARTITION, "checks": checks})
                self.drop(table)
                return sample
            return run

        samples = self.interleave({"without": load("c_plain", []), "with": load("c_checked", CHECKS)},
                                  warmup={"without", "with"})
        statuses = {s.details.get("checks", {}).get("counts", {}).get("pass") for s in samples["with"]}
        if statuses != {len(CHECKS)}:
            raise MethodError(f"the checks did not all pass: {samples['with'][0].details.get('checks')}")
        block = summarise({"without": {"label": "sndw load, no checks (reference)", "rows": self.s.rows,
                                       "skipped": None, "note": ""},
                           "with": {"label": "sndw load with the checks", "rows": self.s.rows, "skipped": None,
                                    "note": CHECKS_TEXT}},
                          samples, reference="without", ratio="cost")
        # The checks' own time, as the load measured it (the engine's seconds per check, summed).
        block["checks_seconds"] = round(statistics.median(s.details["checks_seconds"] for s in samples["with"]), 3)
        block["checks"] = CHECKS_TEXT
        self.results["checks"] = block

    # ---------------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.start()
        try:
            self.results["meta"] = self.meta()
            self.prepare()
            for section, measure in (("load", self.bench_load), ("extract", self.bench_extract),
                                     ("write_modes", self.bench_write_modes), ("e2e", self.bench_e2e)):
                if section not in self.s.skip:
                    measure()
            self.bench_replace()
            if "memory" in self.s.skip:
                self.results["memory"] = []
            else:
                self.bench_memory()
            self.bench_pagila()
            if "cdc" not in self.s.skip:
                cdc_bench(self)
            self.bench_parse()
            self.bench_dags_test()
            self.bench_etl_page()
            self.bench_checks()
        finally:
            self.stop()
        self.results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        self.results["targets"] = report.targets(self.results)
        return self.results


# ------------------------------------------------------------------------- change data capture


def cdc_bench(bench: Bench) -> None:
    """CDC apply: N changes (3 updates : 1 delete, distinct keys) of a change partition applied to a
    keyed table of BENCH_ROWS rows (sndw.cdc.apply), against a plain ``merge`` of the same N rows;
    and the apply of 4N changes, for its memory. The change partitions are written as a CDC run
    writes them (the columns as the source's text, typed by metadata, and the cdc_* columns) by
    this harness, untimed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sndw.cdc.changes import CHANGE_FIELDS
    from sndw.lake import PG_TYPE_KEY

    s = bench.s
    n = max(1, min(s.cdc_changes, s.rows // 4))
    log(f"CDC: apply {n:,} changes (updates and deletes) vs merge of the same rows; memory at {n:,} and {4 * n:,}")
    data_columns = [r[0] for r in bench.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (SOURCE_TABLE,))]
    types = dict(bench.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                               "%s::regclass AND attnum > 0 AND NOT attisdropped", (SOURCE_TABLE,)))
    stride = max(1, s.rows // (4 * n))
    listed = ", ".join(f'"{c}"' for c in data_columns)
    changed = ", ".join({"score": "score + 1 AS score", "note": "'changed ' || id AS note"}.get(c, f'"{c}"')
                        for c in data_columns)
    work = bench.work / "cdc"
    shutil.rmtree(work, ignore_errors=True)
    files: dict[int, list[str]] = {}
    for count in (n, 4 * n):
        rows = bench.execute(f"SELECT {', '.join(f'{c}::text' for c in listed.split(', '))} FROM "  # noqa: S608
                             f"(SELECT {changed} FROM {SOURCE_TABLE} WHERE id % {stride} = 0 ORDER BY id LIMIT {count}) r")
        fields = [pa.field(c, pa.string(), metadata={PG_TYPE_KEY: types[c].encode()}) for c in data_columns]
        schema = pa.schema(fields + CHANGE_FIELDS)
        key = data_columns.index("id")
        deletes = [i % 4 == 3 for i in range(len(rows))]
        columns = [[None if (gone and j != key) else row[j] for row, gone in zip(rows, deletes, strict=True)]
                   for j in range(len(data_columns))]
        now = datetime.now(UTC)
        columns += [["D" if gone else "U" for gone in deletes], [1000 + i // 100 for i in range(len(rows))],
                    [i % 100 + 1 for i in range(len(rows))], [now] * len(rows),
                    [700 + i // 100 for i in range(len(rows))], [None] * len(rows), [None] * len(rows)]
        folder = work / f"changes-{count}"
        folder.mkdir(parents=True)
        path = folder / "part-00000.parquet"
        pq.write_table(pa.table([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                                schema=schema), path, compression="zstd")
        files[count] = [str(path)]
    merge_paths = bench.lake_extract("cdc_merge", f"SELECT {changed} FROM {SOURCE_TABLE} "  # noqa: S608
                                     f"WHERE id % {stride} = 0 ORDER BY id LIMIT {n}", work / "merge-lake")

    def target(table: str) -> None:
        bench.drop(table)
        bench.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE {SCHEMA}.ref_base INCLUDING ALL)")
        bench.execute(f"INSERT INTO {SCHEMA}.{table} ({bench.column_list}) SELECT {bench.column_list} "  # noqa: S608
                      f"FROM {SCHEMA}.ref_base")
        bench.execute(f'CREATE UNIQUE INDEX "{table}__sndw_key" ON {SCHEMA}.{table} (id)')
        bench.execute(f"VACUUM ANALYZE {SCHEMA}.{table}")
        bench.checkpoint()

    def cdc_apply(count: int) -> Callable[[], Sample]:
        def run() -> Sample:
            target("cdc_target")
            sample = bench.worker("apply_cdc", {"url": bench.url, "paths": files[count], "schema": SCHEMA,
                                                "table": "cdc_target", "primary_key": ["id"], "partition": PARTITION})
            left = bench.count("cdc_target")
            if sample.rows != count or left != s.rows - sample.details["deleted"]:
                raise MethodError(f"apply_cdc: {sample.rows:,} changes applied of {count:,}, {left:,} rows left")
            bench.drop("cdc_target")
            return sample
        return run

    def merge() -> Sample:
        target("cdc_merge")
        sample = bench.worker("load_sndw", {"url": bench.url, "paths": merge_paths, "schema": SCHEMA,
                                            "table": "cdc_merge", "mode": "merge", "partition": PARTITION,
                                            "primary_key": ["id"]})
        bench.drop("cdc_merge")
        return sample

    samples = bench.interleave({"cdc_apply": cdc_apply(n), "merge": merge, "cdc_apply_4x": cdc_apply(4 * n)})
    notes = {"cdc_apply": f"{n:,} changes ({n - n // 4:,} updates, {n // 4:,} deletes) into a {s.rows:,}-row keyed table",
             "merge": f"merge (upsert on id) of the same {n:,} rows, every key in the table",
             "cdc_apply_4x": f"{4 * n:,} changes, for memory"}
    info = {m: {"label": m, "rows": 4 * n if m.endswith("4x") else n, "skipped": None, "note": notes[m]}
            for m in notes}
    block = summarise(info, samples, reference="merge", ratio="cost")
    rss = {m["method"]: m.get("peak_rss_mib") for m in block["methods"]}
    block["changes"] = n
    block["rss_growth_4x"] = round(rss["cdc_apply_4x"] / rss["cdc_apply"], 2) if rss.get("cdc_apply") else None
    bench.results["cdc"] = block
    if not s.keep:
        shutil.rmtree(work, ignore_errors=True)


def quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def summarise(info: dict[str, dict[str, Any]], samples: dict[str, list[Sample]], *, reference: str,
              ratio: str = "speed") -> dict[str, Any]:
    """Median time per method, rows/s and the ratio to the reference (speed, or cost = time ratio)."""
    rows: list[dict[str, Any]] = []
    ref_runs = samples[reference]
    ref_seconds = statistics.median(s.seconds for s in ref_runs)
    ref_rate = statistics.median(s.rows for s in ref_runs) / ref_seconds
    for name, meta in info.items():
        entry: dict[str, Any] = {"method": name, "label": meta["label"], "rows": meta["rows"], "note": meta["note"]}
        runs = samples.get(name)
        if meta["skipped"] or not runs:
            entry["skipped"] = meta["skipped"] or "not run"
            rows.append(entry)
            continue
        errors = [s.details.get("error") for s in runs if s.details.get("error")]
        if errors:
            entry["skipped"] = f"failed: {errors[0]}"
            rows.append(entry)
            continue
        seconds = statistics.median(s.seconds for s in runs)
        n = statistics.median(s.rows for s in runs)
        rate = n / seconds if seconds else 0.0
        # Paired: each round's ratio against the reference's run of the same round (the machine's
        # load changes between rounds, not within one); the median and range of those.
        paired = [(s.rows / s.seconds) / (r.rows / r.seconds) if ratio == "speed" else s.seconds / r.seconds
                  for s, r in zip(runs, ref_runs, strict=False) if s.seconds and r.seconds]
        entry.update({
            "rows": int(n), "seconds": round(seconds, 3), "rows_per_s": round(rate),
            "ratio": round(statistics.median(paired), 3) if paired else round(rate / ref_rate, 3),
            "ratio_range": [round(min(paired), 3), round(max(paired), 3)] if paired else None,
            "peak_rss_mib": round(statistics.median(s.rss_kib for s in runs) / 1024, 1),
            "rounds": [round(s.seconds, 3) for s in runs],
        })
        if ratio == "speed" and all(s.process_seconds for s in [*runs, *ref_runs]):
            # Both sides as whole processes (start-up, imports and exit included), paired the same way.
            whole = [(s.rows / s.process_seconds) / (r.rows / r.process_seconds)  # type: ignore[operator]
                     for s, r in zip(runs, ref_runs, strict=False)]
            entry.update({"process_seconds": round(statistics.median(s.process_seconds or 0 for s in runs), 3),
                          "process_ratio": round(statistics.median(whole), 3),
                          "process_ratio_range": [round(min(whole), 3), round(max(whole), 3)]})
        rows.append(entry)
    return {"reference": reference, "ratio": ratio, "methods": rows}


# A typical table's quality checks (issue 23): not_null on 3 columns, a unique key, one range.
CHECKS: list[dict[str, Any]] = [
    {"not_null": ["id", "customer_id", "created_at"]},
    {"unique": ["id"]},
    {"range": {"column": "amount", "min": 0, "max": 10000}},
]
CHECKS_TEXT = "not_null(id, customer_id, created_at), unique(id), range(amount 0..10000); append into a new table"


# One generated source config of the parse benchmark: three tables, one per usual write mode.
SOURCE_TEMPLATE = """\
name: {name}
description: Generated source {i} for the parse benchmark.
kind: sql
conn_id: source_db_{conn}
target_schema: raw_{schema}
schedule: "@daily"
start_date: 2024-01-01
tags: [bench]
tables:
  - name: orders
    query: >-
      SELECT * FROM orders
      WHERE updated_at >= DATE '{{{{ partition_date }}}}' AND updated_at < DATE '{{{{ partition_date }}}}' + 1
    write_mode: partition
  - name: customers
    table: public.customers
    write_mode: merge
    primary_key: [id]
  - name: products
    table: public.products
    write_mode: replace
"""


DAGS_TEST_ROWS = 10_000
DAGS_TEST_SOURCE = """\
name: bench_{count}
kind: sql
conn_id: bench_src
target_schema: dags_test
schedule: "@daily"
start_date: 2024-01-01
tables:
"""
DAGS_TEST_TABLE = """\
  - name: t{i}
    query: SELECT * FROM bench_src WHERE id <= {rows}
    write_mode: replace
"""
# The same shape as the sources' DAGs (an extract and a load per table) with tasks that do nothing.
# (EmptyOperator would not do: the scheduler marks it done without running it.)
NOOP_DAGS = """\
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def nothing():
    return None


for n in (1, 10):
    with DAG(f"noop_{n}", schedule=None) as dag:
        for i in range(n):
            PythonOperator(task_id=f"extract_t{i}", python_callable=nothing) >> PythonOperator(
                task_id=f"load_t{i}", python_callable=nothing)
    globals()[dag.dag_id] = dag
"""


def make_dag_folder(folder: Path, count: int) -> None:
    """A DAG folder like dags/: sndw_sources.py and ``count`` sql source configs of three tables each."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "sources").mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "sndw_sources.py", folder / "sndw_sources.py")
    for i in range(count):
        (folder / "sources" / f"source_{i:04d}.yaml").write_text(
            SOURCE_TEMPLATE.format(i=i, name=f"source_{i:04d}", conn=i % 7, schema=i % 5))


def main() -> int:
    settings = Settings()
    log(f"N = {settings.rows:,} rows, {settings.rounds} rounds; results in {settings.out_dir}")
    results = Bench(settings).run()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    (settings.out_dir / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(report.render(results))
    try:
        report.chart(results, settings.out_dir / "latest.png")
    except ImportError as exc:
        log(f"no chart: {exc} (matplotlib is in requirements-bench.txt)")
    log(f"wrote {settings.out_dir / 'latest.json'} in {results['meta']['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
