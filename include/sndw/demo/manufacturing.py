"""The manufacturing sample source: refills, bodies and springs production tables in PostgreSQL.

`make demo` creates them with production on the documented days (2024-01-01..2024-01-07, the dates
the README and docs/ use) and on the last two weeks up to the moment it runs; never in the future.
"""

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
EVERY = timedelta(minutes=37)
# The dates the documentation's examples use (README, docs/): `make demo`'s data always covers them,
# and the RECENT_DAYS days up to the moment it runs, so scheduled runs and UI triggers have data too.
DOCUMENTED_DAYS = (date(2024, 1, 1), date(2024, 1, 7))
RECENT_DAYS = 14


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def demo_times(now: datetime | None = None) -> list[datetime]:
    """Production times of the demo: one every 37 minutes through the documented days, then through
    the RECENT_DAYS whole days before ``now``'s date and its date up to ``now``. Never after ``now``
    (an ``updated_at`` in the future would hold an incremental watermark ahead of every update)."""
    now = now or datetime.now(UTC)
    first, last = DOCUMENTED_DAYS
    windows = [(_midnight(first), _midnight(last + timedelta(days=1))),
               (_midnight(now.date() - timedelta(days=RECENT_DAYS)), now)]
    times: set[datetime] = set()
    for start, end in windows:
        at = start + EVERY
        while at <= min(end, now):
            times.add(at)
            at += EVERY
    return sorted(times)


def _rows(table: str, times: list[datetime], rng: random.Random) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for i, at in enumerate(times, start=1):
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


def create(conn: Any, rows_per_table: int | None = None, seed: int = 42, start: date = DEFAULT_START,
           now: datetime | None = None) -> dict[str, int]:
    """(Re)create the three tables with deterministic rows; returns the row counts. With
    ``rows_per_table``: that many rows, one every 37 minutes from ``start`` (1000 rows: ~26 days).
    Without: `make demo`'s data, :func:`demo_times` (the documented days and the recent ones up to
    ``now``)."""
    rng = random.Random(seed)
    if rows_per_table is None:
        times = demo_times(now)
    else:
        times = [_midnight(start) + EVERY * i for i in range(1, rows_per_table + 1)]
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        for table, columns in TABLES.items():
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(columns)))
            rows = _rows(table, times, rng)
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
                for row in rows:
                    copy.write_row(row)
            counts[table] = len(rows)
    return counts
