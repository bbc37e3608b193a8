"""Transforms of the manufacturing sample source (dags/sources/manufacturing.yaml)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc


def bodies_metrics(bodies: pl.DataFrame) -> pl.DataFrame:
    """Derived columns of a body: its density along the length and whether it has any defect."""
    return bodies.with_columns(
        (pl.col("weight_g").cast(pl.Float64) / pl.col("length_mm")).round(5).alias("weight_g_per_mm"),
        (pl.col("defects") > 0).alias("defective"),
    )


def refills_volume_l(refills: pa.RecordBatch) -> pa.RecordBatch:
    """The refill's volume in litres next to its millilitres (exact: a decimal divided by 1000)."""
    litres = pc.divide(refills.column("volume_ml").cast(pa.decimal128(12, 5)), pa.scalar(1000, pa.decimal128(12, 5)))
    return refills.append_column("volume_l", litres.cast(pa.decimal128(12, 5)))
