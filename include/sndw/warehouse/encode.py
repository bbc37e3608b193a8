"""Encoding lake batches for PostgreSQL's binary COPY: casts to the column types, NUL in text,
nested values as JSON, dates and times from PostgreSQL's epoch."""

from __future__ import annotations

from typing import Any

import pgpq
import pyarrow as pa
import pyarrow.compute as pc
from pgpq import encoders as pgpq_encoders
from pgpq import schema as pgpq_schema

from sndw.errors import LoadError
from sndw.typeplan import ColumnPlan, is_json_like

NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"  # PostgreSQL text cannot hold NUL: it becomes U+FFFD, counted in the log


def _json_text(array: pa.Array) -> pa.Array:
    """Nested values (lists, structs, maps) as JSON text, nulls kept."""
    if isinstance(array.type, pa.BaseExtensionType):
        return array.storage.cast(pa.string())
    import polars as pl  # only here: importing it cost every load process 0.15 s

    series = pl.Series("v", array)
    if series.dtype == pl.Struct:
        encoded = series.struct.json_encode()
    else:
        wrapped = pl.DataFrame({"v": series}).select(pl.struct("v").struct.json_encode())["v"]
        encoded = wrapped.str.slice(5, wrapped.str.len_chars() - 6)  # strip the {"v": ... } wrapper
    encoded = pl.select(pl.when(series.is_null()).then(None).otherwise(encoded)).to_series()
    return encoded.to_arrow().cast(pa.string())


def _may_hold_nul(array: pa.Array) -> bool:
    """A quick scan of the raw character buffer (one pass, no per-value work); may say yes wrongly
    for a sliced array, never no wrongly."""
    buffers = array.buffers()
    data = buffers[2] if len(buffers) > 2 else None
    if data is None or data.size == 0:
        return False
    return bool(pc.min(pa.Array.from_buffers(pa.uint8(), data.size, [None, data])).as_py() == 0)


def _replace_nul(array: pa.Array, escaped: bool) -> tuple[pa.Array, int]:
    if not escaped and not _may_hold_nul(array):
        return array, 0
    hits = pc.sum(pc.match_substring(array, NUL)).as_py() or 0
    if hits:
        array = pc.replace_substring(array, NUL, NUL_REPLACEMENT)
    if escaped:  # jsonb also rejects the escaped form
        more = pc.sum(pc.match_substring(array, "\\u0000")).as_py() or 0
        if more:
            array = pc.replace_substring(array, "\\u0000", "\\ufffd")
            hits += more
    return array, hits


_DAYS_2000, _MICROS_2000 = 10_957, 946_684_800_000_000


def _encoded_type(plan: ColumnPlan) -> pa.DataType:
    """What a column is encoded from: dates and timestamps as PostgreSQL's own integers."""
    if plan.output in ("json-text", "jsonb", "staged"):
        return pa.string()
    if plan.output == "native" and pa.types.is_date32(plan.arrow_type):
        return pa.int32()
    if plan.output == "native" and pa.types.is_timestamp(plan.arrow_type):
        return pa.int64()
    return plan.arrow_type


def _postgres_epoch(name: str, column: pa.Array, storage: pa.DataType, offset: int) -> pa.Array:
    """Days or microseconds since 1970 as PostgreSQL's since 2000, binary COPY's wire form. The
    type's max and min values are the lake's infinities: they become PostgreSQL's (its own max and
    min), so 'infinity' and '-infinity' load exactly, with no text detour."""
    raw = column.view(storage)
    top, bottom = pa.scalar((1 << (storage.bit_width - 1)) - 1, storage), pa.scalar(-(1 << (storage.bit_width - 1)), storage)
    bounds = pc.min_max(raw)
    # The one finite value that the shift would make PostgreSQL's -infinity: out of its range
    # (year -290,000), refused as any other value out of range is, not loaded as -infinity.
    collides = bottom.as_py() + offset
    try:
        if bounds["max"].as_py() != top.as_py() and bounds["min"].as_py() != bottom.as_py():
            if bounds["min"].as_py() == collides:
                raise pa.ArrowInvalid(f"{bounds['min'].as_py()} is PostgreSQL's -infinity once shifted to its epoch")
            return pc.subtract_checked(raw, pa.scalar(offset, storage))
        if pc.any(pc.equal(raw, pa.scalar(collides, storage))).as_py():
            raise pa.ArrowInvalid(f"{collides} is PostgreSQL's -infinity once shifted to its epoch")
        infinite = pc.or_(pc.equal(raw, top), pc.equal(raw, bottom))
        shifted = pc.subtract_checked(pc.if_else(infinite, pa.scalar(0, storage), raw), pa.scalar(offset, storage))
        return pc.if_else(infinite, raw, shifted)
    except pa.ArrowInvalid as exc:
        raise LoadError(f"column {name}: a value is out of PostgreSQL's range ({exc})") from None


