"""Type planning: the warehouse column type of a lake column, and how a lake column is written
into an existing warehouse column (or the wider type it needs). Below the lake, the warehouse and
the transforms, which all ask it; it imports none of them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from sndw.errors import SchemaConflictError

# Field metadata of a PostgreSQL source's column: the warehouse type to create (format_type
# spelling, e.g. b"numeric(10,2)", b"text[]", b"tsvector"); without it the lake type decides.
PG_TYPE_KEY = b"sndw.pg_type"


def pg_type_for(data_type: pa.DataType) -> str:
    """The warehouse column type for a lake column type."""
    t = data_type
    if isinstance(t, pa.BaseExtensionType):
        return "jsonb" if t.extension_name == "arrow.json" else pg_type_for(t.storage_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "numeric" if t == pa.uint64() else "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone"
    if pa.types.is_time(t):
        return "time without time zone"
    if pa.types.is_duration(t):
        return "interval"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_nested(t):  # list, large list, struct, map
        return "jsonb"
    return "text"


def warehouse_type(fld: pa.Field) -> str:
    """The warehouse column type of a lake field: the source's own type when the extract recorded
    it (PostgreSQL sources, ``PG_TYPE_KEY``), else the one its lake type maps to."""
    declared = (fld.metadata or {}).get(PG_TYPE_KEY)
    return declared.decode() if declared else pg_type_for(fld.type)


def declared_type(fld: pa.Field) -> str | None:
    value = (fld.metadata or {}).get(PG_TYPE_KEY)
    return value.decode() if value else None


def base_pg_type(pg_type: str) -> str:
    """The type without its modifiers: ``timestamp(3) with time zone`` -> ``timestamp with time zone``."""
    return " ".join(re.sub(r"\([^)]*\)", " ", pg_type).split())


# What incoming lake types each warehouse type accepts without change, and how to cast them so the
# binary COPY sees the exact width PostgreSQL expects.
_INT_TARGET = {"bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16()}
_FLOAT_TARGET = {"double precision": pa.float64(), "real": pa.float32()}
_TEXT_TYPES = {"text", "character varying", "character", "name", "citext"}


@dataclass(frozen=True)
class ColumnPlan:
    """How one lake column is written into an existing warehouse column."""

    name: str
    pg_type: str
    arrow_type: pa.DataType  # what the batch is cast to before encoding
    output: str  # "native", "jsonb" or "json-text" (nested values written as JSON)


def is_json_like(t: pa.DataType) -> bool:
    if isinstance(t, pa.BaseExtensionType):
        return t.extension_name == "arrow.json"
    return pa.types.is_nested(t)


def plan_column(table: str, name: str, pg_type: str, incoming: pa.DataType,
                declared: str | None = None) -> ColumnPlan | str:
    """The cast for ``incoming`` into a column of ``pg_type``, or the wider type the column needs.

    ``declared`` is the source's own type of a column a PostgreSQL source carried as text (say
    ``tsvector``): it is loaded as text through a staging table and cast there ("staged").
    Raises SchemaConflictError when the change cannot be made safely.
    """
    base = base_pg_type(pg_type)
    t = incoming
    if pa.types.is_null(t):
        return ColumnPlan(name, pg_type, pa.null(), "null")
    wider = safe_widening(pg_type, t, declared)
    if wider is not None:
        return wider
    if (declared and pa.types.is_string(t) and base not in _TEXT_TYPES and base not in ("json", "jsonb")):
        if declared.replace(" ", "") != pg_type.replace(" ", ""):
            raise SchemaConflictError(table, name, pg_type, declared)
        return ColumnPlan(name, pg_type, pa.string(), "staged")
    if declared and base in ("json", "jsonb") and pa.types.is_string(t):
        return ColumnPlan(name, pg_type, pa.string(), "jsonb" if base == "jsonb" else "json-text")
    if base in _TEXT_TYPES:
        if is_json_like(t):
            return ColumnPlan(name, pg_type, pa.string(), "json-text")
        return ColumnPlan(name, pg_type, pa.string(), "native")
    if base in ("jsonb", "json"):
        if is_json_like(t):
            return ColumnPlan(name, pg_type, pa.string(), "jsonb" if base == "jsonb" else "json-text")
    elif base in _INT_TARGET:
        if pa.types.is_integer(t) and t != pa.uint64():
            return ColumnPlan(name, pg_type, _INT_TARGET[base], "native")
        if pa.types.is_decimal(t) or t == pa.uint64():
            return "numeric"  # BIGINT -> NUMERIC keeps every value exactly
    elif base in _FLOAT_TARGET:
        if base == "real" and pa.types.is_floating(t) and t.bit_width > 32:
            # A double cast to real is rounded (0.30000000000000004 -> 0.3) and Arrow's cast does not
            # object; every real is exactly a double, so the column widens instead.
            return "double precision"
        if pa.types.is_floating(t) or pa.types.is_integer(t):  # integers: a cast that checks exactness
            return ColumnPlan(name, pg_type, _FLOAT_TARGET[base], "native")
    elif base == "numeric":
        if pa.types.is_decimal256(t):  # no binary encoder for it: its exact text, cast by PostgreSQL
            return ColumnPlan(name, pg_type, pa.string(), "staged")
        if pa.types.is_decimal(t):
            return ColumnPlan(name, pg_type, t, "native")
        if pa.types.is_integer(t):
            return ColumnPlan(name, pg_type, pa.decimal128(20, 0), "native")
    elif base == "boolean":
        if pa.types.is_boolean(t):
            return ColumnPlan(name, pg_type, pa.bool_(), "native")
    elif base == "date":
        if pa.types.is_date(t):
            return ColumnPlan(name, pg_type, pa.date32(), "native")
    elif base in ("timestamp with time zone", "timestamp without time zone"):
        if pa.types.is_timestamp(t) and t.tz is None and base == "timestamp without time zone":
            return ColumnPlan(name, pg_type, pa.timestamp("us"), "native")  # wall-clock time as is
        # Instants into wall-clock times of an unknown zone would be written as UTC clock times
        # beside them, and a source's wall-clock times (a column retyped to `timestamp`) into instants
        # would be read as UTC: changes of meaning no cast can undo (refused below, by name).
        wall_clock = declared is not None and base_pg_type(declared) == "timestamp without time zone"
        if pa.types.is_timestamp(t) and not (t.tz is not None and base == "timestamp without time zone") \
                and not (wall_clock and base == "timestamp with time zone"):
            return ColumnPlan(name, pg_type, pa.timestamp("us", tz="UTC"), "native")
        if pa.types.is_date(t):
            return ColumnPlan(name, pg_type, pa.timestamp("us", tz="UTC"), "native")
    elif base == "time without time zone":
        if pa.types.is_time(t):
            return ColumnPlan(name, pg_type, pa.time64("us"), "native")
    elif base == "interval":
        if pa.types.is_duration(t):
            return ColumnPlan(name, pg_type, pa.duration("us"), "native")
    elif base == "bytea":
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return ColumnPlan(name, pg_type, pa.binary(), "native")
    raise SchemaConflictError(table, name, pg_type, f"{incoming} ({pg_type_for(incoming)})")


_INTEGERS = {"smallint": 16, "integer": 32, "bigint": 64}
_VARCHAR = re.compile(r"^(?:character varying|varchar)(?:\((\d+)\))?$")
_NUMERIC = re.compile(r"^(?:numeric|decimal)(?:\((\d+)(?:,\s*(\d+))?\))?$")


def safe_widening(pg_type: str, incoming: pa.DataType, declared: str | None) -> str | None:
    """The wider type a warehouse column of ``pg_type`` needs for data of the source type
    ``declared`` (a PostgreSQL source's own type) or, for numerics, the lake type ``incoming``;
    None when it holds them as it is. Only widenings that keep every stored value: integer to a
    larger integer, varchar(n) to a longer varchar or text, numeric to a larger precision (and
    scale: digits are never cut)."""
    current = pg_type.strip().lower()
    wanted = (declared or "").strip().lower()
    if current in _INTEGERS and wanted in _INTEGERS and _INTEGERS[wanted] > _INTEGERS[current]:
        return wanted
    varchar = _VARCHAR.match(current)
    if varchar and varchar.group(1) and wanted:
        if wanted == "text":
            return "text"
        longer = _VARCHAR.match(wanted)
        if longer and (longer.group(1) is None or int(longer.group(1)) > int(varchar.group(1))):
            return wanted if longer.group(1) else "character varying"
    numeric = _NUMERIC.match(current)
    if numeric and numeric.group(1):
        precision, scale = int(numeric.group(1)), int(numeric.group(2) or 0)
        other = _NUMERIC.match(wanted) if wanted else None
        if other is not None and other.group(1) is None:
            return "numeric"  # unconstrained: holds any value
        if other is not None:
            p2, s2 = int(other.group(1)), int(other.group(2) or 0)
        elif not wanted and pa.types.is_decimal(incoming):
            p2, s2 = incoming.precision, incoming.scale
        else:
            return None
        new_scale = max(scale, s2)
        new_precision = max(precision - scale, p2 - s2) + new_scale
        if (new_precision, new_scale) != (precision, scale) and new_precision <= 1000:
            return f"numeric({new_precision},{new_scale})"
    return None
