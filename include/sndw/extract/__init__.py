"""Extractors: each turns one table or resource of a source into a stream of Arrow record batches."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from sndw.errors import ExtractError, SchemaConflictError, SourceDataError
from sndw.naming import COLUMN_KEY, NESTED_SEPARATOR, ColumnNames, normalize_identifier
from sndw.typeplan import PG_TYPE_KEY

JSON_TYPE = pa.json_()


def flatten_record(record: Mapping[str, Any], max_depth: int = 10, where: str = "a record") -> dict[str, Any]:
    """Nested objects become ``parent__child`` columns; lists stay whole (stored as JSON).

    Two fields of one record that flatten to one name (``{"a": {"b": 1}, "a__b": 2}``) would leave
    one value behind: a SourceDataError naming both fields and the name (``where`` starts it).
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, Mapping) and depth < max_depth and value:
            for key, inner in value.items():
                walk(f"{prefix}{NESTED_SEPARATOR}{key}" if prefix else str(key), inner, depth + 1)
        elif prefix in flat:
            fields = " and ".join(repr(p) for p in _fields_flattened_to(record, prefix, max_depth))
            raise SourceDataError(f"{where}: fields {fields} both flatten to the column {prefix!r}, which holds "
                                  "only one value; nothing was loaded. Rename one of the fields at the source")
        else:
            flat[prefix] = value

    for key, value in record.items():
        walk(str(key), value, 1)
    return flat


def _fields_flattened_to(record: Mapping[str, Any], name: str, max_depth: int) -> list[str]:
    """The dot paths of the fields of ``record`` that ``flatten_record`` names ``name``."""
    found: list[str] = []
    stack: list[tuple[str, str, Any, int]] = [(str(k), str(k), v, 1) for k, v in reversed(list(record.items()))]
    while stack:
        prefix, path, value, depth = stack.pop()
        if isinstance(value, Mapping) and depth < max_depth and value:
            stack.extend((f"{prefix}{NESTED_SEPARATOR}{k}" if prefix else str(k), f"{path}.{k}", v, depth + 1)
                         for k, v in reversed(list(value.items())))
        elif prefix == name:
            found.append(path)
    return found


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


class NotJsonError(SourceDataError):
    """A value Python reads as JSON but JSON cannot write: NaN or Infinity inside a list or object."""


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


class JsonFloat(float):
    """A JSON number a double holds, written otherwise than the double's shortest form (``2.50``,
    ``1E2``): the double, and its text for a column that is text (``column_types: {c: text}``, or
    beside other kinds), where it keeps its digits as written."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonFloat:
        number = super().__new__(cls, text)
        number.text = text
        return number


class JsonNumber(str):
    """A JSON number neither a double nor numeric(38) holds (``1e400``), as its own text: a string
    where it is a column's value (stored as text), a number again inside JSON (jsonb keeps it)."""

    __slots__ = ()


# JsonNumbers made so far in this process: to_json_text looks for them in a value only then.
_json_numbers = [0]
# Where an exact number goes in the JSON text: a placeholder string, replaced by the digits after.
_NUMBER_MARK = f"sndw-number-{uuid.uuid4().hex}-"
_MARKED = re.compile(f'"{_NUMBER_MARK}(\\d+)"')


def to_json_text(value: Any) -> str | None:
    """``value`` as JSON text. Numbers stay numbers with their exact digits: a Decimal
    (``0.1000000000000000055511``) and a JsonNumber (``1e400``) are written as written, not as the
    strings json.dumps would make of them (jsonb holds any of them as numeric). NaN and Infinity,
    which Python reads but JSON and jsonb have not, are a SourceDataError."""
    if value is None:
        return None
    numbers: list[str] = []

    def mark(text: str) -> str:
        numbers.append(text)
        return f"{_NUMBER_MARK}{len(numbers) - 1}"

    def default(item: Any) -> Any:
        if isinstance(item, decimal.Decimal) and item.is_finite():
            return mark(str(item))
        return _json_default(item)

    if _json_numbers[0] and isinstance(value, (dict, list, tuple)):
        value = _mark_numbers(value, mark)
    try:
        text = json.dumps(value, default=default, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity
        raise NotJsonError("a list or object holds NaN or Infinity, which JSON and PostgreSQL's jsonb have no "
                           "number for (nothing was loaded)") from None
    return _MARKED.sub(lambda m: numbers[int(m.group(1))], text) if numbers else text


def _mark_numbers(value: Any, mark: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mark_numbers(v, mark) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark_numbers(v, mark) for v in value]
    return mark(str(value)) if isinstance(value, JsonNumber) else value


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
            # infer, then a safe cast: pa.array(values, type=int64) would truncate 1.5 to 1 silently
            return pa.array(_plain(values), from_pandas=False).cast(type_hint)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
                OverflowError):
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
    if isinstance(value, JsonFloat):
        return value.text
    if isinstance(value, float) and not math.isfinite(value):  # as JSON and PostgreSQL spell them, not 'nan'
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
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


