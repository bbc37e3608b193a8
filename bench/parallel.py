"""A big table across workers (issue 25 part 3): `parallel: 2` against `parallel: 1`, extract only.

    python -m bench.parallel           (make bench-parallel)

One PostgreSQL table of BENCH_PARALLEL_ROWS rows (default 5,000,000; the bench's 10 columns, an
integer key) extracted into a lake partition, rounds interleaved (BENCH_ROUNDS, default 3), three ways:

- ``serial``: ``parallel: 1``, one process (what one extract task runs);
- ``tasks``: ``parallel: 2`` the way the DAG runs it: a plan process, then one process per range
  started together (two mapped tasks on two worker slots), then a publish process; timed from the
  plan's start to the publication's end, process start-ups included (a task's are larger still);
- ``sync``: ``parallel: 2`` from one process, as ``etl.cli sync`` runs it (the ranges in a pool of processes).

Each figure is the wall time (median of the rounds; "in-task": the timed work inside the processes,
plan + slowest range + publish for ``tasks``), rows, the peak RSS of the largest process and
whether the partition equals the serial one (row count and an order-independent hash of the rows).
Results go to ``bench/results/parallel.json``.

Settings: BENCH_PARALLEL_ROWS, BENCH_PARALLEL_N (default 2), BENCH_ROUNDS, BENCH_OUT, BENCH_WORK,
BENCH_PG_DIR / BENCH_PG_URL (the harness's), BENCH_KEEP.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Any

ROWS_ENV, N_ENV = "BENCH_PARALLEL_ROWS", "BENCH_PARALLEL_N"
TABLE = "bench_parallel"
PARTITION = date(2024, 1, 2)


# ------------------------------------------------------------------------ one measured process


def _request(a: dict[str, Any], parallel: int) -> Any:
    from sndw.config import SqlTable
    from sndw.pipeline import ExtractRequest

    spec = SqlTable.model_validate({"name": TABLE, "table": TABLE, "primary_key": ["id"], "parallel": parallel})
    return ExtractRequest(pipeline="bench", source="bench", kind="sql", table=spec, partition=PARTITION,
                          lake_root=a["lake"], run_id=a.get("run", "bench"), resume_key=a.get("run", "bench"))


def step(kind: str, a: dict[str, Any]) -> dict[str, Any]:
    """One process's work: ``extract`` (extract_table), ``plan``, ``range`` or ``publish``."""
    import dataclasses

    from sndw.pipeline import (
        SourceAccess,
        extract_range,
        extract_table,
        plan_ranges,
        publish_ranges,
        range_resume_key,
    )

    from bench.workers import _conninfo

    access = SourceAccess(postgres_conninfo=_conninfo(a["url"]))
    request = _request(a, int(a.get("parallel", 1)))
    started = time.perf_counter()
    if kind == "extract":
        manifest = extract_table(request, access)
        out: dict[str, Any] = {"rows": manifest.rows, "paths": manifest.paths}
    elif kind == "plan":
        out = {"parts": plan_ranges(request, access), "rows": 0}
    elif kind == "range":
        part = a["part"]
        manifest = extract_range(dataclasses.replace(request, part=part,
                                                     resume_key=range_resume_key(request.resume_key, part)), access)
        out = {"rows": manifest.rows, "manifest": manifest.to_dict()}
    else:
        manifest = publish_ranges(request, a["staged"])
        out = {"rows": manifest.rows, "paths": manifest.paths}
    return {**out, "seconds": time.perf_counter() - started}


# -------------------------------------------------------------------------------- the driver


def _call(kind: str, args: dict[str, Any], python: str) -> tuple[dict[str, Any], int]:
    from bench.harness import run_process

    _, rss, stdout, _ = run_process([python, "-m", "bench.parallel", kind, json.dumps(args)])
    line = next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT ")), rss


