"""A PostgreSQL source's own session settings (``ALTER DATABASE/ROLE ... SET``) change neither the
values the extract reads as text nor which rows an incremental extract reads: every table runs
through the core pipeline (``runner.run_table``, what ``sndw sync`` runs) into a real warehouse."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sndw.config import parse_source
from sndw.pipeline import SourceAccess
from sndw.runner import run_table, warehouse_factory

# What `ALTER DATABASE ... SET` may give every new session of a source, each printing some value in
# another text form than the defaults do.
SOURCE_SETTINGS = {"datestyle": "SQL, DMY", "intervalstyle": "sql_standard", "extra_float_digits": "0",
                   "bytea_output": "escape", "timezone": "Asia/Kolkata"}


def set_database(url: str, **settings: str) -> None:
    """``ALTER DATABASE <url's database> SET`` each setting (``RESET ALL`` with none): new sessions get them."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(sql.Identifier(name)))
        for setting, value in settings.items():
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)))


def sync(dw_url: str, lake: Path, table: dict[str, Any], access: SourceAccess,
         partition: date = date(2024, 1, 2), pipeline: str = "sess") -> dict[str, Any]:
    """One table of a sql source extracted and loaded (into ``raw``), as ``sndw sync`` does."""
    source = parse_source({"name": pipeline, "kind": "sql", "conn_id": "src", "start_date": "2024-01-01",
                           "target_schema": "raw", "tables": [table]}, f"{pipeline}.yaml")
    result = run_table(url=dw_url, pipeline=pipeline, source=pipeline, kind="sql", table=source.tables[0],
                       access=access, lake=str(lake), schema="raw", partition=partition)
    assert result["status"] == "success", result["error"]
    return result


def postgres(source_db: str, dw_url: str) -> SourceAccess:
    return SourceAccess(postgres_conninfo=source_db, warehouse=warehouse_factory(dw_url))


def sync_each_day(source_db: str, dw_url: str, tmp_path: Path, table: dict[str, Any], insert: str,
                  days: list[list[tuple[Any, ...]]]) -> None:
    """Day by day from 2024-01-01: the day's rows inserted at the source, then one sync that loads
    exactly them."""
    access = postgres(source_db, dw_url)
    for number, rows in enumerate(days, 1):
        with psycopg.connect(source_db, autocommit=True) as conn:
            for row in rows:
                conn.execute(insert, row)
        assert sync(dw_url, tmp_path / "lake", table, access, date(2024, 1, number))["rows_loaded"] == len(rows)


# The defaults, on both sides of a comparison.
DEFAULTS = "-c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=1 -c bytea_output=hex -c timezone=UTC"


def column_texts(url: str, table: str, columns: list[str]) -> dict[str, list[Any]]:
    with psycopg.connect(url, options=DEFAULTS) as conn:
        return {c: [r[0] for r in conn.execute(sql.SQL("SELECT {}::text FROM {} ORDER BY id").format(
            sql.Identifier(c), sql.SQL(table))).fetchall()] for c in columns}


SESS = """
CREATE TYPE pair AS (label text, data bytea, day date);
CREATE TABLE sess (id int PRIMARY KEY, d date[], dr daterange, ts timestamp[], tsa timestamptz[], tzr tstzrange,
                   iv interval, iva interval[], f float8[], r real[], b bytea[], p pair, tt timetz);
INSERT INTO sess VALUES
  (1, '{2024-01-02,2024-11-12}', '[2024-01-02,2024-03-04)', '{"2024-01-02 03:04:05.123456"}',
   '{"2024-01-02 03:04:05.123456+00","2024-06-30 23:59:59+02"}', '[2024-01-02 10:00+00,2024-01-03 00:00+00)',
   '-1 day -02:00:00', '{"1 mon -2 days 03:00:00","-00:00:01.5"}', '{0.30000000000000004,1e-310}',
   '{1.0000001,3.4028235e38}', '{"\\\\x00ff5c27",NULL}', '("a,b","\\\\x00ff5c","2024-01-02")', '10:11:12.5+05:30'),
  (2, NULL, 'empty', '{}', NULL, '(,2024-01-02 00:00+00]', '00:00:00', '{}', '{-0.1}', '{0.1}', '{"\\\\x"}',
   NULL, '00:00:00-03');
"""


