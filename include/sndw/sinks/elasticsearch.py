"""Index one lake manifest into Elasticsearch through the official client's ``streaming_bulk``.

No Airflow here: the caller builds the client (the Airflow operator from a connection). Memory stays
bounded by one Parquet batch plus one bulk chunk: documents are made from Arrow rows as the files
are streamed, never from the whole partition. Each document's ``_id`` comes from its id columns (the
table's primary key by default), so indexing the same rows again overwrites them.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sndw.errors import PermanentError
from sndw.lake import Manifest, iter_file_batches

log = logging.getLogger(__name__)


class IndexingError(PermanentError):
    """Documents Elasticsearch refused for a reason no retry fixes (a mapping error, a bad id)."""


class RetriesExhausted(Exception):
    """Documents still rejected with 429 after the configured retries: the task's retry may do better."""


@dataclass(frozen=True)
class IndexSpec:
    """Where and how one table is indexed."""

    index: str
    id_columns: Sequence[str]
    chunk_size: int = 500
    max_chunk_bytes: int = 10 * 1024 * 1024
    max_retries: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    batch_rows: int = 10_000


@dataclass
class IndexResult:
    documents: int = 0
    files: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows_loaded": self.documents, "files": self.files}


def json_value(value: Any) -> Any:
    """A lake value as JSON without loss: decimals as their exact text (the client would make floats
    of them), times in ISO 8601, binary as base64 (Elasticsearch's ``binary``), NaN and infinities as
    strings (JSON has no such numbers), durations as ISO 8601 seconds (``PT1.5S``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"PT{Decimal(value.days * 86_400 + value.seconds) + Decimal(value.microseconds) / 1_000_000}S"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):  # an Arrow map
            return {str(k): json_value(v) for k, v in value}
        return [json_value(item) for item in value]
    return str(value)


def document_id(row: dict[str, Any], id_columns: Sequence[str], where: str) -> str:
    """The ``_id`` of a row: its one id column's value as text, or a JSON array of several (unambiguous
    whatever the values contain). A missing value is an error: Elasticsearch would invent an id and
    re-runs would duplicate the row."""
    values = []
    for column in id_columns:
        value = row.get(column)
        if value is None:
            raise IndexingError(f"{where}: id column {column!r} is null in a row: every document needs an id")
        values.append(json_value(value))
    if len(values) == 1:
        return values[0] if isinstance(values[0], str) else json.dumps(values[0])
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def iter_actions(manifest: Manifest, spec: IndexSpec, where: str) -> Iterator[dict[str, Any]]:
    """``index`` actions for every row of the manifest's files, one Parquet batch at a time."""
    for path in manifest.paths:
        for batch in iter_file_batches(path, spec.batch_rows):
            missing = [c for c in spec.id_columns if c not in batch.schema.names]
            if missing:
                raise IndexingError(f"{where}: id column(s) {missing} are not in the lake columns "
                                  f"{batch.schema.names} ({path})")
            for row in batch.to_pylist():
                yield {"_op_type": "index", "_index": spec.index, "_id": document_id(row, spec.id_columns, where),
                       "_source": {k: json_value(v) for k, v in row.items()}}


def _describe(info: dict[str, Any]) -> str:
    """A refused document by id, status, error type and reason (never its content)."""
    error = info.get("error")
    reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
    return f"_id {info.get('_id')!r} (status {info.get('status')}): {reason}"


def index_manifest(client: Any, manifest: Manifest, spec: IndexSpec, *, where: str) -> IndexResult:
    """Index every row of ``manifest`` into ``spec.index``; 429s are retried with backoff by the helper.

    Raises ``IndexingError`` (permanent) naming the first refused document's id and reason, or
    ``RetriesExhausted`` when 429s outlast the retries. Chunks sent before a failure stay indexed:
    Elasticsearch has no transaction, and a re-run overwrites them by id.
    """
    from elasticsearch.helpers import streaming_bulk

    result = IndexResult(files=len(manifest.paths))
    # raise_on_error=False: with True the helper raises on the first 429 item instead of retrying it.
    # A refused document then comes back as (False, item) once its retries are spent; it stops the run.
    for ok, item in streaming_bulk(
            client, iter_actions(manifest, spec, where), chunk_size=spec.chunk_size,
            max_chunk_bytes=spec.max_chunk_bytes, max_retries=spec.max_retries,
            initial_backoff=spec.initial_backoff, max_backoff=spec.max_backoff, raise_on_error=False):
        if ok:
            result.documents += 1
            continue
        info = next(iter(item.values()))
        if info.get("status") == 429:
            raise RetriesExhausted(f"{where}: Elasticsearch still answered 429 (too many requests) after "
                                   f"{spec.max_retries} retries, for {_describe(info)}; "
                                   f"{result.documents} documents were indexed before")
        raise IndexingError(f"{where}: Elasticsearch refused a document of index {spec.index!r}: "
                            f"{_describe(info)}; {result.documents} documents were indexed before")
    log.info("%s: indexed %d documents of %d files into %s", where, result.documents, result.files, spec.index)
    return result
