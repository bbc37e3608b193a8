"""File sources: CSV, JSON, NDJSON and Parquet from a local path or glob, streamed as batches."""

from __future__ import annotations

import codecs
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from sndw.config import CsvOptions, FileTable
from sndw.errors import SourceDataError
from sndw.extract import batched, get_path, records_to_batch

log = logging.getLogger(__name__)


def resolve_paths(pattern: str, base_path: str | None = None) -> list[Path]:
    """The files a path or glob names, sorted; relative patterns start at ``base_path``."""
    full = pattern if os.path.isabs(pattern) or not base_path else os.path.join(base_path, pattern)
    matches = sorted(Path(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))
    return matches


def iter_file_batches(table: FileTable, base_path: str | None = None) -> Iterator[pa.RecordBatch]:
    paths = resolve_paths(table.path, base_path)
    if not paths:
        where = os.path.join(base_path, table.path) if base_path and not os.path.isabs(table.path) else table.path
        raise SourceDataError(f"{table.name}: no file matches {where}")
    reader = _READERS[table.file_format]
    for path in paths:
        log.info("%s: reading %s", table.name, path)
        try:
            yield from reader(path, table)
        except (pl.exceptions.PolarsError, pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceDataError(f"{table.name}: cannot read {path}: {exc}") from exc


def _utf8_copy(path: Path, encoding: str) -> Path:
    """Transcode a file to UTF-8 in a temporary file, streaming (polars reads UTF-8 only)."""
    handle, tmp = tempfile.mkstemp(suffix=".csv", prefix="sndw-utf8-")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as out, \
            codecs.open(str(path), "r", encoding=encoding, errors="strict") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    return Path(tmp)


def _csv(path: Path, table: FileTable) -> Iterator[pa.RecordBatch]:
    options: CsvOptions = table.csv
    source = path
    is_utf8 = codecs.lookup(options.encoding).name == "utf-8"
    if not is_utf8:
        source = _utf8_copy(path, options.encoding)
    try:
        frame = pl.scan_csv(
            source,
            separator=options.delimiter,
            quote_char=options.quote_char,
            has_header=options.has_header,
            skip_rows=options.skip_rows,
            null_values=options.null_values,
            infer_schema_length=None,  # whole-file inference: a late odd value must not fail the read
            encoding="utf8",
            raise_if_empty=False,
            try_parse_dates=True,
        )
        for chunk in frame.collect_batches(chunk_size=table.batch_rows):
            yield from chunk.to_arrow().to_batches()
    finally:
        if source != path:
            os.unlink(source)


def _json(path: Path, table: FileTable) -> Iterator[pa.RecordBatch]:
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    records = get_path(document, table.records_path)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise SourceDataError(f"{table.name}: {path} holds no list of records")
    for chunk in batched(records, table.batch_rows):
        yield records_to_batch(chunk)


def _ndjson(path: Path, table: FileTable) -> Iterator[pa.RecordBatch]:
    def rows() -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SourceDataError(f"{table.name}: {path} line {number}: {exc.msg}") from exc

    for chunk in batched(rows(), table.batch_rows):
        yield records_to_batch(chunk)


def _parquet(path: Path, table: FileTable) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(path, pre_buffer=False)
    try:
        yield from parquet.iter_batches(batch_size=table.batch_rows)
    finally:
        parquet.close()


_READERS = {"csv": _csv, "json": _json, "ndjson": _ndjson, "parquet": _parquet}
