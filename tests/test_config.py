from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sndw.cli import main as cli_main
from sndw.config import HttpSource, SqlSource, iter_sources, load_source_file, table_spec
from sndw.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

VALID_SQL = """
name: crm
kind: sql
conn_id: crm_db
start_date: 2024-01-01
tables:
  - name: orders
    table: public.orders
    write_mode: merge
    primary_key: [orderId]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_sample_configs_are_valid() -> None:
    parsed = dict(iter_sources(ROOT / "dags" / "sources"))
    assert parsed, "the sample configs are missing"
    for path, source in parsed.items():
        assert not isinstance(source, ConfigError), f"{path}: {source}"


def test_valid_sql_config(tmp_path: Path) -> None:
    source = load_source_file(write(tmp_path, "crm.yaml", VALID_SQL))
    assert isinstance(source, SqlSource)
    table = source.tables[0]
    assert (table.target, table.key_columns, table.write_mode) == ("orders", ["order_id"], "merge")
    assert source.schedule == "@daily" and source.target_schema == "public" and source.retries == 2


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    text = VALID_SQL.replace("name: crm\n", "")
    assert load_source_file(write(tmp_path, "billing.yaml", text)).name == "billing"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (VALID_SQL.replace("write_mode: merge", "write_mode: upsert"), "tables[0].write_mode", "'replace'"),
        (VALID_SQL.replace("kind: sql", "kind: ftp"), "kind", "http, sql, file"),
        (VALID_SQL.replace("kind: sql\n", ""), "kind", "missing key 'kind'"),
        (VALID_SQL.replace("conn_id: crm_db\n", ""), "conn_id", "Field required"),
        (VALID_SQL.replace("    primary_key: [orderId]\n", ""), "tables[0]", "needs primary_key"),
        (VALID_SQL.replace("table: public.orders", "query: SELECT 1\n    table: x"), "tables[0]", "exactly one"),
        (VALID_SQL + "    colour: blue\n", "tables[0].colour", "unknown key"),
        (VALID_SQL.replace("start_date: 2024-01-01", "start_date: yesterday"), "start_date", "date"),
        (VALID_SQL.replace("name: crm", "name: Bad-Name"), "name", "lower-case"),
        (VALID_SQL.replace("tables:", "tables: []\nx:"), "tables", "crm.yaml: x: unknown key"),  # every error
        # a second run of a date would replace its rows with only the rows past the watermark
        (VALID_SQL.replace("write_mode: merge", "write_mode: partition") + "    incremental: {cursor: updated_at}\n",
         "tables[0]", "incremental with write_mode 'partition'"),
    ],
)
def test_invalid_configs_name_file_and_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = write(tmp_path, "crm.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_source_file(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert field in message
    assert words in message


def test_http_pagination_errors_point_inside_the_table(tmp_path: Path) -> None:
    text = """
kind: http
conn_id: api
start_date: 2024-01-01
tables:
  - name: items
    endpoint: /items
    pagination: {type: offset, limitt: 10}
"""
    with pytest.raises(ConfigError, match=r"tables\[0\]\.pagination\.limitt: unknown key"):
        load_source_file(write(tmp_path, "api.yaml", text))


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_source_file(write(tmp_path, "x.yaml", "kind: sql\ntables: [\n"))


def test_folder_yields_each_file_with_its_own_result(tmp_path: Path) -> None:
    write(tmp_path, "b_good.yaml", VALID_SQL.replace("name: crm", "name: good"))
    write(tmp_path, "a_bad.yaml", "kind: nope\n")
    write(tmp_path, "c_dup.yaml", VALID_SQL.replace("name: crm", "name: good"))
    write(tmp_path, "_ignored.yaml", "not: parsed")
    results = list(iter_sources(tmp_path))
    assert [p.name for p, _ in results] == ["a_bad.yaml", "b_good.yaml", "c_dup.yaml"]
    assert isinstance(results[0][1], ConfigError)
    assert not isinstance(results[1][1], ConfigError)
    assert isinstance(results[2][1], ConfigError) and "already used by b_good.yaml" in str(results[2][1])


def test_table_spec_for_hand_written_operators() -> None:
    spec = table_spec("http", {"name": "users", "endpoint": "/users"})
    assert spec.write_mode == "replace"
    with pytest.raises(ConfigError, match="endpoint"):
        table_spec("http", {"name": "users"})


def test_retry_backoff_accepts_bool_or_multiplier(tmp_path: Path) -> None:
    base = VALID_SQL.replace("tables:", "retry_exponential_backoff: {}\ntables:")
    assert load_source_file(write(tmp_path, "a.yaml", base.format("false"))).retry_exponential_backoff == 0
    assert load_source_file(write(tmp_path, "b.yaml", base.format("3"))).retry_exponential_backoff == 3


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", VALID_SQL)
    assert cli_main(["validate", str(good)]) == 0
    bad = write(tmp_path, "bad.yaml", "kind: http\n")
    assert cli_main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"INVALID {bad}" in err


def test_http_source_defaults(tmp_path: Path) -> None:
    text = "kind: http\nconn_id: api\nstart_date: 2024-01-01\ntables:\n  - name: users\n    endpoint: /users\n"
    source = load_source_file(write(tmp_path, "api.yaml", text))
    assert isinstance(source, HttpSource)
    assert source.tables[0].pagination.type == "none"


def test_a_source_rate_limit_is_shared_by_the_tables_that_inherit_it(tmp_path: Path) -> None:
    text = """
kind: http
conn_id: api
start_date: 2024-01-01
auth: bearer
requests_per_second: 9
tables:
  - {name: a, endpoint: /a}
  - {name: b, endpoint: /b}
  - {name: c, endpoint: /c}
  - {name: d, endpoint: /d, requests_per_second: 1, auth: none}
"""
    source = load_source_file(write(tmp_path, "api.yaml", text))
    assert isinstance(source, HttpSource)
    limits = {t.name: t.requests_per_second for t in source.tables}
    assert limits == {"a": 3, "b": 3, "c": 3, "d": 1}  # a, b and c together: the source's 9/s
    assert [t.auth for t in source.tables] == ["bearer", "bearer", "bearer", "none"]


def test_libyaml_and_pure_python_loaders_read_every_config_alike() -> None:
    """Configs are read with libyaml's parser when PyYAML has it; a file it refuses is read again by
    the pure-Python loader for the message. Both must give the same document and duplicate keys."""
    from sndw import config

    assert config._FastUniqueKeyLoader is not None, "PyYAML without libyaml: the DAG-folder parse is 3-4x slower"
    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.glob("dags/sources/*.yaml"), *root.glob("tests/bad_inputs/configs/*.y*ml")])
    assert len(files) > 10
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        outcomes = []
        for fast in (True, False):
            try:
                outcomes.append(config._load_yaml(text, fast=fast))
            except (yaml.YAMLError, RecursionError):  # both loaders must refuse the same files
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1], path.name
