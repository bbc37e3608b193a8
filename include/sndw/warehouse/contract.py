"""The schema contract of a table (evolve, freeze, discard_columns); the safe widenings of a column
are type planning (``sndw.typeplan.safe_widening``).

``evolve`` (the default) adds new columns and widens changed ones in place; ``freeze`` fails a load
whose data brings a new or changed column, naming it, before anything is written; ``discard_columns``
loads the columns the table has and records the others as discarded. A table's first load creates
it under any contract.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from sndw.errors import PermanentError
from sndw.typeplan import declared_type, plan_column, warehouse_type
from sndw.warehouse.spec import LoadSpec


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
    contract = getattr(spec, "schema_contract", "evolve")
    if contract == "evolve" or not existing:
        return schema, []
    new = [f for f in schema if f.name not in existing]
    if contract == "freeze":
        if new:
            raise SchemaContractError(spec.qualified, new[0].name, f"is new ({warehouse_type(new[0])}) in the data"
                                      + (f", and so are {', '.join(f.name for f in new[1:])}" if new[1:] else ""))
        for f in schema:
            planned = plan_column(spec.qualified, f.name, existing[f.name], f.type, declared_type(f))
            if isinstance(planned, str):
                raise SchemaContractError(spec.qualified, f.name, f"changed: the warehouse column is {existing[f.name]} "
                                          f"and the data needs {planned}")
        return schema, []
    kept = pa.schema([f for f in schema if f.name in existing], metadata=schema.metadata)
    return kept, [{"change": "discard_column", "column": f.name, "type": warehouse_type(f)} for f in new]
