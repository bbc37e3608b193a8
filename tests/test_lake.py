from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sndw.lake import Manifest, PartitionWriter, iter_file_batches, partition_files, write_partition

DAY = dt.date(2024, 3, 1)


def test_partition_layout_zstd_and_manifest(tmp_path: Path) -> None:
    batch = pa.record_batch({"userId": [1, 2], "When": pa.array([dt.datetime(2024, 3, 1, 12)] * 2)})
    manifest = write_partition([batch], tmp_path, "http", "api", "users", DAY, run_id="r1")
    name = f"part-00000-{manifest.manifest_id[:12]}.parquet"
    assert manifest.paths == [str(tmp_path / "http/api/users/2024-03-01" / name)]
    assert manifest.rows == 2 and manifest.bytes > 0 and manifest.run_id == "r1"
    assert [c["name"] for c in manifest.columns] == ["user_id", "when"]
    meta = pq.ParquetFile(manifest.paths[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    table = pq.read_table(manifest.paths[0])
    assert table.schema.field("when").type == pa.timestamp("us", tz="UTC")  # naive source time taken as UTC
    assert Manifest.from_dict(manifest.to_dict()) == manifest


def test_rerun_replaces_the_partition_and_never_mixes_files(tmp_path: Path) -> None:
    first = write_partition([pa.record_batch({"a": list(range(10))})] * 3, tmp_path, "sql", "s", "t", DAY)
    assert first.rows == 30
    second = write_partition([pa.record_batch({"a": [1]})], tmp_path, "sql", "s", "t", DAY)
    files = partition_files(tmp_path, "sql", "s", "t", DAY)
    assert [str(f) for f in files] == second.paths
    assert sum(pq.read_metadata(f).num_rows for f in files) == 1
    assert not [p for p in (tmp_path / "sql/s/t").iterdir() if p.name.startswith(".")]


def test_failed_extract_leaves_the_old_partition(tmp_path: Path) -> None:
    write_partition([pa.record_batch({"a": [1, 2]})], tmp_path, "sql", "s", "t", DAY)

    def broken():
        yield pa.record_batch({"a": [9]})
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        write_partition(broken(), tmp_path, "sql", "s", "t", DAY)
    files = partition_files(tmp_path, "sql", "s", "t", DAY)
    assert pq.read_table(files[0]).column("a").to_pylist() == [1, 2]
    assert [p.name for p in (tmp_path / "sql/s/t").iterdir()] == ["2024-03-01"]


def test_empty_extract_is_zero_rows_and_keeps_known_columns(tmp_path: Path) -> None:
    empty = pa.record_batch({"id": pa.array([], pa.int64())})
    manifest = write_partition([empty], tmp_path, "sql", "s", "t", DAY)
    assert manifest.rows == 0 and len(manifest.paths) == 1
    assert pq.read_schema(manifest.paths[0]).names == ["id"]
    nothing = write_partition([], tmp_path, "http", "s", "t", DAY)
    assert nothing.rows == 0 and nothing.paths == []


def test_schema_change_between_batches_starts_a_new_file(tmp_path: Path) -> None:
    batches = [pa.record_batch({"a": [1]}), pa.record_batch({"a": [2], "b": ["x"]})]
    manifest = write_partition(batches, tmp_path, "http", "s", "t", DAY)
    assert len(manifest.paths) == 2
    assert [c["name"] for c in manifest.columns] == ["a", "b"]


def test_rows_per_file_rolls_files(tmp_path: Path) -> None:
    with PartitionWriter(tmp_path, "sql", "s", "t", DAY, rows_per_file=5) as writer:
        for _ in range(4):
            writer.write(pa.record_batch({"a": [1, 2, 3]}))
        manifest = writer.commit()
    # Batches are never split: a file is closed once it holds rows_per_file rows or more.
    assert manifest.rows == 12 and len(manifest.paths) == 2
    assert [pq.read_metadata(p).num_rows for p in manifest.paths] == [6, 6]


def test_timezones_are_converted_to_utc(tmp_path: Path) -> None:
    local = pa.array([dt.datetime(2024, 3, 1, 12, 0)], pa.timestamp("ns", tz="Europe/Lisbon"))
    manifest = write_partition([pa.record_batch({"t": local})], tmp_path, "sql", "s", "t", DAY)
    value = pq.read_table(manifest.paths[0]).column("t")[0].as_py()
    assert value == dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_a_killed_attempt_resumes_from_its_checkpoint_without_its_half_written_part(tmp_path: Path) -> None:
    key = "dag|extract_t|run-1"
    writer = PartitionWriter(tmp_path, "sql", "s", "t", DAY, resume_key=key).__enter__()
    writer.write(pa.record_batch({"a": [1, 2]}))
    writer.checkpoint(1)
    writer.write(pa.record_batch({"a": [3, 4]}))  # the process dies here: no __exit__, no checkpoint
    stray = writer._writer
    assert stray is not None
    stray.close()
    assert writer._lock_fd is not None
    os.close(writer._lock_fd)  # what the kernel does to the dead process's lock

    # The source had nothing after the checkpoint this time: the resumed attempt commits at once.
    with PartitionWriter(tmp_path, "sql", "s", "t", DAY, resume_key=key) as again:
        assert again.resumed is not None and again.resumed["position"] == 1 and again.manifest.rows == 2
        manifest = again.commit()
    files = partition_files(tmp_path, "sql", "s", "t", DAY)
    assert [str(f) for f in files] == manifest.paths and manifest.rows == 2
    assert sorted(v for f in files for v in pq.read_table(f).column("a").to_pylist()) == [1, 2]
    assert [p.name for p in (tmp_path / "sql/s/t").iterdir()] == ["2024-03-01"]


def test_another_run_does_not_resume_this_runs_parts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), PartitionWriter(tmp_path, "sql", "s", "t", DAY, resume_key="d|t|run-1") as w:
        w.write(pa.record_batch({"a": [1]}))
        w.checkpoint(1)
        raise RuntimeError("stopped")
    with PartitionWriter(tmp_path, "sql", "s", "t", DAY, resume_key="d|t|run-2") as other:
        assert other.resumed is None
        other.write(pa.record_batch({"a": [9]}))
        manifest = other.commit()
    assert manifest.rows == 1
    assert [p.name for p in (tmp_path / "sql/s/t").iterdir()] == ["2024-03-01"]  # run-1's leftovers are gone


def test_file_batches_follow_a_byte_target_within_the_row_bounds(tmp_path: Path) -> None:
    """The load reads wide rows in fewer rows a batch and narrow columns (a merge's keys) in up to
    ``batch_rows``; every row comes back once, in order."""
    path = tmp_path / "wide.parquet"
    rows = 20_000
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()),
                             "text": pa.array([f"{i:0>1000}" for i in range(rows)])}), path, row_group_size=5_000)
    wide = list(iter_file_batches(path, 100_000, batch_bytes=1 << 20))
    assert 1_000 <= max(b.num_rows for b in wide) <= 1_100  # ~1,000 bytes a row: ~1,048 rows a MiB
    assert pa.Table.from_batches(wide).column("id").to_pylist() == list(range(rows))
    keys = list(iter_file_batches(path, 8_000, columns=["id"], batch_bytes=1 << 20))
    assert [b.num_rows for b in keys] == [8_000, 8_000, 4_000] and keys[0].schema.names == ["id"]
    tiny = list(iter_file_batches(path, 100_000, batch_bytes=1))
    assert max(b.num_rows for b in tiny) == 1_000  # never below 1,000 rows a batch


