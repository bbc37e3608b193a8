"""Bad source configs (issue 9 item 14): each is named with all its problems, by `sndw validate`
and in the DAG file, and never takes other sources (or the project's own DAGs) down with it.

The corpus is tests/bad_inputs/configs: one YAML file per case, outcomes in its cases.yaml.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from sndw.cli import main as cli_main
from sndw.config import load_source_file
from sndw.errors import ConfigError
from sndw.naming import INVALID_CONFIG_PREFIX, invalid_config_dag_id, reserved_dag_id, validate_source_name

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "bad_inputs" / "configs"
CASES: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())
GOOD = "kind: sql\nconn_id: crm_db\nstart_date: 2024-01-01\ntables:\n  - name: orders\n    table: public.orders\n"


def _cases(*outcomes: str) -> list[Any]:
    return [pytest.param(case, id=name) for name, case in CASES.items() if case["outcome"] in outcomes]


def test_every_corpus_file_has_a_case() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "cases.yaml"}
    assert files == {case["file"] for case in CASES.values()}


def _assert_problems(message: str, path: Path, expected: list[list[str]]) -> None:
    """Each expected [field, fragment] is one line `<file>: <field>: ...fragment...`, in this order."""
    lines = message.splitlines()
    assert len(lines) == len(expected), message
    for line, (field, fragment) in zip(lines, expected, strict=True):
        prefix = f"{path}: {field}: " if field else f"{path}: "
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
        assert fragment in line, f"{fragment!r} not in {line!r}"


@pytest.mark.parametrize("case", _cases("error"))
def test_a_bad_config_names_the_file_and_every_problem(case: dict[str, Any]) -> None:
    path = CORPUS / case["file"]
    with pytest.raises(ConfigError) as info:
        load_source_file(path)
    _assert_problems(str(info.value), path, case["errors"])
    first_field, _ = case["errors"][0]
    assert (info.value.path, info.value.field) == (str(path), first_field)  # the first problem, for callers
    assert [f for f, _ in info.value.problems] == [f for f, _ in case["errors"]]


@pytest.mark.parametrize("case", _cases("valid", "unbuildable"))
def test_a_good_config_loads_with_its_values(case: dict[str, Any]) -> None:
    source = load_source_file(CORPUS / case["file"])
    for attribute, value in case.get("values", {}).items():
        assert getattr(source, attribute) == value


def test_merge_keys_are_not_duplicates() -> None:
    source = load_source_file(CORPUS / "merge_key_override.yaml")
    assert [(t.name, t.table, t.write_mode) for t in source.tables] == [
        ("orders", "public.orders", "append"), ("orders_copy", "public.orders", "replace")]


@pytest.mark.parametrize(("yaml_text", "field"), [
    ("yes: 1\ntrue: 2\n", "true"),  # YAML 1.1 reads both as True: one dict key
    ("tables:\n  - {name: a, name: b}\n", "tables[0].name"),
    ("x: &x {a: 1}\ny: {<<: *x, a: 2, b: 1, b: 2}\n", "y.b"),
])
def test_duplicate_keys_are_found_as_yaml_reads_them(tmp_path: Path, yaml_text: str, field: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_source_file(path)
    assert info.value.field == field and "duplicate key" in info.value.detail


def test_invalid_config_dag_ids_are_unique_stable_and_valid() -> None:
    names = ["a-b.yaml", "a_b.yaml", "a_b.yml", "a b.yaml", "a?b.yaml", "A_b.yaml", "é.yaml", "x" * 300 + ".yaml"]
    ids = [invalid_config_dag_id(Path("/some/folder") / n) for n in names]
    assert len(set(ids)) == len(names)
    assert ids == [invalid_config_dag_id(n) for n in names]  # the folder does not matter; nor does the run
    for dag_id in ids:
        assert dag_id.startswith(INVALID_CONFIG_PREFIX)
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,250}", dag_id), dag_id
        with pytest.raises(ValueError):  # so no source's DAG can take the same id
            validate_source_name(dag_id)


def test_cli_validate_names_each_bad_file_with_all_its_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for case in CASES.values():
        shutil.copy(CORPUS / case["file"], tmp_path)
    (tmp_path / "good.yaml").write_text(GOOD)
    assert cli_main(["validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    for case in CASES.values():
        path = tmp_path / case["file"]
        mine = [line.removeprefix("INVALID ") for line in err.splitlines() if line.startswith(f"INVALID {path}: ")]
        if case["outcome"] == "error":
            _assert_problems("\n".join(mine), path, case["errors"])
        else:
            assert not mine and f"ok      {path}: " in out
    assert f"ok      {tmp_path / 'good.yaml'}: " in out
    invalid = sum(case["outcome"] == "error" for case in CASES.values())
    assert f"{len(CASES) + 1 - invalid} valid, {invalid} invalid" in out
    # The environment of `validate` may not be the DAGs': an unset variable in base_path is a warning.
    assert (f"WARNING {tmp_path / 'base_path_unset.yaml'}: base_path: ${{SNDW_TEST_NOPE_UNSET}} is not set"
            in err)


# A folder, a link that loops and a link to nothing, named like configs: each was skipped silently.
NOT_FILES = {"folder.yaml": "a folder, not a config file", "loop.yaml": "cannot read the file: Too many levels",
             "dangling.yml": "cannot read the file: No such file"}


def _not_files(folder: Path) -> None:
    (folder / "folder.yaml").mkdir()
    (folder / "loop.yaml").symlink_to("loop.yaml")
    (folder / "dangling.yml").symlink_to("nowhere.yml")


def test_cli_validate_names_what_is_no_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _not_files(tmp_path)
    (tmp_path / "good.yaml").write_text(GOOD)
    assert cli_main(["validate", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    for name, fragment in NOT_FILES.items():
        assert f"INVALID {tmp_path / name}: {fragment}" in err, err
    assert "1 valid, 3 invalid" in out


# ------------------------------------------------------------------------------ the DAG file


def _dag_folder(tmp_path: Path) -> Path:
    """The project's DAG files, with the corpus and one good config as its sources."""
    dags = tmp_path / "dags"
    (dags / "sources").mkdir(parents=True)
    for dag_file in (ROOT / "dags").glob("*.py"):
        shutil.copy(dag_file, dags)
    for case in CASES.values():
        shutil.copy(CORPUS / case["file"], dags / "sources")
    (dags / "sources" / "good.yaml").write_text(GOOD)
    _not_files(dags / "sources")
    return dags


