"""The Airflow layer: operators, audit callbacks and the DAG factory over the sndw core library."""

from __future__ import annotations

from sndw_airflow.operators import ExtractToParquetOperator, ParquetToDwOperator

__all__ = ["ExtractToParquetOperator", "ParquetToDwOperator"]
