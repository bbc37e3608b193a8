"""A lake partition is replaced only by an extract that completed and validated; a failed, killed or
concurrent extract never damages it, and no temporary folder outlives the next attempt.

Cases and their documented outcomes: tests/bad_inputs/faults/lake_cases.yaml."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sndw.config import FileTable, parse_source
from sndw.errors import PartitionValidationError
from sndw.extract.files import iter_file_batches
from sndw.lake import PartitionWriter, sweep_work_dirs, write_partition
from sndw.replay import replay_table
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import run, states

BAD = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((BAD / "faults" / "lake_cases.yaml").read_text())
PARTITION = dt.date(2024, 3, 1)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry beside and inside the partitions, hidden ones too, with the files' hashes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_error_names(case: str, message: str) -> None:
    missing = [name for name in CASES[case]["error_names"] if str(name) not in message]
    assert not missing, f"{case}: the error does not name {missing}: {message}"


def good_partition(root: Path) -> dict[str, str]:
    write_partition([pa.record_batch({"a": [1, 2, 3]})], root, "sql", "s", "t", PARTITION)
    return snapshot(root / "sql/s/t")


# ------------------------------------------------------------------------- validation (item 8)


def conflict_files(folder: Path, *order: str) -> None:
    folder.mkdir(exist_ok=True)
    for index, name in enumerate(order, 1):
        shutil.copy(BAD / "csv" / name, folder / f"lake_conflict_{index}.csv")


def test_a_conflicting_csv_glob_fails_before_the_swap_naming_column_types_and_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conflict_files(data, "lake_conflict_1.csv")
    spec = FileTable.model_validate({"name": "items", "path": "lake_conflict_*.csv"})
    lake = tmp_path / "lake"
    write_partition(iter_file_batches(spec, str(data)), lake, "file", "src", "items", PARTITION)
    before = snapshot(lake / "file/src/items")
    conflict_files(data, "lake_conflict_1.csv", "lake_conflict_2.csv")
    with pytest.raises(PartitionValidationError) as caught:
        write_partition(iter_file_batches(spec, str(data)), lake, "file", "src", "items", PARTITION)
    assert_error_names("lake_conflicting_csv_glob", str(caught.value))
    assert caught.value.column == "v"
    assert snapshot(lake / "file/src/items") == before


def test_the_text_file_first_loads_both_exactly_as_the_loader_allows(tmp_path: Path, dw: psycopg.Connection) -> None:
    data = tmp_path / "data"
    conflict_files(data, "lake_conflict_2.csv", "lake_conflict_1.csv")
    spec = FileTable.model_validate({"name": "items", "path": "lake_conflict_*.csv"})
    manifest = write_partition(iter_file_batches(spec, str(data)), tmp_path / "lake", "file", "src", "items",
                               PARTITION)
    load_manifest(dw, manifest, LoadSpec("public", "items"))
    rows = dw.execute("SELECT id, v, pg_typeof(v)::text FROM items ORDER BY id").fetchall()
    assert rows == [(1, "10", "text"), (2, "20", "text"), (3, "X-3", "text"), (4, "40", "text")]


def test_a_stray_part_file_in_the_extract_folder_fails_validation(tmp_path: Path) -> None:
    before = good_partition(tmp_path)
    with pytest.raises(PartitionValidationError) as caught, \
            PartitionWriter(tmp_path, "sql", "s", "t", PARTITION) as writer:
        writer.write(pa.record_batch({"a": [7]}))
        writer._close_file()
        shutil.copy(writer._files[0], writer.tmp_dir / "part-99999-foreign.parquet")
        writer.commit()
    assert_error_names("lake_stray_part_file", str(caught.value))
    assert snapshot(tmp_path / "sql/s/t") == before


def test_a_part_file_cut_short_fails_validation(tmp_path: Path) -> None:
    before = good_partition(tmp_path)
    with pytest.raises(PartitionValidationError) as caught, \
            PartitionWriter(tmp_path, "sql", "s", "t", PARTITION) as writer:
        writer.write(pa.record_batch({"a": list(range(1000))}))
        writer._close_file()
        path = writer._files[0]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        writer.commit()
    assert_error_names("lake_corrupt_part_file", str(caught.value))
    assert snapshot(tmp_path / "sql/s/t") == before


@pytest.mark.slow
def test_a_conflicting_glob_through_the_dag_keeps_the_partition_and_replay_works(
        env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    conflict_files(data, "lake_conflict_1.csv")
    config = {"name": "lake_conflict", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "items", "path": "lake_conflict_*.csv", "write_mode": "replace"}]}
    assert set(states(run(config, configs)).values()) == {"success"}
    table_dir = env["lake"] / "file" / "lake_conflict" / "items"
    before = snapshot(table_dir)
    conflict_files(data, "lake_conflict_1.csv", "lake_conflict_2.csv")
    result = states(run(config, configs))
    assert result == {"extract_items": "failed", "load_items": "upstream_failed"}, result
    assert snapshot(table_dir) == before
    with psycopg.connect(env["dw_url"]) as dw:
        (message,) = dw.execute("SELECT error_message FROM etl_audit_log WHERE step = 'extract' "
                                "AND status = 'failure'").fetchone()
        assert "'v'" in message and "lake_conflict_2.csv" in message and "int64" in message, message
        loaded = dw.execute("SELECT id, v FROM items ORDER BY id").fetchall()
        source = parse_source(config, "lake_conflict.yaml")
        replay_table(dw, source, source.tables[0], env["lake"])
        assert dw.execute("SELECT id, v FROM items ORDER BY id").fetchall() == loaded == [(1, 10), (2, 20)]


# ------------------------------------------------------------- killed and concurrent (item 9)


WRITER = textwrap.dedent("""
    import datetime as dt, sys, pyarrow as pa
    from sndw.lake import PartitionWriter
    with PartitionWriter(sys.argv[1], "sql", "s", "t", dt.date(2024, 3, 1)) as writer:
        writer.write(pa.record_batch({"a": list(range(200_000))}))
        writer._close_file()
        print(writer.tmp_dir, flush=True)
        sys.stdin.readline()  # hold here until told to go on (or killed)
        writer.write(pa.record_batch({"a": [-1]}))
        writer.commit()
    print("committed", flush=True)