def test_values_read_as_text_keep_their_value_whatever_the_sources_settings(source_db: str, dw_url: str,
                                                                            tmp_path: Path) -> None:
    """Arrays, ranges, intervals, timetz and composites travel as their text: under the database's
    DateStyle 'SQL, DMY' a date[] {2024-01-02} loaded as {2024-02-01}, extra_float_digits 0 rounded
    0.30000000000000004 to 0.3, sql_standard turned '-1 day -02:00:00' into '-1 days +02:00:00', and
    'IST' (Asia/Kolkata) was read as Israel time. Each arrives as the source has it."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(SESS)
    set_database(source_db, **SOURCE_SETTINGS)
    access = postgres(source_db, dw_url)
    sync(dw_url, tmp_path / "lake", {"name": "sess", "table": "public.sess"}, access)
    columns = ["d", "dr", "ts", "tsa", "tzr", "iv", "iva", "f", "r", "b", "p", "tt"]
    assert column_texts(dw_url, "raw.sess", columns) == column_texts(source_db, "public.sess", columns)
    # A query that relies on the session's text (its count runs in a session of its own) and on the
    # database's own time zone, which the extract leaves as it is.
    counted = {"name": "counted", "write_mode": "replace", "checks": [{"source_count": True}],
               "query": "SELECT id, current_setting('TimeZone') AS zone FROM sess WHERE d::text LIKE '{2024-01-02,%'"}
    assert sync(dw_url, tmp_path / "lake", counted, access)["rows_loaded"] == 1
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, zone FROM raw.counted").fetchall() == [(1, "Asia/Kolkata")]


EVENTS = """
CREATE TABLE ev_ts (id int PRIMARY KEY, at timestamp NOT NULL);
CREATE TABLE ev_tz (id int PRIMARY KEY, at timestamptz NOT NULL);
CREATE TABLE ev_day (id int PRIMARY KEY, at date NOT NULL);
"""
# Each run's new rows: a timestamp's wall-clock and a date (timestamptz: the wall-clock in UTC).
ROUNDS = [[(1, "2024-01-01 08:00", "2024-01-01"), (2, "2024-01-01 10:00", "2024-01-02")],
          [(3, "2024-01-01 10:00:00.000001", "2024-01-03"), (4, "2024-01-01 18:59", "2024-01-04"),
           (5, "2024-01-01 19:01", "2024-01-05")],
          [],
          [(6, "2024-01-02 00:00", "2024-01-06")]]


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/New_York"])
def test_incremental_cursors_read_each_row_once_whatever_the_sources_time_zone(zone: str, source_db: str,
                                                                             dw_url: str, tmp_path: Path) -> None:
    """A `timestamp` cursor's watermark (its wall-clock, stored with +00:00) compared as timestamptz in
    the source's zone skipped rows up to the zone's offset past it (Asia/Tokyo) or read the last ones
    again (America/New_York); a `date` cursor read its last day again. Appended runs hold each row once."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(EVENTS)
    set_database(source_db, timezone=zone)
    access = postgres(source_db, dw_url)
    for number, rows in enumerate(ROUNDS, 1):
        with psycopg.connect(source_db, autocommit=True) as conn:
            for id_, wall, day in rows:
                conn.execute("INSERT INTO ev_ts VALUES (%s, %s::timestamp)", (id_, wall))
                conn.execute("INSERT INTO ev_tz VALUES (%s, %s::timestamp AT TIME ZONE 'UTC')", (id_, wall))
                conn.execute("INSERT INTO ev_day VALUES (%s, %s::date)", (id_, day))
        for name in ("ev_ts", "ev_tz", "ev_day"):
            table = {"name": name, "table": f"public.{name}", "write_mode": "append", "incremental": {"cursor": "at"}}
            loaded = sync(dw_url, tmp_path / "lake", table, access, date(2024, 1, number))["rows_loaded"]
            assert loaded == len(rows), (name, number)
    for name in ("ev_ts", "ev_tz", "ev_day"):
        assert column_texts(dw_url, f"raw.{name}", ["id", "at"]) == column_texts(source_db, f"public.{name}", ["id", "at"])


