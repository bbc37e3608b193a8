"""A 50,000-record paged resource loads with flat memory: memory does not grow with the record count.

Each extract runs in a fresh subprocess (so earlier tests' allocations do not hide growth) against
a server in this process that generates the pages on the fly. After a 4,000-record warm-up (imports,
Arrow pools, the Parquet writer), the subprocess measures the extract of N records:

- the Python heap's peak (tracemalloc): the records are Python dicts, the thing that would grow
  if anything buffered them;
- the growth of the process's peak RSS: Arrow and Parquet buffers too. It is read from VmHWM in
  /proc/self/status (the high-water mark of this process's own memory, reset by exec), not from
  getrusage's ru_maxrss, which after fork+exec starts at the parent's RSS: inside a pytest process
  that has loaded Airflow that hides every growth below a few hundred MB (ru_maxrss is the fallback
  where /proc is missing).

Measured here (batch_rows 2,000, pages of 500): streaming, 10k -> 50k records changes the heap peak
by ~2 % (4.5 MB both) and the RSS growth by < 1 MB (~8.5 MB both). The same extract with every
record held in one buffer (batch_rows = N) grows 4.9x in heap peak (10.7 -> 52 MB) and by 130 MB
in RSS. The bounds below (heap peak ratio <= 1.25, RSS growth ratio <= 1.5 plus 8 MB of allocator
slack) sit far from both: 5x the records may cost at most a quarter more heap and a few MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.http_api import Req, Resp, TestApi, items

SCRIPT = r"""
import json, resource, sys, tracemalloc
from datetime import date
from sndw.config import table_spec
from sndw.extract.http import iter_http_batches, requests_client
from sndw.lake import write_partition

base, total, lake, batch_rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def peak_rss_kb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def run(n, name):
    spec = table_spec("http", {"name": name, "endpoint": "/big", "records_path": "data", "params": {"total": n},
                               "pagination": {"type": "page_number", "page_size_param": "per_page",
                                              "page_size": 500}, "batch_rows": batch_rows or n})
    with requests_client(base, spec) as client:
        return write_partition(iter_http_batches(client, spec), lake, "http", "mem", name, date(2024, 1, 2))

run(4000, "warmup")
before = peak_rss_kb()
tracemalloc.start()
manifest = run(total, "big")
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = peak_rss_kb()
print(json.dumps({"rows": manifest.rows, "files": len(manifest.paths), "rss_growth_kb": after - before,
                  "heap_peak_kb": peak // 1024}))
"""


def big(req: Req) -> Resp:
    total, page, size = req.arg("total", 0), req.arg("page", 1), req.arg("per_page", 500)
    start = (page - 1) * size + 1
    return Resp(body={"data": items(start, min(start + size, total + 1))})


def measure(api: TestApi, total: int, lake: Path, batch_rows: int = 2000) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, api.url, str(total), str(lake), str(batch_rows)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_50k_records_load_with_flat_memory(tmp_path: Path) -> None:
    with TestApi({"/big": big}) as api:
        small = measure(api, 10_000, tmp_path / "small")
        large = measure(api, 50_000, tmp_path / "large")
        assert len(api.requests_to("/big")) == (4000 + 10_000) // 500 + 2 + (4000 + 50_000) // 500 + 2
    assert (small["rows"], large["rows"]) == (10_000, 50_000)
    assert large["heap_peak_kb"] <= 1.25 * small["heap_peak_kb"], (small, large)
    assert large["rss_growth_kb"] <= 1.5 * small["rss_growth_kb"] + 8 * 1024, (small, large)


def test_the_memory_measure_sees_a_buffering_extract(tmp_path: Path) -> None:
    """The control: the same measure on an extract that holds every record fails the bounds above."""
    with TestApi({"/big": big}) as api:
        small = measure(api, 10_000, tmp_path / "small", batch_rows=0)  # 0: one batch of everything
        large = measure(api, 50_000, tmp_path / "large", batch_rows=0)
    assert large["heap_peak_kb"] > 1.25 * small["heap_peak_kb"], (small, large)
    assert large["rss_growth_kb"] > 1.5 * small["rss_growth_kb"] + 8 * 1024, (small, large)
