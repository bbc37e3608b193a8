"""``replace`` refreshes a table in place: everything defined on it stays; an empty extract is refused.

Cases and their documented outcomes: tests/bad_inputs/faults/lake_cases.yaml."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import yaml
from psycopg import sql
from sndw.audit import AuditRecord
from sndw.config import parse_source
from sndw.demo import manufacturing
from sndw.errors import EmptyExtractError, LoadError
from sndw.lake import Manifest, write_partition
from sndw.replay import replay_table
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import count, run, states

BAD = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((BAD / "faults" / "lake_cases.yaml").read_text())
DAY = dt.date(2024, 3, 1)


def extract(tmp_path: Path, rows: dict[str, list[Any]], day: dt.date = DAY) -> Manifest:
    return write_partition([pa.record_batch(rows)], tmp_path / "lake", "sql", "src", "items", day,
                           run_id=f"run-{uuid.uuid4().hex[:6]}")


def assert_error_names(case: str, message: str) -> None:
    missing = [name for name in CASES[case]["error_names"] if str(name) not in message]
    assert not missing, f"{case}: the error does not name {missing}: {message}"


@pytest.fixture
def roles(dw: psycopg.Connection) -> Iterator[tuple[str, str]]:
    """A reader and an owner role (roles are cluster-wide: unique names, dropped afterwards)."""
    suffix = uuid.uuid4().hex[:8]
    reader, owner = f"sndw_reader_{suffix}", f"sndw_owner_{suffix}"
    for role in (reader, owner):
        dw.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    dw.commit()
    yield reader, owner
    dw.rollback()
    dw.execute("RESET ROLE")
    for role in (reader, owner):
        dw.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        dw.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    dw.commit()


def definitions(dw: psycopg.Connection, reader: str) -> dict[str, Any]:
    one = lambda query, *args: dw.execute(query, args).fetchone()[0]  # noqa: E731
    return {
        "oid": one("SELECT 'items'::regclass::oid"),
        "owner": one("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'items'::regclass"),
        "reader_select": one("SELECT has_table_privilege(%s, 'items', 'SELECT')", reader),
        "acl": one("SELECT relacl::text FROM pg_class WHERE oid = 'items'::regclass"),
        "comment": one("SELECT obj_description('items'::regclass, 'pg_class')"),
        "column_comment": one("SELECT col_description('items'::regclass, 2)"),
        "rls": one("SELECT relrowsecurity FROM pg_class WHERE oid = 'items'::regclass"),
        "policies": one("SELECT array_agg(policyname::text ORDER BY policyname) FROM pg_policies WHERE tablename = 'items'"),
        "indexes": one("SELECT array_agg(indexname::text ORDER BY indexname) FROM pg_indexes WHERE tablename = 'items'"),
        "constraints": one("SELECT array_agg(conname::text ORDER BY conname) FROM pg_constraint "
                           "WHERE conrelid = 'items'::regclass OR confrelid = 'items'::regclass"),
        "triggers": one("SELECT array_agg(tgname::text ORDER BY tgname) FROM pg_trigger "
                        "WHERE tgrelid = 'items'::regclass AND NOT tgisinternal"),
        "view": one("SELECT pg_get_viewdef('items_view'::regclass)"),
    }


def test_replace_keeps_grants_owner_comments_policies_indexes_views_and_foreign_keys(
        tmp_path: Path, dw: psycopg.Connection, roles: tuple[str, str]) -> None:
    reader, owner = roles
    spec = LoadSpec("public", "items", "replace")
    load_manifest(dw, extract(tmp_path, {"id": [1, 2, 3], "v": ["a", "b", "c"]}), spec)
    for statement in (
        "GRANT SELECT ON items TO {reader}",
        "ALTER TABLE items OWNER TO {owner}",
        "COMMENT ON TABLE items IS 'orders from the shop'",
        "COMMENT ON COLUMN items.v IS 'the value'",
        "CREATE UNIQUE INDEX items_id ON items (id)",
        "ALTER TABLE items ADD CONSTRAINT items_v_set CHECK (v IS NOT NULL)",
        "ALTER TABLE items ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE items FORCE ROW LEVEL SECURITY",
        "CREATE POLICY items_positive ON items FOR SELECT TO {reader} USING (id > 0)",
        "CREATE POLICY items_all ON items TO {owner} USING (true)",
        "CREATE VIEW items_view AS SELECT id, upper(v) AS v FROM items",
        "GRANT SELECT ON items_view TO {reader}",
        "CREATE TABLE item_notes (item_id bigint REFERENCES items (id), note text)",
        "INSERT INTO item_notes VALUES (1, 'first'), (2, 'second')",
        "CREATE TABLE items_log (n int)",
        "CREATE FUNCTION items_count() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO items_log VALUES (1); RETURN NULL; END $$",
        "CREATE TRIGGER items_counted AFTER INSERT ON items FOR EACH STATEMENT EXECUTE FUNCTION items_count()",
    ):
        dw.execute(sql.SQL(statement).format(reader=sql.Identifier(reader), owner=sql.Identifier(owner)))
    dw.commit()
    before = definitions(dw, reader)
    assert before["reader_select"] and before["owner"] == owner and before["rls"]
    dw.commit()

    load_manifest(dw, extract(tmp_path, {"id": [1, 2, 3, 4], "v": ["A", "B", "C", "D"]}), spec)
    load_manifest(dw, extract(tmp_path, {"id": [1, 2, 5], "v": ["x", "y", "z"]}), spec)  # drops 3 and 4

    assert definitions(dw, reader) == before
    assert dw.execute("SELECT id, v FROM items ORDER BY id").fetchall() == [(1, "x"), (2, "y"), (5, "z")]
    assert dw.execute("SELECT * FROM item_notes ORDER BY item_id").fetchall() == [(1, "first"), (2, "second")]
    dw.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
    assert dw.execute("SELECT id, v FROM items_view ORDER BY id").fetchall() == [(1, "X"), (2, "Y"), (5, "Z")]
    assert dw.execute("SELECT count(*) FROM items").fetchone() == (3,)
    dw.execute("RESET ROLE")
    assert dw.execute("SELECT count(*) FROM items_log").fetchone()[0] >= 2  # the trigger still fires
    dw.rollback()


def test_replace_of_a_table_without_foreign_keys_keeps_its_oid(tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "items", "replace")
    load_manifest(dw, extract(tmp_path, {"id": [1, 2], "v": ["a", "b"]}), spec)
    oid = dw.execute("SELECT 'items'::regclass::oid").fetchone()
    dw.execute("CREATE VIEW items_view AS SELECT * FROM items")
    dw.commit()
    load_manifest(dw, extract(tmp_path, {"id": [3], "v": ["c"]}), spec)
    assert dw.execute("SELECT 'items'::regclass::oid").fetchone() == oid  # the same table, refreshed in place
    assert dw.execute("SELECT id, v FROM items_view").fetchall() == [(3, "c")]


def test_replace_writes_its_rows_frozen_also_inside_a_callers_transaction(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    """TRUNCATE + COPY ... FREEZE in one (sub)transaction: every page all-visible and all-frozen at
    once, with no VACUUM; also when the caller's transaction is open (the load is then a savepoint)."""
    spec = LoadSpec("public", "items", "replace")
    dw.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
    dw.commit()
    rows = 20_000
    load_manifest(dw, extract(tmp_path, {"id": list(range(rows)), "v": ["x" * 20] * rows}), spec)
    dw.execute("SELECT 1")  # the caller's transaction is open: load_files nests in a savepoint
    load_manifest(dw, extract(tmp_path, {"id": list(range(rows, 2 * rows)), "v": ["y" * 20] * rows}), spec)
    pages, visible, frozen = dw.execute(
        "SELECT pg_relation_size('items') / current_setting('block_size')::int, all_visible, all_frozen "
        "FROM pg_visibility_map_summary('items')").fetchone()
    assert pages > 10 and visible == pages and frozen == pages
    assert dw.execute("SELECT count(*), min(id) FROM items").fetchone() == (rows, rows)
    dw.rollback()  # the caller's rollback takes the second replace with it: all or nothing
    assert dw.execute("SELECT count(*), min(id) FROM items").fetchone() == (rows, 0)
    dw.rollback()


