"""The Pagila sample source: the Pagila schema and data (../shared/datasets/pagila, never copied into
the repo) loaded into a PostgreSQL database with psql, for dags/sources/pagila.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from psycopg import sql

# Beside the project's folder, as on the machines this runs on; SNDW_PAGILA_DIR points elsewhere.
DEFAULT_DIR = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "pagila"
TABLES = ("film", "language", "category", "film_category", "actor", "film_actor", "rental", "payment")


def dataset_dir() -> Path:
    return Path(os.environ.get("SNDW_PAGILA_DIR") or DEFAULT_DIR)


def psql() -> str | None:
    """psql from PATH, else from the Debian/Ubuntu PostgreSQL packages scripts/pg-local uses."""
    found = shutil.which("psql") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None)
    return str(found) if found else None


def unavailable() -> str | None:
    """Why Pagila cannot be loaded here (dataset or psql missing), or None."""
    folder = dataset_dir()
    missing = [p for p in ("pagila-schema.sql", "pagila-data.sql") if not (folder / p).is_file()]
    if missing:
        return f"the Pagila dataset is not in {folder} ({', '.join(missing)} missing; set SNDW_PAGILA_DIR)"
    if psql() is None:
        return "psql is not installed (the Pagila dump is psql input)"
    return None


def load(conninfo: str, conn: Any) -> dict[str, int]:
    """Load Pagila into the empty database of ``conninfo`` (``conn``: a connection to it); returns
    the row counts of the tables the sample source reads."""
    reason = unavailable()
    if reason:
        raise FileNotFoundError(reason)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'").fetchone():
        conn.execute("CREATE ROLE postgres NOLOGIN")  # the dump gives its objects to postgres
        conn.commit()
    for part in ("pagila-schema.sql", "pagila-data.sql"):
        result = subprocess.run([str(psql()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f",
                                 str(dataset_dir() / part)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"loading {part} with psql failed: {result.stderr.strip()[-2000:]}")
    counts = {}
    for table in TABLES:
        row = conn.execute(sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(table))).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts
