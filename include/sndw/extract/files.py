"""File sources: CSV, JSON, NDJSON and Parquet from a local path or glob, streamed as batches."""

from __future__ import annotations

import codecs
import csv
import decimal
import glob
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from sndw.config import CsvOptions, FileTable
from sndw.errors import SourceDataError
from sndw.extract import (
    JSON_TYPE,
    MAX_NUMERIC_DIGITS,
    TypedBatchBuilder,
    batched,
    convert,
    exact_float,
    fits_numeric,
    flatten_record,
    get_path,
    kind_array,
    kind_field,
    special_numeric,
    to_json_text,
    too_deep_message,
)
from sndw.lake import SOURCE_FILE_KEY
from sndw.naming import normalize_identifier, unique_column_names

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
    # one builder for every file of a glob: a JSON field's type holds across the files, as across pages
    builder = TypedBatchBuilder(table.name, on_type_change=table.on_type_change, column_types=table.column_types)
    for path in paths:
        log.info("%s: reading %s", table.name, path)
        origin = {SOURCE_FILE_KEY: str(path).encode()}  # named by the lake's checks if a type conflicts
        try:
            for batch in reader(path, table, builder):
                yield batch.replace_schema_metadata({**(batch.schema.metadata or {}), **origin})
        except (pl.exceptions.PolarsError, pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceDataError(f"{table.name}: cannot read {path}: {exc}") from exc


def _utf8_copy(path: Path, encoding: str) -> Path:
    """Transcode a file to UTF-8 in a temporary file, streaming (polars reads UTF-8 only)."""
    handle, tmp = tempfile.mkstemp(suffix=".csv", prefix="sndw-utf8-")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as out, \
            codecs.open(str(path), "r", encoding=encoding, errors="strict") as src:
        shutil.copyfileobj(src, out, 1 << 20)
    return Path(tmp)


# ------------------------------------------------------------------------- exact CSV inference

# What a CSV value must look like for polars' inferred type to hold it without losing a character
# (value for value): no leading zero (zip 01234), sign (+1), spaces or -0 on integers; ISO dates only
# (polars reads 24/01/02 as year 2 and 02/01/2024 as 2 January); at most microseconds.
_EXACT_TEXT = {
    "integer": r"^(0|-?[1-9][0-9]*)$",
    "float": r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^-?(?i:nan|inf|infinity)$",
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
    "datetime": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?$",
    "datetime_tz": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})$",
    "time": r"^[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?$",
    "boolean": r"^(?i:true|false)$",
}
_LEADING_ZERO = r"^-?0[0-9]"


def _shape(dtype: pl.DataType) -> str | None:
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime_tz" if dtype.time_zone else "datetime"
    if dtype == pl.Time:
        return "time"
    if dtype == pl.Boolean:
        return "boolean"
    return None


def _float_text_is_exact(text: str) -> bool:
    """Whether the float polars reads from ``text`` is the number written (``0.1``, ``1.50``; not
    ``0.1000000000000000055511151231257827`` or ``1e400``)."""
    if text.lower().lstrip("-") in ("nan", "inf", "infinity"):
        return True
    if len(text) <= 15 and "e" not in text and "E" not in text:
        return True  # at most 15 significant digits: every such decimal is its own double (DBL_DIG)
    number = float(text)
    return math.isfinite(number) and decimal.Decimal(repr(number)) == decimal.Decimal(text)


