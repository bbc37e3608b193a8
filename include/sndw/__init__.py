"""sndw: the core library of a single-node data warehouse (no Airflow imports here)."""

from __future__ import annotations

__version__ = "0.1.0"
