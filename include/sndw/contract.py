"""The schema contract of a table (evolve, freeze, discard_columns) and the safe widenings of a column.

``evolve`` (the default) adds new columns and widens changed ones in place; ``freeze`` fails a load
whose data brings a new or changed column, naming it, before anything is written; ``discard_columns``
loads the columns the table has and records the others as discarded. A table's first load creates
it under any contract.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from sndw.errors import PermanentError

if TYPE_CHECKING:
    from sndw.warehouse import LoadSpec


class SchemaContractError(PermanentError):
    """The data breaks a table's ``schema_contract: freeze``: a new or changed column."""

    def __init__(self, table: str, column: str, what: str) -> None:
        self.table = table
        self.column = column
        super().__init__(
            f"{table}: schema_contract 'freeze': column {column!r} {what}; nothing was loaded and the table is "
            "unchanged. Change the warehouse table yourself, or set schema_contract: evolve (or discard_columns) "
            "on this table")


def apply_contract(spec: LoadSpec, schema: pa.Schema, existing: dict[str, str]) -> tuple[pa.Schema, list[dict[str, Any]]]:
    """The schema the table is evolved with under ``spec.schema_contract``, and the columns it
    discards (as schema changes for the audit). ``existing``: the table's columns before this load
    (empty: the table is new, and any contract creates it)."""
    from sndw.warehouse import _declared, plan_column, warehouse_type

    contract = getattr(spec, "schema_contract", "evolve")
    if contract == "evolve" or not existing:
        return schema, []
    new = [f for f in schema if f.name not in existing]
    if contract == "freeze":
        if new:
            raise SchemaContractError(spec.qualified, new[0].name, f"is new ({warehouse_type(new[0])}) in the data"
                                      + (f", and so are {', '.join(f.name for f in new[1:])}" if new[1:] else ""))
        for f in schema:
            planned = plan_column(spec.qualified, f.name, existing[f.name], f.type, _declared(f))
            if isinstance(planned, str):
                raise SchemaContractError(spec.qualified, f.name, f"changed: the warehouse column is {existing[f.name]} "
                                          f"and the data needs {planned}")
        return schema, []
    kept = pa.schema([f for f in schema if f.name in existing], metadata=schema.metadata)
    return kept, [{"change": "discard_column", "column": f.name, "type": warehouse_type(f)} for f in new]


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