def _together(calls: list[tuple[str, dict[str, Any]]], python: str) -> list[tuple[dict[str, Any], int]]:
    """Run the calls in processes started at once (mapped tasks on free worker slots)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda c: _call(c[0], c[1], python), calls))


def _hash(paths: list[str]) -> tuple[int, int]:
    import polars as pl

    frame = pl.scan_parquet(paths).collect()
    return frame.height, int(frame.hash_rows(seed=7).sum() or 0) % (1 << 64)


def measure(bench: Any, rows: int, count: int, rounds: int, python: str) -> dict[str, Any]:
    """The section: generate the table, then ``rounds`` rounds of serial / tasks / threads, interleaved."""
    from bench.harness import log

    bench.generate(TABLE, rows)
    bench.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
    bench.execute(f"VACUUM ANALYZE {TABLE}")
    work = bench.work / "parallel"
    base = {"url": bench.url}
    samples: dict[str, list[dict[str, Any]]] = {"serial": [], "tasks": [], "sync": []}
    reference: tuple[int, int] | None = None
    for round_no in range(rounds):
        order = ["serial", "tasks", "sync"]
        order = order[round_no % 3:] + order[:round_no % 3]
        for method in order:
            lake = str(work / f"{method}-{round_no}")
            args = {**base, "lake": lake, "run": f"{method}-{round_no}"}
            started = time.perf_counter()
            if method == "serial":
                result, rss = _call("extract", {**args, "parallel": 1}, python)
                paths, peak, detail = result["paths"], rss, {"work_s": round(result["seconds"], 2)}
            elif method == "sync":
                result, rss = _call("extract", {**args, "parallel": count}, python)
                paths, peak, detail = result["paths"], rss, {"work_s": round(result["seconds"], 2)}
            else:
                plan, plan_rss = _call("plan", {**args, "parallel": count}, python)
                ranges = _together([("range", {**args, "parallel": count, "part": p}) for p in plan["parts"]], python)
                published, pub_rss = _call("publish", {**args, "parallel": count,
                                                       "staged": [r["manifest"] for r, _ in ranges]}, python)
                paths = published["paths"]
                peak = max([plan_rss, pub_rss, *(rss for _, rss in ranges)])
                detail = {"plan_s": round(plan["seconds"], 2), "publish_s": round(published["seconds"], 2),
                          "ranges_s": [round(r["seconds"], 2) for r, _ in ranges],
                          "range_rows": [r["rows"] for r, _ in ranges],
                          "work_s": round(plan["seconds"] + max(r["seconds"] for r, _ in ranges) + published["seconds"], 2)}
            seconds = time.perf_counter() - started
            found = _hash(paths)
            if method == "serial" and reference is None:
                reference = found
            samples[method].append({"seconds": round(seconds, 2), "rows": found[0], "rss_mib": round(peak / 1024),
                                    "hash": found[1], **detail})
            log(f"parallel {method} round {round_no + 1}: {seconds:.1f}s {detail}")
            subprocess.run(["rm", "-rf", lake], check=False)
    out: dict[str, Any] = {"rows": rows, "n": count, "rounds": rounds, "cpus": os.cpu_count(), "methods": {}}
    serial = statistics.median(s["seconds"] for s in samples["serial"])
    serial_work = statistics.median(s["work_s"] for s in samples["serial"])
    for method, runs in samples.items():
        median = statistics.median(s["seconds"] for s in runs)
        work = statistics.median(s["work_s"] for s in runs)
        out["methods"][method] = {
            "median_s": round(median, 2), "speedup": round(serial / median, 2),
            "work_s": round(work, 2), "work_speedup": round(serial_work / work, 2),
            "rows_per_s": round(rows / median), "peak_rss_mib": max(s["rss_mib"] for s in runs),
            "exact": all((s["rows"], s["hash"]) == reference for s in runs), "runs": runs}
    return out


def render(result: dict[str, Any]) -> str:
    lines = [f"A big table across workers: {result['rows']:,} rows, parallel: {result['n']} against parallel: 1, "
             f"{result['cpus']} CPUs, median of {result['rounds']} rounds", "",
             "| method | wall s (processes) | speedup | in-task s | speedup | rows/s | peak RSS MiB | exact |",
             "|---|---|---|---|---|---|---|---|"]
    for method, m in result["methods"].items():
        lines.append(f"| {method} | {m['median_s']} | {m['speedup']}x | {m['work_s']} | {m['work_speedup']}x | "
                     f"{m['rows_per_s']:,} | {m['peak_rss_mib']} | {'yes' if m['exact'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) > 2:  # a measured process
        print("BENCH_RESULT " + json.dumps(step(argv[1], json.loads(argv[2])), default=str))
        return 0
    from bench.harness import Bench, Settings, _int_env, log

    settings = Settings()
    rows, count = _int_env(ROWS_ENV, 5_000_000), _int_env(N_ENV, 2)
    python = os.environ.get("BENCH_SNDW_PYTHON") or sys.executable
    bench = Bench(settings)
    bench.start()
    try:
        started = time.perf_counter()
        result = measure(bench, rows, count, settings.rounds, python)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["meta"] = bench.meta()
    finally:
        bench.stop()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    (settings.out_dir / "parallel.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(render(result))
    log(f"wrote {settings.out_dir / 'parallel.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