def exact_csv_schema(raw: pl.LazyFrame, inferred: Mapping[str, pl.DataType],
                     declared: Mapping[str, str]) -> tuple[dict[str, pl.DataType], set[str]]:
    """The schema that reads every value exactly, and the integer columns wider than int64.

    ``raw`` is the file read as text. A column keeps polars' inferred type only when every value is
    written as that type prints it; else it stays text. Integers beyond int64 are read as text and
    become numeric (decimal128(38, 0)) when every value has at most 38 digits. Columns named in
    ``declared`` are read as text and converted to their declared type afterwards.
    """
    text: pl.DataType = pl.String()
    schema = {name: (text if name in declared else dtype) for name, dtype in inferred.items()}
    checks: list[pl.Expr] = []
    floats: list[str] = []
    for name, dtype in schema.items():
        shape = _shape(dtype)
        if shape is None or dtype == pl.String:
            continue
        column = pl.col(name)
        bad = ~column.str.contains(_EXACT_TEXT[shape])
        if shape == "float":
            bad = bad | column.str.contains(_LEADING_ZERO)
            floats.append(name)
        checks.append(bad.fill_null(False).any().alias(f"bad:{name}"))
        if shape == "integer":
            checks.append(column.str.strip_chars_start("-").str.len_bytes().max().alias(f"digits:{name}"))
    if not checks:
        return schema, set()
    found = raw.select(checks).collect().row(0, named=True)
    wide: set[str] = set()
    for name, dtype in list(schema.items()):
        if found.get(f"bad:{name}"):
            schema[name] = text
        elif name in floats:
            texts = raw.select(pl.col(name).drop_nulls().unique()).collect().to_series()
            if not all(_float_text_is_exact(t) for t in texts):
                schema[name] = text
        elif dtype.is_integer() and dtype != pl.Int64:
            schema[name] = text
            if (found.get(f"digits:{name}") or 0) <= MAX_NUMERIC_DIGITS:
                wide.add(name)
    return schema, wide


def _csv(path: Path, table: FileTable, builder: TypedBatchBuilder) -> Iterator[pa.RecordBatch]:
    options: CsvOptions = table.csv
    source = path
    is_utf8 = codecs.lookup(options.encoding).name == "utf-8"
    if not is_utf8:
        source = _utf8_copy(path, options.encoding)
    # null_values names exactly the values read as NULL: an empty field only when it lists ""
    empty_is_null = "" in options.null_values
    common: dict[str, Any] = {
        "separator": options.delimiter, "quote_char": options.quote_char, "has_header": options.has_header,
        "skip_rows": options.skip_rows, "null_values": options.null_values, "empty_string_is_null": empty_is_null,
        "encoding": "utf8", "raise_if_empty": False,
    }
    try:
        if _lone_cr(source):
            copy = _lf_copy(source, options.quote_char)
            if source != path:
                os.unlink(source)
            source = copy
        short = ({}, 0) if empty_is_null else _short_rows(source, options)
        # whole-file inference: a late odd value must not fail the read; an empty field that is not
        # NULL is caught by the exact check below (it is no number), a missing one is NULL
        inferred = pl.scan_csv(source, infer_schema_length=None, try_parse_dates=True,
                               **{**common, "empty_string_is_null": True}).collect_schema()
        found = list(inferred)
        names = _header_names(source, options, found) or found
        declared = _declared(table, names)
        raw = _missing_as_null(pl.scan_csv(source, infer_schema=False, **common), short, f"{table.name}: {path}")
        schema, wide = exact_csv_schema(raw, dict(inferred), {f: declared[n] for f, n in zip(found, names, strict=True)
                                                              if n in declared})
        frame = _missing_as_null(pl.scan_csv(source, schema=schema, **common), short, f"{table.name}: {path}")
        if names != found:
            frame = frame.rename(dict(zip(found, names, strict=True)))
            wide = {n for f, n in zip(found, names, strict=True) if f in wide}
        row = 0
        for chunk in frame.collect_batches(chunk_size=table.batch_rows):
            for batch in chunk.to_arrow().to_batches():
                yield builder.name_columns(_typed(batch, table, path, row, declared, wide))
                row += batch.num_rows
    except pl.exceptions.PolarsError as exc:
        problem = csv_problem(source, options) or _stray_quote(source, options)
        if problem is None:
            raise
        raise SourceDataError(f"{table.name}: cannot read {path}: {problem}") from exc
    finally:
        if source != path:
            os.unlink(source)


