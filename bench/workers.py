"""One benchmarked method, run in a process of its own so its peak RSS is its own.

    python -m bench.workers METHOD '{"json": "arguments"}'

Prints one JSON line: rows, seconds (the timed part only) and details. Imports happen before the
clock starts: a worker or an Airflow task has them loaded already; connecting is timed, as it is in
psql's figures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

Result = dict[str, Any]


def _conninfo(url: str) -> str:
    """The URL as the key=value conninfo the extract operator builds from an Airflow connection."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{k: str(v) for k, v in conninfo_to_dict(url).items()})


def _sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _parquet_batches(paths: list[str], batch_rows: int = 100_000) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for path in paths:
        parquet = pq.ParquetFile(path, pre_buffer=False)
        try:
            yield from parquet.iter_batches(batch_size=batch_rows)
        finally:
            parquet.close()


# ----------------------------------------------------------------------------------- loads


def load_sndw(a: dict[str, Any]) -> Result:
    """This product's load: what ParquetToDwOperator.execute calls, on a psycopg 3 connection."""
    import psycopg
    from sndw.warehouse import LoadSpec, load_files

    checks: list[Any] = []
    if a.get("checks"):  # a table's quality checks (validated as the config is, before the clock)
        from sndw.checks_config import Check

        checks = [Check.model_validate(c) for c in a["checks"]]
    spec = LoadSpec(a["schema"], a["table"], a.get("mode", "append"), a.get("primary_key", []), checks=checks)
    started = time.perf_counter()
    with psycopg.connect(a["url"]) as conn:
        result = load_files(conn, a["paths"], spec, partition=date.fromisoformat(a["partition"]),
                            run_id="bench")
    out: Result = {"rows": result.rows_loaded, "seconds": time.perf_counter() - started}
    if result.checks is not None:
        out.update(checks=result.checks, checks_seconds=result.checks_seconds)
    return out


def apply_cdc(a: dict[str, Any]) -> Result:
    """This product's change apply: what a CDC run does with one table's change partition
    (sndw.cdc.apply.apply_changes), in one transaction."""
    import psycopg
    from sndw.cdc.apply import apply_changes
    from sndw.warehouse import LoadSpec, ensure_lake_files_table

    spec = LoadSpec(a["schema"], a["table"], "merge", a["primary_key"])
    started = time.perf_counter()
    with psycopg.connect(a["url"]) as conn:
        ensure_lake_files_table(conn)
        with conn.transaction(), conn.cursor() as cur:
            applied = apply_changes(cur, spec, a["paths"], date.fromisoformat(a["partition"]), "bench")
    return {"rows": applied.changes, "seconds": time.perf_counter() - started, "upserted": applied.rows_upserted,
            "deleted": applied.rows_deleted}


def load_pandas(a: dict[str, Any]) -> Result:
    """pandas: read the Parquet files whole, then DataFrame.to_sql (what a naive pipeline does)."""
    import pandas as pd
    import sqlalchemy

    engine = sqlalchemy.create_engine(_sqlalchemy_url(a["url"]))
    started = time.perf_counter()
    frame = pd.concat([pd.read_parquet(p) for p in a["paths"]], ignore_index=True)
    frame.to_sql(a["table"], engine, schema=a["schema"], if_exists="append", index=False)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"rows": len(frame), "seconds": seconds}


def load_insert_rows(a: dict[str, Any]) -> Result:
    """Airflow's PostgresHook.insert_rows with its defaults (a row per INSERT, commit every 1000)."""
    import pyarrow.parquet as pq
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=a["conn_id"])
    started = time.perf_counter()
    table = pq.read_table(a["paths"][0]) if len(a["paths"]) == 1 else _concat(a["paths"])
    names = table.column_names
    rows = (tuple(r[n] for n in names) for r in table.to_pylist())
    hook.insert_rows(f'"{a["schema"]}"."{a["table"]}"', rows, target_fields=[f'"{n}"' for n in names],
                     commit_every=1000)
    return {"rows": table.num_rows, "seconds": time.perf_counter() - started}


def _concat(paths: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p) for p in paths])