def test_replace_dropping_a_key_still_referenced_fails_and_changes_nothing(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    spec = LoadSpec("public", "items", "replace")
    load_manifest(dw, extract(tmp_path, {"id": [1, 2], "v": ["a", "b"]}), spec)
    dw.execute("ALTER TABLE items ADD PRIMARY KEY (id)")
    dw.execute("CREATE TABLE item_notes (item_id bigint REFERENCES items (id), note text)")
    dw.execute("INSERT INTO item_notes VALUES (2, 'uses 2')")
    dw.commit()
    before = dw.execute("SELECT * FROM items ORDER BY id").fetchall()
    with pytest.raises(LoadError) as caught:
        load_manifest(dw, extract(tmp_path, {"id": [1, 3], "v": ["a", "c"]}), spec)
    assert_error_names("lake_replace_referenced_key_dropped", str(caught.value))
    assert "item_notes" in str(caught.value)
    assert dw.execute("SELECT * FROM items ORDER BY id").fetchall() == before
    assert dw.execute("SELECT * FROM item_notes").fetchall() == [(2, "uses 2")]


def test_an_empty_extract_is_refused_by_replace_and_partition_unless_allowed(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    empty = {"id": pa.array([], pa.int64()), "v": pa.array([], pa.string())}
    for mode in ("replace", "partition"):
        spec = LoadSpec("public", f"items_{mode}", mode)
        load_manifest(dw, extract(tmp_path, {"id": [1, 2], "v": ["a", "b"]}), spec)
        with pytest.raises(EmptyExtractError) as caught:
            load_manifest(dw, extract(tmp_path, empty), spec)
        assert_error_names("lake_empty_partition_mode", str(caught.value))
        assert f"public.items_{mode}" in str(caught.value) and str(DAY) in str(caught.value)
        assert dw.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"items_{mode}"))).fetchone() == (2,)
        spec.allow_empty = True
        load_manifest(dw, extract(tmp_path, empty), spec)
        assert dw.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"items_{mode}"))).fetchone() == (0,)
    append = LoadSpec("public", "items_append", "append")  # appending nothing is fine, as before
    load_manifest(dw, extract(tmp_path, {"id": [1], "v": ["a"]}), append)
    assert load_manifest(dw, extract(tmp_path, empty), append).rows_loaded == 0