# ------------------------------------------------------------------- typed batches and drift

# The column kinds of JSON records and their lake types (warehouse: bigint, double precision,
# numeric, boolean, text, jsonb).
KIND_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(), "double": pa.float64(), "numeric": pa.decimal128(38, 0), "boolean": pa.bool_(),
    "text": pa.string(), "json": JSON_TYPE,
}
KIND_NAMES = {"bigint": "bigint", "double": "double precision", "numeric": "numeric", "boolean": "boolean",
              "text": "text", "json": "jsonb"}
VARIANT_MARK = "__v_"
_INT64 = (-(2**63), 2**63 - 1)
_EXACT_FLOAT_INT = 2**53
_MISFIT = object()


class SchemaDriftError(SchemaConflictError):
    """A field's values stopped fitting the type its column got from earlier records of the extract
    (or from ``column_types``)."""

    def __init__(self, table: str, column: str, old_type: str, new_type: str, where: str,
                 value: Any = None, declared: bool = False) -> None:
        super().__init__(table, column, old_type, new_type)
        self.where = where
        self.value = value
        shown = _excerpt(value)
        if declared:
            self.args = (
                f"{table}.{column} at {where}: value {shown} ({new_type}) does not fit the type {old_type} "
                f"that column_types declares for it. Nothing was loaded. Fix the source or the declared type.",)
            return
        self.args = (
            f"type change in {table}.{column} at {where}: earlier records gave {old_type}, this one gives "
            f"{new_type} ({shown}). Nothing was loaded. Set on_type_change: variant (such values go to a "
            f"column {column}{VARIANT_MARK}<type>) or fix the type with column_types: {{{column}: text}}",)