@pytest.fixture(scope="module")
def corpus_bag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(_dag_folder(tmp_path_factory.mktemp("corpus"))))


def test_the_dag_file_builds_every_good_source_despite_the_bad_ones(corpus_bag: Any) -> None:
    assert corpus_bag.import_errors == {}
    assert "good" in corpus_bag.dag_ids
    for name, case in CASES.items():
        if case["outcome"] == "valid":
            assert Path(case["file"]).stem in corpus_bag.dag_ids, name


@pytest.mark.parametrize("case", _cases("error", "unbuildable"))
def test_each_bad_file_has_its_own_error_dag(corpus_bag: Any, case: dict[str, Any]) -> None:
    dag = corpus_bag.dags[invalid_config_dag_id(case["file"])]
    assert dag.tags and "config-error" in dag.tags and dag.schedule is None
    path = Path(corpus_bag.dag_folder) / "sources" / case["file"]
    field, fragment = case["errors"][0]
    assert (f"{path}: {field}: " if field else f"{path}: ") in dag.description
    assert fragment in dag.description
    task = dag.get_task("config_error")
    _assert_problems(task.message, path, case["errors"])


@pytest.mark.parametrize("name", NOT_FILES)
def test_what_is_no_config_file_has_its_own_error_dag(corpus_bag: Any, name: str) -> None:
    dag = corpus_bag.dags[invalid_config_dag_id(name)]
    path = Path(corpus_bag.dag_folder) / "sources" / name
    assert f"{path}: {NOT_FILES[name]}" in dag.description and "config-error" in dag.tags


def test_one_error_dag_per_bad_file(corpus_bag: Any) -> None:
    error_dags = sorted(d for d in corpus_bag.dag_ids if d.startswith(INVALID_CONFIG_PREFIX))
    bad = [c for c in CASES.values() if c["outcome"] != "valid"]
    assert error_dags == sorted([*(invalid_config_dag_id(c["file"]) for c in bad), *map(invalid_config_dag_id, NOT_FILES)])


def test_a_source_cannot_replace_the_projects_own_dags(corpus_bag: Any) -> None:
    """reserved_replay.yaml and reserved_example.yaml ask for these ids: the real DAGs keep them."""
    assert Path(corpus_bag.dags["sndw_replay"].fileloc).name == "sndw_maintenance.py"
    assert Path(corpus_bag.dags["example_manual_pipeline"].fileloc).name == "example_manual_pipeline.py"


def test_every_dag_the_project_defines_is_reserved() -> None:
    """A new maintenance DAG whose id a source could take fails here until naming reserves it."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    own = [d for d, dag in bag.dags.items() if Path(dag.fileloc).name != "sndw_sources.py"]
    assert "sndw_replay" in own
    assert [d for d in own if reserved_dag_id(d) is None] == []