def test_an_empty_extract_into_an_empty_table_or_date_loads_0_rows(tmp_path: Path, dw: psycopg.Connection) -> None:
    """A quiet day (no rows for the date) or a source table still empty removes nothing: it loads
    0 rows, audited as a success; only an empty extract that would remove rows is refused."""
    empty = {"id": pa.array([], pa.int64()), "v": pa.array([], pa.string())}
    for mode in ("replace", "partition"):  # the table does not exist yet: it is made, empty
        spec = LoadSpec("public", f"new_{mode}", mode)
        audit = AuditRecord(pipeline_name="src", source_name="src", protocol="sql", target_table=spec.qualified,
                            status="success", started_at=dt.datetime.now(dt.UTC), step="load", partition_date=DAY)
        assert load_manifest(dw, extract(tmp_path, empty), spec, audit=audit).rows_loaded == 0
        assert dw.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"new_{mode}"))).fetchone() == (0,)
        assert dw.execute("SELECT status, rows_loaded FROM etl_audit_log WHERE target_table = %s",
                          (spec.qualified,)).fetchall() == [("success", 0)]
    replace = LoadSpec("public", "new_replace", "replace")  # exists now, still empty: again 0 rows
    assert load_manifest(dw, extract(tmp_path, empty), replace).rows_loaded == 0
    # A partition table whose other dates hold rows: an empty date is a quiet day, not a broken export.
    spec = LoadSpec("public", "items_partition", "partition")
    load_manifest(dw, extract(tmp_path, {"id": [1, 2], "v": ["a", "b"]}), spec)
    for offset in range(1, 5):
        assert load_manifest(dw, extract(tmp_path, empty, DAY + dt.timedelta(days=offset)), spec).rows_loaded == 0
    assert dw.execute("SELECT _partition_date, count(*) FROM items_partition GROUP BY 1").fetchall() == [(DAY, 2)]
    with pytest.raises(EmptyExtractError) as caught:  # the date that holds rows is still protected
        load_manifest(dw, extract(tmp_path, empty), spec)
    assert_error_names("lake_empty_partition_mode", str(caught.value))
    assert dw.execute("SELECT count(*) FROM items_partition").fetchone() == (2,)
    merge = LoadSpec("public", "items_merge", "merge", ["id"])  # merging nothing changes nothing
    load_manifest(dw, extract(tmp_path, {"id": [1], "v": ["a"]}), merge)
    assert load_manifest(dw, extract(tmp_path, empty), merge).rows_loaded == 0
    assert dw.execute("SELECT id, v FROM items_merge").fetchall() == [(1, "a")]


