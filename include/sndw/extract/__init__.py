"""Extractors: each turns one table or resource of a source into a stream of Arrow record batches."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from sndw.naming import NESTED_SEPARATOR

JSON_TYPE = pa.json_()


def flatten_record(record: Mapping[str, Any], max_depth: int = 10) -> dict[str, Any]:
    """Nested objects become ``parent__child`` columns; lists stay whole (stored as JSON)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, Mapping) and depth < max_depth and value:
            for key, inner in value.items():
                walk(f"{prefix}{NESTED_SEPARATOR}{key}" if prefix else str(key), inner, depth + 1)
        else:
            flat[prefix] = value

    for key, value in record.items():
        walk(str(key), value, 1)
    return flat


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def to_json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=_json_default, ensure_ascii=False)


def column_array(values: Sequence[Any], type_hint: pa.DataType | None = None) -> pa.Array:
    """An Arrow array for one column of Python values.

    Lists and mappings become the Arrow JSON type (JSONB in the warehouse); UUIDs become text;
    a column whose values mix types that have no common Arrow type (``1`` and ``"a"``) becomes
    text, each value written as JSON would show it, rather than failing or losing values.
    """
    if type_hint is not None:
        try:
            if type_hint == JSON_TYPE:
                return pa.array([to_json_text(v) for v in values], type=pa.string()).cast(JSON_TYPE)
            return pa.array(_plain(values), type=type_hint)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass  # the hint did not fit these values: infer below
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, (list, tuple, dict)):
        return pa.array([to_json_text(v) for v in values], type=pa.string()).cast(JSON_TYPE)
    try:
        array = pa.array(_plain(values), from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array([_as_text(v) for v in values], type=pa.string())
    if pa.types.is_struct(array.type) or pa.types.is_list(array.type):
        return pa.array([to_json_text(v) for v in values], type=pa.string()).cast(JSON_TYPE)
    return array


def _plain(values: Sequence[Any]) -> list[Any]:
    out = list(values)
    if any(isinstance(v, uuid.UUID) for v in out):
        out = [str(v) if isinstance(v, uuid.UUID) else v for v in out]
    if any(isinstance(v, memoryview) for v in out):
        out = [bytes(v) if isinstance(v, memoryview) else v for v in out]
    return out


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    return to_json_text(value)


def records_to_batch(records: Sequence[Mapping[str, Any]], *, flatten: bool = True,
                     max_depth: int = 10, types: Mapping[str, pa.DataType] | None = None) -> pa.RecordBatch:
    """Rows of JSON-like records as one record batch; columns in order of first appearance."""
    rows = [flatten_record(r, max_depth) if flatten else dict(r) for r in records]
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    arrays = []
    for name in names:
        hint = types.get(name) if types else None
        arrays.append(column_array([row.get(name) for row in rows], hint))
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def get_path(document: Any, path: str | None) -> Any:
    """Follow a dot path (``data.items``; list indexes as numbers) into a parsed JSON document."""
    if not path:
        return document
    node = document
    for part in path.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                return None
            node = node[index]
        else:
            return None
    return node