def _short_rows(path: Path, options: CsvOptions) -> tuple[dict[int, int], int]:
    """The data rows (from 0) with fewer fields than the first record (a blank line has none) with
    how many they have, and the number of data rows. Polars reads a missing field as "" when an empty
    field is not NULL (``null_values`` without ""), like an empty one; a missing field is NULL."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as handle:
        if options.quote_char:
            reader = csv.reader(handle, delimiter=options.delimiter, quotechar=options.quote_char)
        else:
            reader = csv.reader(handle, delimiter=options.delimiter, quoting=csv.QUOTE_NONE)
        records = itertools.islice(reader, options.skip_rows, None)
        first = next(records, None)
        if first is None:
            return {}, 0
        short: dict[int, int] = {}
        row = -1
        for row, record in enumerate(records if options.has_header else itertools.chain([first], records)):
            if len(record) < len(first):
                short[row] = len(record)
        return short, row + 1


def _missing_as_null(frame: pl.LazyFrame, short: tuple[dict[int, int], int], where: str) -> pl.LazyFrame:
    """``frame`` with the fields that short rows lack (see _short_rows) NULL."""
    rows, count = short
    if not rows:
        return frame
    if frame.select(pl.len()).collect().item() != count:  # both readers must see the same rows
        raise SourceDataError(f"{where}: cannot tell the missing fields of its short rows from empty ones: set csv "
                              'null_values to [""] (an empty field is NULL) or give every row all its fields')
    names = frame.collect_schema().names()
    index = "row"
    while index in names:
        index += "_"
    fixed = [pl.when(pl.col(index).is_in([r for r, n in rows.items() if n <= j])).then(None)
             .otherwise(pl.col(name)).alias(name) for j, name in enumerate(names)]
    return frame.with_row_index(index).select(fixed)


_LONE_CR = re.compile(r"\r(?!\n)")


def _lone_cr(path: Path) -> bool:
    """Whether the file holds a CR not followed by LF: a line end of old Mac files, or a CR in a
    quoted value. Polars ends lines at LF only: it read ``id,name<CR>1,a<CR>2,b<CR>`` as a header and no rows."""
    with open(path, "rb") as handle:
        carry = b""
        while chunk := handle.read(1 << 20):
            data = carry + chunk
            carry = b"\r" if data.endswith(b"\r") else b""  # the next chunk may start with its LF
            if carry:
                data = data[:-1]
            if data.count(b"\r") != data.count(b"\r\n"):
                return True
        return carry == b"\r"


def _lf_copy(path: Path, quote: str | None) -> Path:
    """A UTF-8 copy of a CSV file whose bare CR line ends are LF, streaming; a CR inside a quoted
    value stays as it is (it is part of the value)."""
    handle, tmp = tempfile.mkstemp(suffix=".csv", prefix="sndw-lf-")
    inside = False
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as out, \
            open(path, encoding="utf-8", newline="") as src:
        while chunk := src.read(1 << 20):
            while chunk.endswith("\r"):  # decide on a CR with the character after it
                more = src.read(1)
                if not more:
                    break
                chunk += more
            if not quote:
                out.write(_LONE_CR.sub("\n", chunk))
                continue
            parts = chunk.split(quote)
            for i, part in enumerate(parts):
                if i:
                    inside = not inside
                if not inside:
                    parts[i] = _LONE_CR.sub("\n", part)
            out.write(quote.join(parts))
    return Path(tmp)


def _header_names(path: Path, options: CsvOptions, found: list[str]) -> list[str] | None:
    """The header's names when some repeat: the repeats renamed as the lake names columns (``id,a,a``
    gives ``a_2``; polars says ``a_duplicated_0``); None when no name repeats. ``found``: polars' names."""
    if not options.has_header or not any("_duplicated_" in name for name in found):
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        if options.quote_char:
            reader = csv.reader(handle, delimiter=options.delimiter, quotechar=options.quote_char)
        else:
            reader = csv.reader(handle, delimiter=options.delimiter, quoting=csv.QUOTE_NONE)
        header = next(itertools.islice(reader, options.skip_rows, None), None)
    if not header or len(set(header)) == len(header) or len(header) != len(found):
        return None
    unique = unique_column_names(header)
    return [name if name not in header[:i] else unique[i] for i, name in enumerate(header)]


def _stray_quote(path: Path, options: CsvOptions) -> str | None:
    """The first field holding the quote character without being quoted (``5" screen``), by its
    line. Python's reader keeps such a field as text; polars takes the quote for the start of a
    quoted field and fails far from it ("expected 2 rows, actual 3 rows")."""
    quote, delimiter = options.quote_char, options.delimiter
    if not quote:
        return None
    line, field_start, quoted, in_field = 1, True, False, ""
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == quote and text[i + 1:i + 2] == quote:
                i += 1
            elif char == quote:
                quoted = False
        elif char == delimiter or char in "\r\n":
            field_start, in_field = True, ""
        elif field_start and char == quote:
            quoted, field_start = True, False
        elif char == quote:
            rest = re.split(f"[{re.escape(delimiter)}\r\n]", text[i:], maxsplit=1)[0]
            shown = (in_field + rest)[:40]
            return (f"line {line}: the field {shown!r} holds the quote character {quote} without being quoted: "
                    f"quote the field, the quote doubled inside it ({quote}{shown.replace(quote, quote * 2)}{quote}), "
                    "or set csv quote_char to another character or to null")
        else:
            field_start = False
            in_field += char
        if char == "\n" or (char == "\r" and text[i + 1:i + 2] != "\n"):
            line += 1
        i += 1
    return None


