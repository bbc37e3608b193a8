"""The Pagila sample source: the Pagila schema and data (../shared/datasets/pagila, never copied into
the repo) loaded into a PostgreSQL database with psql, for dags/sources/pagila.yaml and
dags/sources/pagila_cdc.yaml (change data capture of rental and payment)."""

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


CDC_TABLES = {"rental": "rental_id", "payment": "payment_date, payment_id"}
# Changes for the CDC sample between its two demo runs: inserts, updates (one moves a payment to the
# next month's partition, which changes its key), deletes of a rental and its payments.
CDC_CHANGES = (
    "INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id) VALUES ('2022-07-30 10:00+00', 1, 1, 1)",
    "INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) "
    "SELECT 1, 1, max(rental_id), 4.99, '2022-07-30 10:05+00' FROM rental",
    "UPDATE rental SET return_date = rental_date + interval '3 days' WHERE rental_id IN "
    "(SELECT rental_id FROM rental WHERE return_date IS NULL ORDER BY rental_id LIMIT 20)",
    "UPDATE payment SET amount = amount + 1 WHERE payment_id IN (SELECT payment_id FROM payment ORDER BY payment_id LIMIT 50)",
    "UPDATE payment SET payment_date = payment_date + interval '1 month' WHERE payment_id = "
    "(SELECT min(payment_id) FROM payment WHERE payment_date < '2022-02-01')",
    "DELETE FROM payment WHERE rental_id = (SELECT min(rental_id) FROM rental)",
    "DELETE FROM rental WHERE rental_id = (SELECT min(rental_id) FROM rental)",
)


def cdc_changes(conn: Any) -> None:
    """Change rental and payment at the source (``conn``: a connection to the Pagila database)."""
    for statement in CDC_CHANGES:
        conn.execute(statement)
    conn.commit()


def cdc_compare(source: Any, warehouse: Any, schema: str) -> dict[str, tuple[int, int, int]]:
    """Per CDC table: (rows at the source, rows in the warehouse's ``schema``, rows that differ), the
    source's columns compared row for row in key order."""
    found = {}
    for table, key in CDC_TABLES.items():
        cur = source.execute(sql.SQL("SELECT * FROM public.{} ORDER BY {}").format(sql.Identifier(table), sql.SQL(key)))
        names = [d.name for d in cur.description or []]
        expected = cur.fetchall()
        got = warehouse.execute(sql.SQL("SELECT {} FROM {}.{} ORDER BY {}").format(
            sql.SQL(", ").join(sql.Identifier(n) for n in names), sql.Identifier(schema), sql.Identifier(table),
            sql.SQL(key))).fetchall()
        differ = sum(1 for a, b in zip(expected, got, strict=False) if a != b) + abs(len(expected) - len(got))
        found[table] = (len(expected), len(got), differ)
    return found