def test_integer_and_time_columns_are_delta_encoded_and_read_back_exactly(tmp_path: Path) -> None:
    big = 2**63 - 1
    batch = pa.record_batch({
        "i8": pa.array([-128, None, 127], pa.int8()),
        "i64": pa.array([-big - 1, 0, big], pa.int64()),
        "u64": pa.array([0, None, 2**64 - 1], pa.uint64()),
        "day": pa.array([dt.date(1, 1, 1), None, dt.date(9999, 12, 31)], pa.date32()),
        "at": pa.array([dt.datetime(1, 1, 1), dt.datetime(2024, 3, 1, 12, 0, 0, 1), None], pa.timestamp("us", tz="UTC")),
        "t32": pa.array([0, 1000, None], pa.time32("ms")),
        "t64": pa.array([0, 86_399_999_999, None], pa.time64("us")),
        "price": pa.array([None, 1, -1], pa.decimal128(12, 2)),
        "name": ["a", None, "c"],
        "flag": [True, None, False],
    })
    manifest = write_partition([batch, batch], tmp_path, "sql", "s", "t", DAY)
    assert pq.read_table(manifest.paths[0]).to_batches()[0].to_pylist() == batch.to_pylist()
    import polars as pl  # another reader of the same file: the encoding is Parquet's own

    assert pl.read_parquet(manifest.paths[0]).head(3).rows() == [tuple(r.values()) for r in batch.to_pylist()]
    meta = pq.ParquetFile(manifest.paths[0]).metadata
    encodings = {meta.schema.column(i).name: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    for name in ("i8", "i64", "day", "at", "t32", "t64"):
        assert "DELTA_BINARY_PACKED" in encodings[name], (name, encodings[name])
    # Decimals are fixed-length bytes in Parquet (uint64 is numeric(20, 0) in the lake): not delta encoded.
    for name in ("u64", "price", "name", "flag"):
        assert "DELTA_BINARY_PACKED" not in encodings[name], (name, encodings[name])