def csv_problem(path: Path, options: CsvOptions) -> str | None:
    """The first record that breaks a CSV file, by its line number, for the error message: polars
    says "found more fields than defined in 'Schema'" or "expected 0 rows, actual 1 rows" without
    a line. Read again with Python's own reader, in strict mode; None when it finds nothing."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a long quoted field is no error here
    with open(path, encoding="utf-8", newline="") as handle:
        if options.quote_char:
            reader = csv.reader(handle, delimiter=options.delimiter, quotechar=options.quote_char, strict=True)
        else:
            reader = csv.reader(handle, delimiter=options.delimiter, quoting=csv.QUOTE_NONE, strict=True)
        width: int | None = None
        records = 0
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                if "end of data" in str(exc) or "EOF" in str(exc):
                    return f"line {line}: a quoted field opened on this line is not closed before the end of the file"
                return f"line {line}: {exc}"
            records += 1
            if records <= options.skip_rows or not record:
                continue
            if width is None:
                width = len(record)
                continue
            if len(record) > width:
                first = "the header" if options.has_header else "the first row"
                return f"line {line}: {len(record)} fields where {first} has {width}"


def _declared(table: FileTable, names: list[str]) -> dict[str, str]:
    """The declared kind of each column of a file (``column_types`` keys match normalised names)."""
    kinds = {normalize_identifier(k): v for k, v in table.column_types.items()}
    return {name: kinds[normalize_identifier(name)] for name in names if normalize_identifier(name) in kinds}


def _typed(batch: pa.RecordBatch, table: FileTable, path: Path, first_row: int,
           declared: Mapping[str, str], wide: set[str]) -> pa.RecordBatch:
    """Declared columns converted to their type, wide integer columns to decimal128(38, 0)."""
    if not declared and not wide:
        return batch
    arrays, fields = [], []
    for fld, array in zip(batch.schema, batch.columns, strict=True):
        name = fld.name
        if name in declared:
            array = declared_array(declared[name], array, _describe(table, path, first_row, name, declared[name]))
            fld = kind_field(name, declared[name], array)
        elif name in wide:
            array = array.cast(pa.decimal128(MAX_NUMERIC_DIGITS, 0))
            fld = fld.with_type(array.type)
        arrays.append(array)
        fields.append(fld)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=batch.schema.metadata))


def _describe(table: FileTable, path: Path, first_row: int, column: str, kind: str) -> Callable[[int, Any], str]:
    def describe(index: int, value: Any) -> str:
        shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:60]}..."
        return (f"{table.name}: {path} row {first_row + index + 1}, column {column!r}: value {shown} is not "
                f"a {kind} (column_types declares {column}: {kind})")

    return describe


# How a text value reads as each declared kind (exactly; booleans as PostgreSQL spells them).
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_NUMERIC_WORDS = re.compile(r"^(?i:nan|[+-]?inf|[+-]?infinity)$")
_BOOLEANS = {"true": True, "t": True, "yes": True, "y": True, "on": True, "1": True,
             "false": False, "f": False, "no": False, "n": False, "off": False, "0": False}
_MISFIT = object()


def _from_text(kind: str, text: str) -> Any:
    if kind == "bigint":
        if _INTEGER.match(text):
            whole = int(text)
            return whole if -(2**63) <= whole < 2**63 else _MISFIT
        return _MISFIT
    if kind == "double":
        if _NUMBER.match(text) or text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            number = float(text)  # 1e400 is not infinity: only the words nan/inf read as those
            return number if math.isfinite(number) or not _NUMBER.match(text) else _MISFIT
        return _MISFIT
    if kind == "numeric":
        if _NUMERIC_WORDS.match(text):  # PostgreSQL's numeric holds them: NaN, Infinity, -inf
            return decimal.Decimal(text)
        if _NUMBER.match(text):
            exact = decimal.Decimal(text)
            return exact if fits_numeric(exact) else _MISFIT
        return _MISFIT
    if kind == "boolean":
        return _BOOLEANS.get(text.strip().lower(), _MISFIT)
    if kind == "json":
        try:
            json.loads(text)
        except ValueError:
            return _MISFIT
        return text  # the JSON text itself: "null" is JSON null, not a missing value
    return text


def declared_array(kind: str, array: pa.Array, describe: Callable[[int, Any], str]) -> pa.Array:
    """``array`` as a column of the declared ``kind``; a value that does not fit is an error
    (``describe`` names where), never NULL."""
    if kind == "text":
        # strings as they are; other values as Arrow prints them (integers, dates: their usual text)
        return array if pa.types.is_string(array.type) else array.cast(pa.string())
    values = array.to_pylist()
    fitted: list[Any] = []
    for index, value in enumerate(values):
        if value is None:
            fitted.append(None)
            continue
        if isinstance(value, str):
            out = _from_text(kind, value)
        else:
            out = convert(kind, value)
            out = to_json_text(out) if kind == "json" else out
            special = special_numeric(value) if out is _MISFIT and kind == "numeric" else None
            out = out if special is None else special
        if out is _MISFIT or (kind == "numeric" and isinstance(out, decimal.Decimal) and out.is_finite()
                              and not fits_numeric(out)):
            raise SourceDataError(describe(index, value))
        fitted.append(out)
    result = pa.array(fitted, pa.string()).cast(JSON_TYPE) if kind == "json" else kind_array(kind, fitted)
    if result is None:  # decimals that fit numeric(38) one by one but not together
        raise SourceDataError(describe(0, values[0]).split(": value")[0] + ": values need more than 38 digits "
                              "together (digits before the point plus after it): declare it text")
    return result


def _records(path: Path, table: FileTable, builder: TypedBatchBuilder,
             records: Iterator[Any]) -> Iterator[pa.RecordBatch]:
    """JSON records through the same typed builder as HTTP pages, so a type change between records
    (or files) is caught the same way whatever ``batch_rows`` is."""
    builder.start(str(path))
    number = 0
    for chunk in batched(records, table.batch_rows):
        rows = []
        for record in chunk:
            number += 1
            if not isinstance(record, Mapping):
                raise SourceDataError(f"{table.name}: {path} record {number} is not an object: "
                                      f"{type(record).__name__}")
            rows.append(flatten_record(record, where=f"{table.name}: {path} record {number}"))
        yield builder.build(rows)


def _json(path: Path, table: FileTable, builder: TypedBatchBuilder) -> Iterator[pa.RecordBatch]:
    with open(path, encoding="utf-8-sig") as handle:  # a leading byte order mark is skipped, as in CSV files
        try:
            document = json.load(handle, parse_float=exact_float)
        except RecursionError:
            raise SourceDataError(too_deep_message(f"{table.name}: {path}")) from None
    records = get_path(document, table.records_path)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise SourceDataError(f"{table.name}: {path} holds no list of records")
    yield from _records(path, table, builder, iter(records))


def _ndjson(path: Path, table: FileTable, builder: TypedBatchBuilder) -> Iterator[pa.RecordBatch]:
    def rows() -> Iterator[Any]:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line, parse_float=exact_float)
                    except json.JSONDecodeError as exc:
                        raise SourceDataError(f"{table.name}: {path} line {number}: {exc.msg}") from exc
                    except RecursionError:
                        raise SourceDataError(too_deep_message(f"{table.name}: {path} line {number}")) from None

    yield from _records(path, table, builder, rows())


def _parquet(path: Path, table: FileTable, builder: TypedBatchBuilder) -> Iterator[pa.RecordBatch]:
    parquet = pq.ParquetFile(path, pre_buffer=False)
    try:
        declared = _declared(table, parquet.schema_arrow.names)
        row = 0
        for batch in parquet.iter_batches(batch_size=table.batch_rows):
            yield builder.name_columns(_typed(batch, table, path, row, declared, set()))
            row += batch.num_rows
    finally:
        parquet.close()


_READERS: dict[str, Callable[[Path, FileTable, TypedBatchBuilder], Iterator[pa.RecordBatch]]] = {
    "csv": _csv, "json": _json, "ndjson": _ndjson, "parquet": _parquet}
