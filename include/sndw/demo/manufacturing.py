"""The manufacturing sample source: refills, bodies and springs production tables in PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg import sql

TABLES = {
    "refills": """
        id bigint PRIMARY KEY, batch_code text NOT NULL, ink_color text, volume_ml numeric(6,2),
        line smallint, passed_qc boolean, produced_at timestamptz NOT NULL, notes text""",
    "bodies": """
        id bigint PRIMARY KEY, batch_code text NOT NULL, material text, length_mm double precision,
        weight_g real, defects integer, produced_on date NOT NULL, updated_at timestamptz NOT NULL""",
    "springs": """
        id bigint PRIMARY KEY, batch_code text NOT NULL, wire_diameter_mm numeric(5,3),
        coils integer, tension_n double precision, supplier text, produced_at timestamptz NOT NULL,
        specs jsonb""",
}


DEFAULT_START = date(2024, 1, 1)


def _rows(table: str, count: int, rng: random.Random, start: date = DEFAULT_START) -> list[tuple[Any, ...]]:
    base = datetime(start.year, start.month, start.day, tzinfo=UTC)
    rows: list[tuple[Any, ...]] = []
    for i in range(1, count + 1):
        at = base + timedelta(minutes=37 * i)
        batch = f"{table[:2].upper()}-{at:%Y%m%d}-{i % 7}"
        if table == "refills":
            rows.append((i, batch, rng.choice(["blue", "black", "red", "green"]),
                         Decimal(f"{rng.uniform(0.5, 2.5):.2f}"), rng.randint(1, 4), rng.random() > 0.03, at,
                         None if i % 5 else "re-checked, ok"))
        elif table == "bodies":
            rows.append((i, batch, rng.choice(["ABS", "PP", "aluminium"]), rng.uniform(120, 150),
                         rng.uniform(4, 9), rng.choice([0, 0, 0, 1, 2]), at.date(), at))
        else:
            rows.append((i, batch, Decimal(f"{rng.uniform(0.2, 0.6):.3f}"), rng.randint(8, 30),
                         rng.uniform(1, 5), rng.choice(["Acme", "Spring & Co", "Núcleo"]), at,
                         f'{{"grade": "{rng.choice("ABC")}", "tolerance": [0.01, 0.02]}}'))
    return rows


def create(conn: Any, rows_per_table: int = 1000, seed: int = 42, start: date = DEFAULT_START) -> dict[str, int]:
    """(Re)create the three tables with deterministic rows, one every 37 minutes from ``start``
    (1000 rows: ~26 days); returns the row counts."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        for table, columns in TABLES.items():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns)))
            rows = _rows(table, rows_per_table, rng, start)
            width = len(rows[0])
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
                for row in rows:
                    copy.write_row(row)
            assert width
            counts[table] = len(rows)
    return counts