def test_replay_over_empty_partitions_succeeds_and_its_refusal_names_the_lake(
        tmp_path: Path, dw: psycopg.Connection) -> None:
    source = parse_source({"name": "src", "kind": "sql", "conn_id": "src", "start_date": "2024-03-01",
                           "tables": [{"name": "items", "query": "SELECT 1", "write_mode": "partition"}]}, "src.yaml")
    lake_root = tmp_path / "lake"
    extract(tmp_path, {"id": [1, 2], "v": ["a", "b"]})
    empty = {"id": pa.array([], pa.int64()), "v": pa.array([], pa.string())}
    for offset in range(1, 4):
        extract(tmp_path, empty, DAY + dt.timedelta(days=offset))
    results = replay_table(dw, source, source.tables[0], lake_root)
    assert [r.rows_loaded for r in results] == [2, 0, 0, 0]
    extract(tmp_path, empty)  # the lake's first date now empty, the warehouse's still holds 2 rows
    with pytest.raises(EmptyExtractError) as caught:
        replay_table(dw, source, source.tables[0], lake_root, DAY, DAY)
    assert_error_names("lake_empty_replay", str(caught.value))
    assert "extract" not in str(caught.value)
    assert dw.execute("SELECT count(*) FROM items").fetchone() == (2,)


@pytest.mark.slow
def test_a_backfill_of_quiet_days_stays_green(env: dict[str, Any], source_db: str, configs: list[Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample manufacturing source (replace, incremental merge, partition) run through
    dag.test() for a date with springs data and then four dates without: every task succeeds."""
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=60)
        last = conn.execute("SELECT max(produced_at)::date FROM springs").fetchone()[0]
    monkeypatch.setenv("AIRFLOW_CONN_QUIET_MFG", source_db)
    config = {
        "name": "quiet_mfg", "kind": "sql", "conn_id": "quiet_mfg", "target_schema": "raw",
        "start_date": "2024-01-01", "catchup": False, "retries": 0, "tables": [
            {"name": "refills", "table": "public.refills", "write_mode": "replace"},
            {"name": "bodies", "query": "SELECT * FROM bodies", "write_mode": "merge", "primary_key": ["id"],
             "incremental": {"cursor": "updated_at"}},
            {"name": "springs", "write_mode": "partition", "query":
             "SELECT * FROM springs WHERE produced_at >= DATE '{{ partition_date }}' "
             "AND produced_at < DATE '{{ partition_date }}' + 1"},
        ],
    }
    days = [last + dt.timedelta(days=n) for n in range(5)]
    for day in days:
        dag_run = run(config, configs, dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))
        assert set(states(dag_run).values()) == {"success"}, (day, states(dag_run))
    with psycopg.connect(env["dw_url"]) as dw:
        loads = dw.execute("SELECT partition_date, rows_loaded FROM etl_audit_log WHERE step = 'load' "
                           "AND status = 'success' AND target_table = 'raw.springs' ORDER BY partition_date").fetchall()
        assert [d for d, _ in loads] == days and loads[0][1] > 0 and {n for _, n in loads[1:]} == {0}
        assert dw.execute("SELECT count(*) FROM etl_audit_log WHERE status <> 'success'").fetchone() == (0,)
        assert count(dw, "raw.refills") == 60


@pytest.mark.slow
def test_a_header_only_csv_fails_the_replace_load_audited_and_allow_empty_permits_it(
        env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "items.csv").write_text("id,name,amount\n1,a,1.5\n2,b,2.5\n")
    table: dict[str, Any] = {"name": "items", "path": "items.csv", "write_mode": "replace"}
    config = {"name": "lake_empty", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [table]}
    assert set(states(run(config, configs)).values()) == {"success"}
    shutil.copy(BAD / "csv" / "lake_header_only.csv", data / "items.csv")
    result = states(run(config, configs))
    assert result == {"extract_items": "success", "load_items": "failed"}, result
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT id, name, amount FROM items ORDER BY id").fetchall() == [(1, "a", 1.5), (2, "b", 2.5)]
        (message,) = dw.execute("SELECT error_message FROM etl_audit_log WHERE step = 'load' "
                                "AND status = 'failure'").fetchone()
    assert_error_names("lake_header_only_csv_replace", message)
    table["allow_empty"] = True
    assert set(states(run(config, configs)).values()) == {"success"}
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*) FROM items").fetchone() == (0,)
        assert dw.execute("SELECT rows_loaded FROM etl_audit_log WHERE step = 'load' AND status = 'success' "
                          "ORDER BY id DESC LIMIT 1").fetchone() == (0,)