""")


def start_writer(root: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert process.stdout is not None
    tmp_dir = Path(process.stdout.readline().strip())
    assert tmp_dir.is_dir() and list(tmp_dir.glob("part-*.parquet")), tmp_dir
    return process, tmp_dir


def test_a_killed_extract_leaves_the_partition_and_the_next_attempt_removes_its_folder(tmp_path: Path) -> None:
    before = good_partition(tmp_path)
    process, tmp_dir = start_writer(tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert tmp_dir.is_dir()  # what the killed process left
    assert {k: v for k, v in snapshot(tmp_path / "sql/s/t").items() if k.startswith("2024")} == before
    # The next attempt fails too; the dead folder is gone all the same, and so is the failed one's.
    with pytest.raises(RuntimeError), PartitionWriter(tmp_path, "sql", "s", "t", PARTITION) as writer:
        assert not tmp_dir.exists()
        writer.write(pa.record_batch({"a": [9]}))
        raise RuntimeError("source went away")
    assert snapshot(tmp_path / "sql/s/t") == before


def test_a_legacy_tmp_folder_without_a_lock_is_removed(tmp_path: Path) -> None:
    before = good_partition(tmp_path)
    legacy = tmp_path / "sql/s/t/.2024-03-01.tmp-0123456789ab"
    legacy.mkdir()
    (legacy / "part-00000-0123456789ab.parquet").write_bytes(os.urandom(1 << 20))
    assert sweep_work_dirs(tmp_path / "sql/s/t/2024-03-01") == 1
    assert snapshot(tmp_path / "sql/s/t") == before


def test_a_swap_cut_short_is_put_back(tmp_path: Path) -> None:
    before = good_partition(tmp_path)
    table = tmp_path / "sql/s/t"
    # Dead between the two renames of a two-step swap: the partition is aside, the new one not in place.
    (table / "2024-03-01").rename(table / ".2024-03-01.old-00aa11bb22cc")
    (table / ".2024-03-01.tmp-00aa11bb22cc").mkdir()
    with pytest.raises(RuntimeError), PartitionWriter(tmp_path, "sql", "s", "t", PARTITION):
        raise RuntimeError("this attempt fails at once")
    assert snapshot(table) == before


def test_a_concurrent_writer_never_removes_a_live_extracts_folder(tmp_path: Path) -> None:
    good_partition(tmp_path)
    process, tmp_dir = start_writer(tmp_path)
    try:
        write_partition([pa.record_batch({"a": [5]})], tmp_path, "sql", "s", "t", PARTITION)
        assert tmp_dir.is_dir() and list(tmp_dir.glob("part-*.parquet"))
        out, _ = process.communicate("go\n", timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0 and "committed" in out
    files = sorted((tmp_path / "sql/s/t/2024-03-01").glob("part-*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 200_001  # the last commit, whole
    assert [p.name for p in (tmp_path / "sql/s/t").iterdir()] == ["2024-03-01"]


def test_a_live_checkpointed_extract_of_another_run_survives_a_commit(tmp_path: Path) -> None:
    live = PartitionWriter(tmp_path, "sql", "s", "t", PARTITION, resume_key="d|t|run-1").__enter__()
    live.write(pa.record_batch({"a": [1, 2]}))
    live.checkpoint(1)
    write_partition([pa.record_batch({"a": [5]})], tmp_path, "sql", "s", "t", PARTITION)
    assert live.tmp_dir.is_dir()  # its lock is held: not superseded while it writes
    manifest = live.commit()
    live.__exit__(None, None, None)
    assert manifest.rows == 2
    assert [p.name for p in (tmp_path / "sql/s/t").iterdir()] == ["2024-03-01"]


def test_every_lake_case_is_exercised() -> None:
    exercised = {"lake_conflicting_csv_glob", "lake_conflicting_csv_glob_reversed", "lake_stray_part_file",
                 "lake_corrupt_part_file", "lake_killed_extract", "lake_killed_mid_swap", "lake_concurrent_writer",
                 "lake_header_only_csv_replace", "lake_header_only_csv_allow_empty", "lake_empty_partition_mode",
                 "lake_replace_referenced_key_dropped",
                 "lake_empty_into_empty", "lake_empty_replay"}  # tests/test_replace.py
    assert set(CASES) == exercised
    assert all("outcome" in case and "input" in case for case in CASES.values())