def load_dlt(a: dict[str, Any]) -> Result:
    """dlt: a resource yielding the same Arrow batches, run into its postgres destination."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    pipeline = dlt.pipeline(pipeline_name=f"bench_{a['table']}", pipelines_dir=a["work_dir"],
                            destination=dlt.destinations.postgres(credentials=a["url"]),
                            dataset_name=a["schema"])
    resource = dlt.resource(_parquet_batches(a["paths"]), name=a["table"], write_disposition="append")
    started = time.perf_counter()
    kwargs = {"loader_file_format": a["file_format"]} if a.get("file_format") else {}
    info = pipeline.run(resource, **kwargs)
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    normalized = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
    rows = normalized.row_counts.get(a["table"], 0) if normalized else 0
    return {"rows": rows, "seconds": seconds, "file_format": a.get("file_format") or "default"}


# -------------------------------------------------------------------------------- extracts


def extract_sndw(a: dict[str, Any]) -> Result:
    """This product's sql extract for a PostgreSQL connection: what ExtractToParquetOperator runs
    for a table of ``batch_rows`` (the same batch size and row cap; the harness passes the config's
    default: importing sndw.config here would time pydantic's import too)."""
    from sndw.extract.sql import iter_postgres_batches, postgres_batch_bytes
    from sndw.lake import write_partition

    conninfo = _conninfo(a["url"])
    rows = int(a["batch_rows"])
    started = time.perf_counter()
    batches = iter_postgres_batches(conninfo, a["query"], batch_bytes=postgres_batch_bytes(rows), max_rows=rows)
    manifest = write_partition(batches, a["lake_root"], "sql",
                               a.get("source", "bench"), a["table"], date.fromisoformat(a["partition"]),
                               run_id="bench")
    return {"rows": manifest.rows, "seconds": time.perf_counter() - started, "bytes": manifest.bytes,
            "paths": manifest.paths}


def extract_pandas(a: dict[str, Any]) -> Result:
    """pandas: one-shot read_sql of the whole result, then to_parquet (zstd)."""
    import pandas as pd
    import sqlalchemy

    engine = sqlalchemy.create_engine(_sqlalchemy_url(a["url"]))
    Path(a["path"]).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with engine.connect() as conn:
        frame = pd.read_sql(a["query"], conn)
    frame.to_parquet(a["path"], compression="zstd", index=False)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"rows": len(frame), "seconds": seconds, "bytes": Path(a["path"]).stat().st_size}


# ------------------------------------------------------------------------------ end to end


def e2e_sndw_steps(a: dict[str, Any]) -> Result:
    """A whole table copied by the two calls a DAG run's tasks make: the core's ``extract_table``
    (ExtractToParquetOperator) and ``load_table`` (ParquetToDwOperator), each timed; imports first,
    as a task has them before it runs."""
    import psycopg
    from sndw.config import table_spec
    from sndw.pipeline import ExtractRequest, SourceAccess, extract_table, load_table
    from sndw.warehouse import LoadSpec

    table = table_spec("sql", {"name": a["table"], "query": a["query"], "write_mode": "replace"}, where="bench")
    request = ExtractRequest(pipeline="bench", source="bench", kind="sql", table=table,
                             partition=date.fromisoformat(a["partition"]), lake_root=a["lake_root"], run_id="bench")
    access = SourceAccess(postgres_conninfo=_conninfo(a["url"]))
    started = time.perf_counter()
    manifest = extract_table(request, access)
    extracted = time.perf_counter()
    with psycopg.connect(a["url"]) as conn:
        loaded = load_table(conn, manifest, LoadSpec(a["schema"], a["table"], "replace"), pipeline="bench")
    finished = time.perf_counter()
    return {"rows": loaded.rows_loaded, "seconds": finished - started, "extract_seconds": extracted - started,
            "load_seconds": finished - extracted}


def e2e_dlt(a: dict[str, Any]) -> Result:
    """dlt copying one PostgreSQL table: ``sql_table`` with an Arrow backend (pyarrow or connectorx)
    into its postgres destination with ``loader_file_format`` (csv: its COPY path)."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.sql_database import sql_table

    kwargs: dict[str, Any] = {}
    if a["backend"] == "connectorx":  # connectorx reads with its own client, from the URL
        kwargs["backend_kwargs"] = {"conn": a["src_url"]}
    pipeline = dlt.pipeline(pipeline_name=f"e2e_{a['dataset']}", pipelines_dir=a["work_dir"],
                            destination=dlt.destinations.postgres(credentials=a["url"]), dataset_name=a["dataset"])
    started = time.perf_counter()
    resource = sql_table(credentials=a["src_url"], table=a["table"], schema=a["src_schema"], backend=a["backend"],
                         chunk_size=a.get("chunk_size", 100_000), **kwargs)
    info = pipeline.run(resource, write_disposition="replace", loader_file_format=a["file_format"])
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    normalized = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
    rows = normalized.row_counts.get(a["table"], 0) if normalized else 0
    return {"rows": rows, "seconds": seconds}


# ---------------------------------------------------------------------------------- Airflow


def dagbag(a: dict[str, Any]) -> Result:
    """Parse a DAG folder with Airflow's DagBag; only the DagBag call is timed."""
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    bag = DagBag(dag_folder=a["dag_folder"])
    seconds = time.perf_counter() - started
    tasks = sum(len(d.tasks) for d in bag.dags.values())
    return {"rows": len(bag.dags), "seconds": seconds, "tasks": tasks, "import_errors": len(bag.import_errors),
            "errors": [str(e)[-500:] for e in bag.import_errors.values()][:3]}


METHODS: dict[str, Callable[[dict[str, Any]], Result]] = {
    "load_sndw": load_sndw, "apply_cdc": apply_cdc, "load_pandas": load_pandas, "load_insert_rows": load_insert_rows,
    "load_dlt": load_dlt, "extract_sndw": extract_sndw,
    "e2e_sndw_steps": e2e_sndw_steps, "e2e_dlt": e2e_dlt, "extract_pandas": extract_pandas, "dagbag": dagbag,
}


def main(argv: list[str]) -> int:
    method, args = argv[1], json.loads(argv[2])
    result = METHODS[method](args)
    sys.stdout.flush()
    print("BENCH_RESULT " + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
