"""Python transforms between the lake and the warehouse, end to end through dag.test() on real batches."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from sndw.config import parse_source
from sndw.demo import manufacturing
from sndw.errors import ConfigError
from sndw.lake import partition_dates, partition_files

from tests.conftest import DAY, ROOT, TEST_DAGS, count, run, states

pytestmark = pytest.mark.slow

TRANSFORMS = TEST_DAGS / "transforms"


@pytest.fixture
def module() -> Iterator[Any]:
    """Write a module of transforms into the tests' transforms/ package (a real file, imported by
    the load at run time); each test's under a name of its own."""
    written: list[Path] = []

    def write(source: str) -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        path = TRANSFORMS / f"{name}.py"
        path.write_text(source)
        written.append(path)
        return f"transforms.{name}"

    yield write
    for path in written:
        path.unlink(missing_ok=True)


def columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s AND column_name NOT LIKE '\\_%%' "
                        "ORDER BY ordinal_position", (schema, table)).fetchall()
    return dict(rows)


def lake_columns(lake: Path, source: str, table: str) -> list[str]:
    day = partition_dates(lake, "sql", source, table)[-1]
    return pq.read_schema(partition_files(lake, "sql", source, table, day)[0]).names


def audit_rows(conn: psycopg.Connection, pipeline: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT step, status, target_table, error_message FROM etl_audit_log "
                        "WHERE pipeline_name = %s ORDER BY id", (pipeline,)).fetchall()


def test_sample_transforms_on_the_demo_data(env: dict[str, Any], source_db: str, configs: list[Path],
                                            monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    """dags/sources/manufacturing.yaml as shipped: a pyarrow transform (refills) and a polars one
    (bodies, an incremental merge) add derived columns; the lake keeps the rows as extracted. The
    Airflow-free command line's replay imports the project's dags/transforms and applies it again."""
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=250)
    monkeypatch.setenv("AIRFLOW_CONN_MANUFACTURING_SRC", source_db)
    config = yaml.safe_load((ROOT / "dags" / "sources" / "manufacturing.yaml").read_text())
    config["retries"] = 0
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(source_db) as src:
        refills = dict(src.execute("SELECT id, volume_ml FROM refills").fetchall())
        bodies = {r[0]: r[1:] for r in src.execute("SELECT id, weight_g, length_mm, defects FROM bodies").fetchall()}
    with psycopg.connect(env["dw_url"]) as dw:
        assert columns(dw, "raw", "refills")["volume_l"] == "numeric"
        loaded = dict(dw.execute("SELECT id, volume_l FROM raw.refills").fetchall())
        assert loaded == {k: v / 1000 for k, v in refills.items()} and len(loaded) == 250
        assert columns(dw, "raw", "bodies")["defective"] == "boolean"
        for key, per_mm, defective in dw.execute("SELECT id, weight_g_per_mm, defective FROM raw.bodies").fetchall():
            weight, length, defects = bodies[key]
            assert defective == (defects > 0)
            assert per_mm == pytest.approx(weight / length, abs=1e-5)
        assert count(dw, "raw.bodies") == 250
        # Columns the transforms pass through keep the source's types.
        assert columns(dw, "raw", "refills")["volume_ml"] == "numeric"
        assert columns(dw, "raw", "bodies")["weight_g"] == "real"
    assert "volume_l" not in lake_columns(env["lake"], "manufacturing", "refills")
    assert "defective" not in lake_columns(env["lake"], "manufacturing", "bodies")

    with psycopg.connect(env["dw_url"]) as dw:
        dw.execute("UPDATE raw.refills SET volume_l = NULL")
    code, out, err = cli("replay", str(configs[-1]), "--table", "refills", "--lake", str(env["lake"]),
                         env={"AIRFLOW__CORE__DAGS_FOLDER": ""})  # so the project's dags/transforms is used
    assert code == 0, (out, err)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dict(dw.execute("SELECT id, volume_l FROM raw.refills").fetchall()) == loaded


def _items(source_db: str, rows: int = 300) -> None:
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, qty integer, price numeric(8,2), name text, "
                     "secret text)")
        conn.execute("INSERT INTO items SELECT i, i %% 17, (i * 1.25)::numeric(8,2), 'item ' || i, 'pw' || i "
                     "FROM generate_series(1, %s) i", (rows,))


def _config(name: str, transform: str | None, mode: str = "replace") -> dict[str, Any]:
    table: dict[str, Any] = {"name": "items", "table": "public.items", "write_mode": mode, "primary_key": ["id"]}
    if transform:
        table["transform"] = transform
    return {"name": name, "kind": "sql", "conn_id": name, "target_schema": "shop", "start_date": "2024-01-01",
            "retries": 0, "tables": [table]}