def test_a_text_cursor_under_a_linguistic_collation_reads_each_row_once(source_db: str, dw_url: str,
                                                                       tmp_path: Path) -> None:
    """The watermark is the byte-order maximum ('a1' over 'B2'); the source compared under the
    column's collation, where 'B2' > 'a1', and read 'B2' again on every run."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        found = conn.execute("SELECT collname FROM pg_collation WHERE collname IN ('en-US-x-icu', 'en_US.utf8', "
                             "'en_US') ORDER BY collname DESC LIMIT 1").fetchone()
        if found is None:
            pytest.skip("the test server has no en-US collation (ICU or libc)")
        conn.execute(sql.SQL("CREATE TABLE codes (id int PRIMARY KEY, code text COLLATE {} NOT NULL)").format(
            sql.Identifier(found[0])))
        assert conn.execute(sql.SQL("SELECT 'B2' COLLATE {} > 'a1'").format(sql.Identifier(found[0]))).fetchone() == (True,)
    table = {"name": "codes", "table": "public.codes", "write_mode": "append", "incremental": {"cursor": "code"}}
    sync_each_day(source_db, dw_url, tmp_path, table, "INSERT INTO codes VALUES (%s, %s)",
                  [[(1, "a1"), (2, "B2")], [(3, "c3"), (4, "a10")], []])
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, code FROM raw.codes ORDER BY id").fetchall() == [
            (1, "a1"), (2, "B2"), (3, "c3"), (4, "a10")]
        assert dw.execute("SELECT value FROM etl_state WHERE table_name = 'codes'").fetchone() == ("c3",)


def test_a_sqlite_text_cursor_compares_as_sqlite_does(tmp_path: Path, dw_url: str) -> None:
    """Other databases get the watermark as plain text, compared in their own (here: byte) order."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE ev (id INTEGER, at TEXT)")
        conn.executemany("INSERT INTO ev VALUES (?, ?)", [(1, "2024-01-01 08:00:00"), (2, "2024-01-01 10:00:00")])
    access = SourceAccess(dbapi_connect=lambda: sqlite3.connect(path), warehouse=warehouse_factory(dw_url))
    table = {"name": "ev", "table": "ev", "write_mode": "append", "incremental": {"cursor": "at"}}
    assert sync(dw_url, tmp_path / "lake", table, access, date(2024, 1, 1))["rows_loaded"] == 2
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO ev VALUES (3, '2024-01-01 10:00:00.5')")
    assert sync(dw_url, tmp_path / "lake", table, access, date(2024, 1, 2))["rows_loaded"] == 1
    assert sync(dw_url, tmp_path / "lake", table, access, date(2024, 1, 3))["rows_loaded"] == 0


def test_an_unconstrained_numeric_cursor_compares_as_numbers(source_db: str, dw_url: str, tmp_path: Path) -> None:
    """A `numeric` without a precision Arrow holds travels as its text: its watermark is the largest
    number ('10'), not the largest text ('9'), which read 10 again on every run."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE seqs (id int PRIMARY KEY, seq numeric NOT NULL)")
    table = {"name": "seqs", "table": "public.seqs", "write_mode": "append", "incremental": {"cursor": "seq"}}
    sync_each_day(source_db, dw_url, tmp_path, table, "INSERT INTO seqs VALUES (%s, %s::numeric)",
                  [[(1, "9"), (2, "10")], [(3, "10.5"), (4, "100000000000000000000000000000000000000001")], []])
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, seq::text FROM raw.seqs ORDER BY id").fetchall() == [
            (1, "9"), (2, "10"), (3, "10.5"), (4, "100000000000000000000000000000000000000001")]
        assert dw.execute("SELECT value, value_type FROM etl_state WHERE table_name = 'seqs'").fetchone() == (
            "100000000000000000000000000000000000000001", "number")