class BatchEncoder:
    """Casts lake batches to the exact warehouse column types and encodes them as binary COPY."""

    def __init__(self, plans: list[ColumnPlan], constants: dict[str, tuple[pa.DataType, Any]]) -> None:
        self.plans = plans
        self.constants = constants
        fields = [pa.field(p.name, _encoded_type(p)) for p in plans]
        fields += [pa.field(name, typ) for name, (typ, _) in constants.items()]
        self.schema = pa.schema(fields)
        builders: dict[str, Any] = {}
        for plan, fld in zip(plans, fields, strict=False):
            if plan.output == "jsonb":
                builders[fld.name] = pgpq_encoders.StringEncoderBuilder.new_with_output(fld, pgpq_schema.Jsonb())
            elif plan.output == "null":
                builders[fld.name] = pgpq_encoders.StringEncoderBuilder(pa.field(fld.name, pa.string()))
            else:
                builders[fld.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(fld)
        for fld in fields[len(plans):]:
            builders[fld.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(fld)
        encode_schema = pa.schema([pa.field(f.name, pa.string()) if p.output == "null" else f
                                   for f, p in zip(fields, plans, strict=False)] + fields[len(plans):])
        self.encode_schema = encode_schema
        self.encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(encode_schema, builders)
        self.nul_replaced = 0

    @property
    def column_names(self) -> list[str]:
        return list(self.encode_schema.names)

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for plan in self.plans:
            column = batch.column(plan.name)
            if plan.output == "null":
                column = pa.nulls(len(column), pa.string())
            elif plan.output in ("json-text", "jsonb"):
                column = _json_text(column) if is_json_like(column.type) else column.cast(pa.string())
                column, hits = _replace_nul(column, escaped=plan.output == "jsonb")
                self.nul_replaced += hits
            else:
                if column.type != plan.arrow_type:
                    try:  # a checked cast: a value the column's type cannot hold exactly fails here
                        column = column.cast(plan.arrow_type)
                    except pa.ArrowInvalid as exc:
                        raise LoadError(f"column {plan.name}: a {column.type} value does not fit its warehouse "
                                        f"type {plan.pg_type} exactly ({exc})") from None
                if pa.types.is_string(plan.arrow_type):
                    column, hits = _replace_nul(column, escaped=False)
                    self.nul_replaced += hits
                elif pa.types.is_date32(plan.arrow_type):
                    column = _postgres_epoch(plan.name, column, pa.int32(), _DAYS_2000)
                elif pa.types.is_timestamp(plan.arrow_type):
                    column = _postgres_epoch(plan.name, column, pa.int64(), _MICROS_2000)
            arrays.append(column)
        for _name, (typ, value) in self.constants.items():
            arrays.append(pa.repeat(pa.scalar(value, type=typ), batch.num_rows))
        return pa.RecordBatch.from_arrays(arrays, schema=self.encode_schema)

    def header(self) -> bytes:
        return bytes(self.encoder.write_header())

    def encode(self, batch: pa.RecordBatch) -> bytes:
        return bytes(self.encoder.write_batch(self.prepare(batch)))

    def finish(self) -> bytes:
        return bytes(self.encoder.finish())


