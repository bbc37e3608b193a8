"""A quick run of `make bench`'s harness with tiny N: every section runs and reports well-formed figures.

The real benchmark (N = 1,000,000) is `make bench`, never part of `make test`. Methods whose
packages are not installed here (pandas, dlt: requirements-bench.txt) are reported as skipped; this
product's load, extract and end-to-end copy and psql's references always run; Sling's binary
(sling-linux-amd64) is not in .venv either.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import TEST_DB_PREFIX

ROOT = Path(__file__).resolve().parents[1]
ROWS = 2000
CDC_CHANGES = 200


def test_bench_harness_smoke(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {
        **os.environ,
        "BENCH_ROWS": str(ROWS), "BENCH_ROUNDS": "1", "BENCH_OUT": str(out), "BENCH_WORK": str(tmp_path / "work"),
        # The test session's PostgreSQL; a database of our own, cleaned up like the other tests' ones.
        "BENCH_PG_URL": pg_url, "BENCH_DB": f"{TEST_DB_PREFIX}bench_{uuid.uuid4().hex[:8]}",
        "BENCH_PANDAS_ROWS": "500", "BENCH_INSERT_ROWS": "200", "BENCH_DLT_CSV_ROWS": "500",
        "BENCH_PARSE_SOURCES": "1,10", "BENCH_CDC_CHANGES": str(CDC_CHANGES),
        "BENCH_ETL_PAGE_SOURCES": "10", "BENCH_ETL_PAGE_DAYS": "40",
        # ~25 s per `airflow dags test`: measured by `make bench`, too slow for `make test`.
        "BENCH_SKIP": "dags_test",
    }
    result = subprocess.run([sys.executable, "-m", "bench.harness"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    data = json.loads((out / "latest.json").read_text())

    load = {m["method"]: m for m in data["load"]["methods"]}
    for name in ("sndw", "psql_binary", "psql_csv", "insert_rows"):
        assert load[name]["rows"] == min(ROWS, 200 if name == "insert_rows" else ROWS), load[name]
        assert load[name]["rows_per_s"] > 0 and load[name]["peak_rss_mib"] > 0, load[name]
    assert load["psql_binary"]["ratio"] == 1.0
    # psql's RSS is its own, not the harness's size at fork time.
    assert load["psql_binary"]["peak_rss_mib"] < 60
    for name, module in (("pandas", "pandas"), ("dlt_parquet", "dlt"), ("dlt_default", "dlt")):
        if importlib.util.find_spec(module) is None:
            assert "not installed" in load[name]["skipped"]
        else:
            assert load[name]["rows"] > 0 and "ratio" in load[name], load[name]

    extract = {m["method"]: m for m in data["extract"]["methods"]}
    for name in ("sndw", "psql_csv", "psql_binary"):
        assert extract[name]["rows"] == ROWS and extract[name]["rows_per_s"] > 0, extract[name]
    assert extract["psql_csv"]["ratio"] == 1.0
    assert all(extract[name]["output_bytes"] > 0 for name in ("sndw", "psql_csv", "psql_binary"))

    modes = {m["method"]: m for m in data["write_modes"]["methods"]}
    assert set(modes) == {"append", "append_keyed", "partition", "merge", "replace"}
    assert all(m["rows"] == ROWS // 4 for m in modes.values())
    assert modes["append"]["ratio"] == 1.0
    assert modes["merge"]["keyed_ratio"] > 0 and len(modes["merge"]["keyed_ratio_range"]) == 2
    # The WAL each mode wrote, as the server's WAL position moved: at 500 rows a mode writes tens of
    # KiB, and whatever else the shared test server logs meanwhile is of that size (a merge's 2x the
    # keyed append's WAL is a figure of `make bench`, at 250,000 rows; here it once came out 0.925).
    assert all(m["wal_bytes"] > 0 for m in modes.values())
    assert modes["merge"]["keyed_wal_ratio"] > 0
    server_merge = data["write_modes"]["server_merge"]
    assert server_merge["merge_seconds"] > 0 and server_merge["append_keyed_seconds"] > 0
    assert server_merge["ratio_range"][0] <= server_merge["ratio"] <= server_merge["ratio_range"][1]
    # Both sides of the load's ratio also as whole processes (start-up and imports included).
    assert load["sndw"]["process_ratio"] > 0 and load["sndw"]["process_seconds"] >= load["sndw"]["seconds"]
    assert load["psql_binary"]["process_ratio"] == 1.0

    # BENCH_PG_URL: no restart with wal_level=minimal on a server the harness does not own.
    assert len(data["replace"]) == 1 and data["replace"][0]["wal_level"] in ("replica", "logical", "minimal")
    replace = {m["method"]: m for m in data["replace"][0]["methods"]}
    assert replace["sndw"]["rows"] == ROWS and replace["psql_binary"]["rows"] == ROWS
    assert replace["psql_binary"]["ratio"] == 1.0 and replace["sndw"]["ratio"] > 0
    assert data["dags_test"] == []

    # End to end: a table of each kind copied by sndw (the command line, and the DAG's two steps)
    # and psql's pipe, every copy checked against the source's row count and row hash; the peers
    # run where their packages are installed (.venv-bench), else they are reported as skipped.
    assert set(data["e2e"]) == {"bench_src", "pagila_like"}
    for table, block in data["e2e"].items():
        e2e = {m["method"]: m for m in block["methods"]}
        for name in ("sndw_cli", "sndw_steps", "psql_pipe"):
            assert e2e[name]["rows"] == ROWS and e2e[name]["exact"] is True, (table, e2e[name])
            assert e2e[name]["peak_rss_mib"] > 0, e2e[name]
        assert e2e["psql_pipe"]["ratio"] == 1.0
        assert 0 < e2e["sndw_steps"]["extract_seconds"] + e2e["sndw_steps"]["load_seconds"] <= e2e["sndw_steps"]["seconds"] + 0.002
        # The pipe's figure is both psql processes together (26 MiB at 1,000,000 rows). At 2,000 rows
        # the pipe lives ~30 ms: the 20 ms sampler may see its processes still starting (14.5 MiB once).
        assert e2e["psql_pipe"]["peak_rss_mib"] > 5
        peers = [m for m in block["methods"] if m["method"] in ("sling", "dlt_pyarrow", "dlt_connectorx")]
        assert peers
        for peer in peers:
            assert "ratio" in peer or "skipped" in peer, peer
        if any("ratio" in p for p in peers):
            assert e2e["sndw_cli"]["peer_ratio"] > 0
    targets_by_name = {t["target"]: t for t in data["targets"]}
    for table in ("bench_src", "pagila_like"):
        assert targets_by_name[f"end to end {table}: etl.cli run vs psql pipe"]["result"] in ("PASS", "MISS")
        assert targets_by_name[f"end to end {table}: sndw's copy exact"]["result"] == "PASS"
        assert targets_by_name[f"end to end {table}: etl.cli run peak RSS"]["result"] in ("PASS", "MISS")
    assert server_merge["sndw_ratio"] > 0
    # The client-fed floor: psql's DELETE + binary \copy of the same rows, paired with both merges.
    assert server_merge["psql_merge_seconds"] > 0
    assert server_merge["psql_ratio_range"][0] <= server_merge["psql_ratio"] <= server_merge["psql_ratio_range"][1]
    assert server_merge["sndw_psql_ratio_range"][0] <= server_merge["sndw_psql_ratio"] <= server_merge["sndw_psql_ratio_range"][1]
    assert targets_by_name["merge vs the server's own merge"]["result"] in ("PASS", "MISS")

    assert [m["step"] for m in data["memory"]] == ["extract", "load", "etl.cli run"]
    assert all(m["rows_4n"] == 4 * ROWS and m["rss_mib_4n"] > 0 for m in data["memory"])

    assert [(p["sources"], p["dags"]) for p in data["parse"]] == [(1, 1), (10, 10)]
    page = data["etl_page"]
    assert (page["sources"], page["tables"], page["days"]) == (10, 30, 40)
    assert page["audit_rows"] > 2 * 30 * 35 and 0 < page["seconds"] == sorted(page["rounds"])[len(page["rounds"]) // 2]

    if (ROOT.parent / "shared" / "datasets" / "pagila").is_dir():
        assert data["pagila"]["rental"]["rows"] == 16044
        assert data["pagila"]["payment"]["rows"] == 16049

    # CDC apply: N changes (3 updates : 1 delete) against a merge of the same rows, and 4N for memory;
    # the harness checks each apply left the table's rows minus its deletes.
    cdc = {m["method"]: m for m in data["cdc"]["methods"]}
    assert data["cdc"]["changes"] == CDC_CHANGES
    assert cdc["cdc_apply"]["rows"] == CDC_CHANGES and cdc["cdc_apply_4x"]["rows"] == 4 * CDC_CHANGES
    assert cdc["merge"]["rows"] == CDC_CHANGES and cdc["merge"]["ratio"] == 1.0
    assert all(m["seconds"] > 0 and m["peak_rss_mib"] > 0 for m in cdc.values())
    assert data["cdc"]["rss_growth_4x"] == round(cdc["cdc_apply_4x"]["peak_rss_mib"] / cdc["cdc_apply"]["peak_rss_mib"], 2)
    assert "CDC apply: 200 changes" in result.stdout
    # The quality checks' overhead: the same rows loaded with a typical table's checks and without.
    checks = {m["method"]: m for m in data["checks"]["methods"]}
    assert checks["with"]["rows"] == checks["without"]["rows"] == ROWS
    assert checks["without"]["ratio"] == 1.0 and checks["with"]["ratio"] > 0
    assert 0 < data["checks"]["checks_seconds"] < checks["with"]["seconds"]
    assert "Quality checks: the same load with and without not_null(id, customer_id, created_at)" in result.stdout

    targets = {t["target"]: t for t in data["targets"]}
    assert targets["quality checks overhead"]["result"] in ("PASS", "MISS")
    assert targets["load speed"]["result"] in ("PASS", "MISS")
    assert targets["parse 100 sources"]["result"] == "n/a"  # 100 sources are not parsed here
    assert targets["ETL page, 100 sources x a year"]["result"] == "n/a"  # nor is the page of 100 sources
    size = data["size"]
    assert size["loaded_bytes"] > 0 and size["source_bytes"] > 0
    assert size["ratio"] == round(size["loaded_bytes"] / size["source_bytes"], 3)
    assert targets["loaded table size"]["result"] in ("PASS", "MISS")
    assert "Targets" in result.stdout
    assert "| sndw load_files" in result.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").stat().st_size > 10_000