def test_schema_changing_transform_then_replay_applies_the_current_one(
        env: dict[str, Any], source_db: str, configs: list[Path], module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A polars transform drops a column, retypes one and adds one: the warehouse table is created
    from its output. A replay after the config names another transform applies that one."""
    _items(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_TX_SCHEMA", source_db)
    mod = module(
        "import polars as pl\n\n\n"
        "def reshape(items: pl.DataFrame) -> pl.DataFrame:\n"
        "    return items.drop('secret').with_columns(pl.col('qty').cast(pl.Float64),\n"
        "                                             pl.col('name').str.to_uppercase().alias('label'))\n\n\n"
        "def tripled(items: pl.DataFrame) -> pl.DataFrame:\n"
        "    return items.drop('secret').with_columns((pl.col('qty') * 3).alias('qty3'))\n")
    dag_run = run(_config("tx_schema", f"{mod}:reshape", mode="merge"), configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(source_db) as src:
        expected = {r[0]: r[1:] for r in src.execute("SELECT id, qty, price, name FROM items").fetchall()}
    with psycopg.connect(env["dw_url"]) as dw:
        cols = columns(dw, "shop", "items")
        assert list(cols) == ["id", "qty", "price", "name", "label"]
        assert cols["qty"] == "double precision" and cols["price"] == "numeric"
        rows = {r[0]: r[1:] for r in dw.execute("SELECT id, qty, price, name, label FROM shop.items").fetchall()}
    assert rows == {k: (float(q), p, n, n.upper()) for k, (q, p, n) in expected.items()}
    assert "secret" in lake_columns(env["lake"], "tx_schema", "items")  # the lake keeps the source's data

    from sndw.replay import replay_table

    source = parse_source(_config("tx_schema", f"{mod}:tripled", mode="merge"), "tx_schema.yaml")
    with psycopg.connect(env["dw_url"]) as dw:
        results = replay_table(dw, source, source.tables[0], env["lake"])
        assert [r.rows_loaded for r in results] == [300]
        replayed = dict(dw.execute("SELECT id, qty3 FROM shop.items").fetchall())
        assert "qty3" in columns(dw, "shop", "items")
    assert replayed == {k: q * 3 for k, (q, _p, _n) in expected.items()}


def test_a_raising_transform_names_table_batch_and_function_and_commits_nothing(
        env: dict[str, Any], source_db: str, configs: list[Path], module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _items(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_TX_FAIL", source_db)
    mod = module(
        "import pyarrow as pa\n"
        "import pyarrow.compute as pc\n\n\n"
        "def add_total(items: pa.RecordBatch) -> pa.RecordBatch:\n"
        "    total = pc.multiply(items.column('qty').cast(pa.decimal128(12, 2)), items.column('price'))\n"
        "    return items.append_column('total', total)\n\n\n"
        "def picky(items: pa.RecordBatch) -> pa.RecordBatch:\n"
        "    if pc.any(pc.equal(items.column('id'), 77)).as_py():\n"
        "        raise ValueError('item 77 is not allowed')\n"
        "    return items.append_column('extra', items.column('qty'))\n")
    first = run(_config("tx_fail", f"{mod}:add_total"), configs)
    assert set(states(first).values()) == {"success"}, states(first)
    with psycopg.connect(env["dw_url"]) as dw:
        before = dw.execute("SELECT id, qty, price, total, _loaded_at FROM shop.items ORDER BY id").fetchall()
        assert len(before) == 300 and all(r[3] == Decimal(r[1]) * r[2] for r in before)
        before_columns = columns(dw, "shop", "items")
    with psycopg.connect(source_db) as src:
        src.execute("UPDATE items SET qty = qty + 1")

    failed = run(_config("tx_fail", f"{mod}:picky"), configs)
    assert states(failed) == {"extract_items": "success", "load_items": "failed"}, states(failed)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT id, qty, price, total, _loaded_at FROM shop.items ORDER BY id").fetchall() == before
        assert columns(dw, "shop", "items") == before_columns  # no 'extra' column either
        failure = [r for r in audit_rows(dw, "tx_fail") if r[1] == "failure"]
    assert len(failure) == 1 and failure[0][0] == "load" and failure[0][2] == "shop.items"
    message = failure[0][3]
    day = partition_dates(env["lake"], "sql", "tx_fail", "items")[-1]
    lake_file = str(partition_files(env["lake"], "sql", "tx_fail", "items", day)[0])
    for part in ("shop.items", f"transform {mod}:picky", "batch 1 ", lake_file, "item 77 is not allowed"):
        assert part in message, (part, message)
    assert day == DAY.date()


def test_transform_config_and_import_errors(env: dict[str, Any], dw: psycopg.Connection, module: Any,
                                            tmp_path: Path) -> None:
    """The form is checked when the config is parsed; the function when the load imports it, before
    anything is written."""
    with pytest.raises(ConfigError) as bad:
        parse_source(_config("tx_bad", "transforms.no_function_here"), "tx_bad.yaml")
    assert "tables[0].transform" in str(bad.value) and "package.module:function" in str(bad.value)

    import pyarrow as pa
    from sndw.lake import write_partition
    from sndw.transform import TransformError
    from sndw.warehouse import LoadSpec, load_manifest

    manifest = write_partition(iter([pa.RecordBatch.from_pylist([{"id": 1}, {"id": 2}])]), tmp_path / "lake", "sql",
                               "tx", "t", DAY.date())
    mod = module("def untyped(batch):\n    return batch\n\n\ndef wrong_kind(batch: dict) -> dict:\n    return batch\n")
    cases = {
        "transforms.sndw_no_such_module:f": "cannot import transforms.sndw_no_such_module",
        f"{mod}:missing": "has no function 'missing'",
        f"{mod}:untyped": "annotate its first parameter 'batch' as pyarrow.RecordBatch or polars.DataFrame",
        f"{mod}:wrong_kind": "annotate its first parameter",
    }
    for reference, expected in cases.items():
        with pytest.raises(TransformError) as exc:
            load_manifest(dw, manifest, LoadSpec("public", "t", transform=reference))
        assert expected in str(exc.value) and reference.split(":")[0] in str(exc.value)
    assert dw.execute("SELECT to_regclass('public.t')").fetchone() == (None,)