def _excerpt(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


# decimal128(38): the widest exact numbers the lake keeps as numbers; wider ones stay text.
MAX_NUMERIC_DIGITS = 38


def fits_numeric(value: decimal.Decimal) -> bool:
    """Whether a finite decimal fits decimal128(38, s): at most 38 digits left and right of the point."""
    if not value.is_finite():
        return False
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    whole = max(0, len(digits) + exponent)
    scale = max(0, -exponent)
    return whole + scale <= MAX_NUMERIC_DIGITS


def exact_float(text: str) -> float | decimal.Decimal | str:
    """``parse_float`` for JSON: a float when it holds the number written, else the exact Decimal.

    ``0.1`` is the float 0.1 (its shortest form reads back as 0.1), but
    ``0.1000000000000000055511151231257827`` or ``1e400`` are not any float: as floats they would be
    stored as ``0.1`` and ``inf``. So they stay exact: a Decimal (numeric), or, wider than
    numeric(38), the number's own text, character for character.
    """
    number = float(text)
    if len(text) <= 16 and "e" not in text and "E" not in text:
        # at most 15 significant digits: every such decimal is its own double (DBL_DIG); only
        # trailing zeros ('2.50') make its text other than the double's shortest form
        return JsonFloat(text) if text.endswith("0") and repr(number) != text else number
    exact = decimal.Decimal(text)
    if number == number and number not in (float("inf"), float("-inf")) and decimal.Decimal(repr(number)) == exact:
        return number if repr(number) == text else JsonFloat(text)
    if fits_numeric(exact):
        return exact
    _json_numbers[0] += 1
    return JsonNumber(text)


def value_kind(value: Any) -> str | None:
    """The kind of one JSON value: None for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return "bigint"
        return "numeric" if fits_numeric(decimal.Decimal(value)) else "text"
    if isinstance(value, float):
        return "double" if value == value and value not in (float("inf"), float("-inf")) else "text"
    if isinstance(value, decimal.Decimal):
        return "numeric" if fits_numeric(value) else "text"
    if isinstance(value, (list, tuple, dict)):
        return "json"
    return "text"


def _first_kind(values: Sequence[Any]) -> str | None:
    """The kind of a column: that of its first non-null value.

    Later values are then taken one by one as if each came in a batch of its own, so the outcome
    never depends on ``batch_rows`` (``1`` then ``"X-3"`` is a type change in one batch as across two).
    """
    return next((k for k in (value_kind(v) for v in values) if k is not None), None)


def _numeric(value: Any) -> decimal.Decimal | object:
    if isinstance(value, bool):
        return _MISFIT
    if isinstance(value, int):
        number = decimal.Decimal(value)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return _MISFIT
        number = decimal.Decimal(repr(value))
    elif isinstance(value, decimal.Decimal):
        number = value
    else:
        return _MISFIT
    return number if fits_numeric(number) else _MISFIT


def special_numeric(value: Any) -> decimal.Decimal | None:
    """NaN or +-Infinity as the Decimal PostgreSQL's ``numeric`` holds them as (a float or a Decimal),
    else None. Only a column that ``column_types`` declares numeric takes them: an inferred column
    with NaN stays what its first value made it (a float NaN is text there, as before)."""
    if isinstance(value, float) and not math.isfinite(value):
        return decimal.Decimal(value)
    if isinstance(value, decimal.Decimal) and (value.is_infinite() or value.is_qnan()):
        return decimal.Decimal("NaN") if value.is_nan() else value
    return None


def convert(kind: str, value: Any) -> Any:
    """``value`` as a value of a column of ``kind``, or _MISFIT when that would change or lose it."""
    if value is None:
        return None
    if kind == "text":
        return _as_text(value)
    if kind == "json":
        return value
    if kind == "boolean":
        return value if isinstance(value, bool) else _MISFIT
    if isinstance(value, bool):
        return _MISFIT
    if kind == "bigint":
        if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
            return int(value)
        return _MISFIT
    if kind == "double":
        if isinstance(value, float) and value == value:
            return value
        if isinstance(value, int) and abs(value) <= _EXACT_FLOAT_INT:
            return float(value)
        if isinstance(value, decimal.Decimal) and value.is_finite() and decimal.Decimal(repr(float(value))) == value:
            return float(value)
        return _MISFIT
    if kind == "numeric":
        return _numeric(value)
    return _MISFIT


def kind_array(kind: str, values: Sequence[Any]) -> pa.Array | None:
    """Converted values as the lake array of ``kind``; None when they do not fit it (numeric too wide).

    A numeric column holding NaN or Infinity (no Arrow decimal can) is carried as the numbers' exact
    text; ``kind_field`` names its warehouse type, and the load casts the text to ``numeric``."""
    if kind == "json":
        return pa.array([to_json_text(v) for v in values], type=pa.string()).cast(JSON_TYPE)
    if kind == "numeric" and any(isinstance(v, decimal.Decimal) and not v.is_finite() for v in values):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if kind == "numeric":
        try:
            array = pa.array(values) if any(v is not None for v in values) else pa.nulls(len(values), pa.decimal128(1, 0))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        return array if pa.types.is_decimal128(array.type) else None
    return pa.array(values, type=KIND_TYPES[kind])


def kind_field(name: str, kind: str | None, array: pa.Array) -> pa.Field:
    """The lake field of a column of ``kind``: a numeric column carried as text names its warehouse type."""
    carried = kind == "numeric" and pa.types.is_string(array.type)
    return pa.field(name, array.type, metadata={PG_TYPE_KEY: b"numeric"} if carried else None)


# A str from JSON may hold a lone UTF-16 surrogate ("\ud800" escaped without its pair): Python
# keeps it, UTF-8 cannot carry it, so the lake and the warehouse cannot store it exactly.
_SURROGATE = re.compile("[\ud800-\udfff]")


def shown_text(text: str) -> str:
    """``text`` as it can be printed: a lone surrogate as its escape (``\\ud800``), the rest as is."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of ``row`` (a key or a value, at any depth: ``tags[2]``, ``a.b``) whose text
    holds a lone surrogate, and that surrogate; None when there is none.

    Walked with a stack, not by recursion: the value may be nested deeper than Python recurses.
    """
    for key in row:
        if isinstance(key, str) and (found := _SURROGATE.search(key)):
            return key, found.group()
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in reversed(list(row.items()))]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if found := _SURROGATE.search(value):
                return path, found.group()
        elif isinstance(value, Mapping):
            for key in value:
                if isinstance(key, str) and (found := _SURROGATE.search(key)):
                    return f"{path}.{key}", found.group()
            stack.extend((f"{path}.{k}", v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def nesting_depth(value: Any) -> int:
    """How many lists and objects deep ``value`` is (a scalar: 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            node = list(node.values())
        if isinstance(node, (list, tuple)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node if isinstance(v, (list, tuple, Mapping)))
    return deepest


def too_deep_message(where: str) -> str:
    """The error of JSON nested deeper than Python's parser and encoder go (recursion limit)."""
    return (f"{where}: JSON nested deeper than this reader can follow (about {sys.getrecursionlimit()} levels of "
            "lists and objects); nothing was loaded. Flatten the data at the source, or leave the field out")


class TypedBatchBuilder:
    """Record batches whose column types hold for the whole extract, not just one batch.

    A column gets its kind from its first non-null value (or from ``column_types``); every later
    value, in the same batch or a later one, keeps that kind when it converts without loss (``2.0``
    into bigint, ``3`` into double, anything into text or JSON); integers that meet fractions widen
    to numeric (exact, and the warehouse widens bigint to numeric the same way). So the outcome is
    the same whatever ``batch_rows`` is.
    Any other change is a type change: ``on_type_change="fail"`` raises SchemaDriftError naming
    table, column, old and new type; ``"variant"`` keeps the column and puts those values into a
    column ``<column>__v_<kind>`` (NULL in the original column), so no value is lost or altered.
    Each field names its warehouse column (``COLUMN_KEY``, from ``names``), decided record by record
    for the whole extract, so two fields that normalise alike (``Name``, ``name``) never swap columns.
    """

    def __init__(self, table: str, *, on_type_change: str = "fail",
                 column_types: Mapping[str, str] | None = None, source: str = "") -> None:
        self.table = table
        self.label = f"{source}.{table}" if source else table  # how errors about values name the table
        self.on_type_change = on_type_change
        self.declared = {normalize_identifier(k): v for k, v in (column_types or {}).items()}
        self.kinds: dict[str, str] = {}
        self.names = ColumnNames(self.label)
        self.records = 0
        self.changes: list[dict[str, Any]] = []
        # where record numbers in errors count from: files set "<path> " and the records before it
        self.origin = ""
        self.origin_records = 0

    def start(self, origin: str) -> None:
        """Count the records of errors from here on, within ``origin`` (a file)."""
        self.origin = f"{origin} "
        self.origin_records = self.records

    def _established(self, name: str) -> str | None:
        kind = self.kinds.get(name)
        if kind is None:
            kind = self.declared.get(normalize_identifier(name))
            if kind is not None:
                self.kinds[name] = kind
        return kind

    def build(self, rows: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
        """One batch of flat rows (already flattened); columns in order of first appearance.

        A text with a lone surrogate, or a value nested deeper than Python can write as JSON, is a
        SourceDataError naming the record and the field: neither can be stored exactly.
        """
        first = self.records - self.origin_records + 1  # the number of rows[0] in errors
        try:
            return self._build(rows)
        except UnicodeEncodeError:
            for number, row in enumerate(rows, first):
                found = lone_surrogate(row)
                if found is not None:
                    raise SourceDataError(
                        f"{self.label}: {self.origin}record {number}, field '{shown_text(found[0])}': the text "
                        f"holds a lone UTF-16 surrogate ({shown_text(found[1])}, an escape without its pair), "
                        "which UTF-8 cannot carry: it cannot be stored exactly; nothing was loaded. Fix the "
                        "value at the source") from None
            raise
        except NotJsonError:
            for number, row in enumerate(rows, first):
                name = next((name for name, value in row.items()
                             if isinstance(value, (dict, list, tuple)) and _non_finite(value)), None)
                if name is not None:
                    raise SourceDataError(
                        f"{self.label}: {self.origin}record {number}, field '{shown_text(name)}': a list or object "
                        "holds NaN or Infinity, which JSON and PostgreSQL's jsonb have no number for: it cannot be "
                        "stored exactly; nothing was loaded. Fix the value at the source") from None
            raise
        except RecursionError:
            # the deepest field, the first record of that depth
            depth, before, name = max(((nesting_depth(value), -number, name) for number, row in
                                       enumerate(rows, first) for name, value in row.items()),
                                      default=(0, 0, "?"))
            number = -before
            raise SourceDataError(too_deep_message(
                f"{self.label}: {self.origin}record {number}, field {name!r} ({depth} levels)")) from None

    def _build(self, rows: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
        names: dict[str, None] = {}
        for row in rows:
            for key in row:
                names.setdefault(key, None)
        pending = {name for name in names if name not in self.names.columns}
        for row in rows if pending else ():  # record by record: the same names whatever batch_rows is
            if not pending.isdisjoint(row):
                self.names.add(row)
                pending.difference_update(row)
        columns: dict[str, pa.Array] = {}
        variants: dict[str, list[Any]] = {}
        for name in names:
            values = [row.get(name) for row in rows]
            columns[name] = self._column(name, values, variants)
        for name, values in variants.items():
            array = kind_array(self.kinds[name], values)
            if array is None:  # numbers wider than numeric(38): kept as their text
                self.kinds[name] = "text"
                array = kind_array("text", [_as_text(v) for v in values])
            assert array is not None
            columns[name] = array
        self.names.add(variants)
        self.records += len(rows)
        fields = [self._marked(kind_field(name, self.kinds.get(name), array)) for name, array in columns.items()]
        return pa.RecordBatch.from_arrays(list(columns.values()), schema=pa.schema(fields))

    def name_columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch of a file with a header or schema (CSV, Parquet), its fields marked with their columns."""
        self.names.add(batch.schema.names)
        fields = [self._marked(f) for f in batch.schema]
        return pa.RecordBatch.from_arrays(batch.columns, schema=pa.schema(fields, metadata=batch.schema.metadata))

    def _marked(self, fld: pa.Field) -> pa.Field:
        return fld.with_metadata({**(fld.metadata or {}), COLUMN_KEY: self.names[fld.name].encode()})

    def _column(self, name: str, values: list[Any], variants: dict[str, list[Any]]) -> pa.Array:
        kind = self._established(name)
        if kind is None:
            kind = _first_kind(values)
            if kind is None:
                return pa.nulls(len(values))
            self.kinds[name] = kind
        declared = normalize_identifier(name) in self.declared
        converted = [convert(kind, v) for v in values]
        if declared and kind == "numeric":
            specials = [special_numeric(v) if c is _MISFIT else None for v, c in zip(values, converted, strict=True)]
            converted = [c if s is None else s for c, s in zip(converted, specials, strict=True)]
        misfits = [i for i, v in enumerate(converted) if v is _MISFIT]
        widen = [i for i in misfits if _numeric(values[i]) is not _MISFIT]
        other = [i for i in misfits if _numeric(values[i]) is _MISFIT]
        if widen and kind == "bigint" and not declared and (
                self.on_type_change == "variant" or not other or widen[0] < other[0]):
            # Integers meeting fractions: widen to exact numeric (the warehouse widens bigint the same
            # way), as record by record would have before reaching a value that fits no number.
            self.kinds[name] = kind = "numeric"
            self.changes.append({"change": "widen_column", "column": name, "from": "bigint", "to": "numeric"})
            converted = [convert(kind, v) for v in values]
            misfits = [i for i, v in enumerate(converted) if v is _MISFIT]
        array = None if misfits else kind_array(kind, converted)
        new_label = None
        if array is None and not misfits:  # numbers wider than numeric(38) do not fit
            misfits = [i for i, v in enumerate(converted) if v is not None]
            new_label = "numeric wider than 38 digits"
        if not misfits:
            assert array is not None
            return array
        first = misfits[0]
        if self.on_type_change != "variant" or declared:
            raise SchemaDriftError(self.table, name, KIND_NAMES[kind],
                                   new_label or KIND_NAMES[value_kind(values[first]) or "text"],
                                   f"{self.origin}record {self.records - self.origin_records + first + 1}",
                                   values[first], declared)
        for i in misfits:
            value = values[i]
            variant = f"{name}{VARIANT_MARK}{value_kind(value) or 'text'}"
            variant_kind = self.kinds.setdefault(variant, value_kind(value) or "text")
            column = variants.setdefault(variant, [None] * len(values))
            fitted = convert(variant_kind, value)
            column[i] = _as_text(value) if fitted is _MISFIT else fitted
            converted[i] = None
        if not any(c["column"] == name and c["change"] == "variant" for c in self.changes):
            self.changes.append({"change": "variant", "column": name, "type": KIND_NAMES[kind]})
        array = kind_array(kind, converted)
        assert array is not None
        return array


# SQLite's own value types besides bytes: a column of them may mix them row by row.
_SCALARS = (bool, int, float, str)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, _SCALARS) and not (isinstance(value, float) and not math.isfinite(value))


class ScalarColumns:
    """The columns of a DB-API result whose driver names no type and whose values are numbers,
    booleans and text (SQLite's: 1, 2 and 'three' in one column), typed by ``TypedBatchBuilder``'s rules, as http
    records are: a column's kind comes from its first value and holds for the whole extract, so
    ``batch_rows`` never changes the outcome (a type change fails in one batch as across two).

    ``eligible``: per column, whether the driver left its type open (and column_types did not set it);
    which of those are typed here is decided by the first batch with rows: those whose values there
    are all integers, finite floats, booleans or text, at least one not NULL (decimals, dates, bytes,
    infinities and the like keep the type Arrow infers, as a typed driver's columns do).
    """

    def __init__(self, table: str, names: Sequence[str], eligible: Sequence[bool]) -> None:
        self.table = table
        self.names = list(names)
        unique = {n for n in names if list(names).count(n) == 1}
        self.eligible = [e and n in unique for n, e in zip(names, eligible, strict=True)]
        self.positions: list[int] | None = None
        self.builder = TypedBatchBuilder(table)

    def arrays(self, columns: Sequence[Sequence[Any]]) -> dict[int, pa.Array]:
        """The typed arrays of one batch's columns (values by column), by column position."""
        if not columns or not len(columns[0]):
            return {}
        if self.positions is None:
            self.positions = [i for i, ok in enumerate(self.eligible) if ok
                              and any(v is not None for v in columns[i]) and all(_scalar(v) for v in columns[i])]
        if not self.positions:
            return {}
        for i in self.positions:
            odd = next((v for v in columns[i] if v is not None and not isinstance(v, _SCALARS)), None)
            if odd is not None:
                kind = self.builder.kinds.get(self.names[i])
                raise ExtractError(f"{self.table}: column {self.names[i]!r} held {KIND_NAMES.get(kind or '', 'no')} "
                                   f"values and then {type(odd).__name__} ({_excerpt(odd)}) after row "
                                   f"{self.builder.records}: set column_types: {{{self.names[i]}: text}}")
        rows = [{self.names[i]: columns[i][r] for i in self.positions} for r in range(len(columns[0]))]
        try:
            batch = self.builder.build(rows)
        except SchemaDriftError as exc:  # a sql table has no variant columns: column_types is the way out
            exc.args = (f"type change in {exc.table}.{exc.column} at {exc.where.replace('record', 'row')}: earlier "
                        f"rows gave {exc.old_type}, this one gives {exc.new_type} ({_excerpt(exc.value)}). Nothing "
                        f"was loaded. Set column_types: {{{exc.column}: text}} (or fix the source's values)",)
            raise
        return {i: batch.column(self.names[i]) for i in self.positions}
