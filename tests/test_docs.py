"""Every command and source config shown in README.md and docs/ works as written (issue 26).

The docs' fenced blocks are read from the Markdown itself, so they cannot drift from the product:

- every ```yaml block is a source config that sndw's own loader accepts, unless the line before it
  is ``<!-- fragment of <file> -->``: then each of its lines is a line of that file;
- every ```bash / ```sh block runs with bash, in document order, in a copy of the repository set up
  as `make demo` leaves it (its sample sources on the tests' PostgreSQL, the demo date loaded),
  after ``. scripts/dev-env``; a block whose line before is ``<!-- doc-test: skip: <reason> -->``
  is left out, and the reason must name the test that covers it;
- relative links point at files and headings that exist; README.md stays under 300 lines; the
  layout in docs/README.md names every script and module; the demo's data covers the dates the
  docs use and nothing in the future.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.config import ConfigError, load_source_file
from sndw.demo import manufacturing

from tests.conftest import PG_URL, ROOT, TEST_PG_DIR, with_database

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!-- doc-test: skip: (?P<reason>.+?) -->$")
FRAGMENT = re.compile(r"^<!-- fragment of (?P<file>\S+) -->$")
MAX_SKIPS = 6


@dataclass
class Block:
    path: Path
    line: int  # the block's first line in the file (1-based)
    lang: str
    text: str
    mark: str  # the HTML comment on the line before the fence, or ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{i + 1}: a fence that is never closed"
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found.append(Block(path, i + 2, opening.group(1), "\n".join(lines[i + 1:end]) + "\n",
                           before if before.startswith("<!--") else ""))
        i = end + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]
CONFIGS = [b for b in ALL if b.lang == "yaml"]
COMMANDS = [b for b in ALL if b.lang in ("bash", "sh")]


def _strip(line: str) -> str:
    return line.split(" #", 1)[0].strip()


@pytest.mark.parametrize("block", CONFIGS, ids=[b.where for b in CONFIGS])
def test_yaml_block_is_a_valid_source_config(block: Block, tmp_path: Path) -> None:
    fragment = FRAGMENT.match(block.mark)
    if fragment:
        whole = {_strip(line) for line in (ROOT / fragment.group("file")).read_text().splitlines()}
        missing = [line for line in block.text.splitlines() if _strip(line) and _strip(line) not in whole]
        assert not missing, f"{block.where}: lines not in {fragment.group('file')}: {missing}"
        return
    assert not block.mark, f"{block.where}: unknown mark {block.mark!r}"
    path = tmp_path / "docs_example.yaml"
    path.write_text(block.text)
    try:
        load_source_file(path)
    except ConfigError as exc:
        pytest.fail(f"{block.where}: the config shown does not validate:\n{exc}")


def test_every_skip_names_the_test_that_covers_it() -> None:
    skips = [b for b in COMMANDS if SKIP.match(b.mark)]
    for block in skips:
        reason = SKIP.match(block.mark).group("reason")  # type: ignore[union-attr]
        named = re.findall(r"tests/test_\w+\.py", reason)
        assert named, f"{block.where}: a skipped block must say which test covers it: {reason!r}"
        for test in named:
            assert (ROOT / test).is_file(), f"{block.where}: {test} does not exist"
    assert len(skips) <= MAX_SKIPS, [b.where for b in skips]
    unknown = [b.where for b in COMMANDS if b.mark and not SKIP.match(b.mark)]
    assert not unknown, f"command blocks with an unknown mark: {unknown}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_links_point_at_files_and_headings_that_exist() -> None:
    broken = []
    for path in DOCS:
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_a_short_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300, len(lines)


def test_layout_names_every_script_and_module() -> None:
    layout = next(b.text for b in blocks(ROOT / "docs" / "README.md") if "include/sndw/" in b.text)
    tracked = subprocess.run(["git", "ls-files", "scripts", "include", "bench", "dags"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    names = {Path(p).stem for p in tracked if not p.endswith("__init__.py") and "/results/" not in p
             and not p.startswith("dags/sources/")}
    missing = sorted(n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", layout))
    assert not missing, f"docs/README.md's layout does not name: {missing}"


def test_demo_data_covers_the_documented_dates_and_nothing_in_the_future(source_db: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(source_db) as conn:
        counts = manufacturing.create(conn)
        assert set(counts.values()) == {counts["springs"]}
        per_day = dict(conn.execute("SELECT produced_at::date, count(*) FROM springs GROUP BY 1").fetchall())
        latest = conn.execute("SELECT max(updated_at), max(produced_on) FROM bodies").fetchone()
        latest_springs = conn.execute("SELECT max(produced_at) FROM springs").fetchone()
    first, last = manufacturing.DOCUMENTED_DAYS
    documented = [first + timedelta(days=d) for d in range((last - first).days + 1)]
    recent = [now.date() - timedelta(days=d) for d in range(1, manufacturing.RECENT_DAYS + 1)]
    assert all(per_day.get(day, 0) >= 38 for day in documented + recent), per_day
    assert latest is not None and latest[0] <= datetime.now(UTC) and latest[1] <= now.date()
    assert latest_springs is not None and latest_springs[0] <= datetime.now(UTC)
    # What the README says a run of 2024-01-03 loads, and the window it names.
    readme = (ROOT / "README.md").read_text()
    assert per_day[documented[2]] == 39 and "the 39 springs produced on 2024-01-03" in readme
    assert f"**{first:%Y-%m-%d} to {last:%Y-%m-%d}**" in readme
    assert f"**the {manufacturing.RECENT_DAYS} days before the" in readme


# ---------------------------------------------------------------- the command blocks, run as written


def _demo_module() -> Any:
    spec = importlib.util.spec_from_file_location("sndw_demo_script", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo_checkout(tmp_path: Path, airflow_db: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the repository as `make demo` leaves it, on the tests' PostgreSQL: the local
    warehouse (`scripts/pg-local` pointed at the tests' cluster, its database `dw` emptied), the
    sample sources made by scripts/demo.py's own code, the demo date loaded; and the environment
    the commands run in."""
    checkout = tmp_path / "sndw"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)  # mtimes kept: make sees .venv up to date
    (checkout / ".venv").symlink_to(ROOT / ".venv")

    with psycopg.connect(with_database(PG_URL, "postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS dw WITH (FORCE)")
        conn.execute("CREATE DATABASE dw OWNER dw")
    demo = _demo_module()
    data_dir = checkout / ".local" / "demo"
    data_dir.mkdir(parents=True)
    source_url = demo.create_sources(PG_URL, data_dir)
    demo.write_connections(data_dir, source_url, demo.DEMO_API_PORT)

    dropped = ("AIRFLOW_CONN_", "DW_", "PG_", "SNDW_", "AIRFLOW_HOME", "AIRFLOW__CORE__", "AIRFLOW__API_AUTH__",
               "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update({
        "PG_LOCAL_DIR": str(TEST_PG_DIR),  # the local PostgreSQL of the docs is the tests' cluster
        # make demo imports this connection into Airflow's metadata DB; the tests' metadata DB is
        # shared by every test, so here it is the variable Airflow and the command line read first.
        "AIRFLOW_CONN_MANUFACTURING_SRC": source_url,
    })
    # The DAG runs of make demo, for its date, through the same pipeline as the DAGs.
    for config in ("manufacturing", "demo_csv"):
        done = _bash(checkout, env, f"python -m etl.cli sync dags/sources/{config}.yaml --date {demo.DEMO_DATE}")
        assert done.returncode == 0, f"setting up as make demo does failed:\n{done.stdout}\n{done.stderr}"
    yield checkout, env
    with psycopg.connect(with_database(PG_URL, "postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS dw WITH (FORCE)")
        conn.execute("CREATE DATABASE dw OWNER dw")


PRELUDE = """. scripts/dev-env >/dev/null
set -eE -o pipefail
trap 'echo "doc-test: failed with exit code $?: {path}:$((LINENO + {offset})): $BASH_COMMAND" >&2' ERR
"""


def _bash(cwd: Path, env: dict[str, str], script: str, block: Block | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` with bash after ``. scripts/dev-env``, stopping at the first command that fails and
    naming it, with its line in the Markdown file of ``block``."""
    path = block.path.relative_to(ROOT) if block else "script"
    first = block.line if block else 1
    prelude = PRELUDE.format(path=path, offset=first - 1 - PRELUDE.count("\n"))
    return subprocess.run(["bash", "-c", prelude + script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.slow
def test_command_blocks_run_as_written(demo_checkout: tuple[Path, dict[str, str]]) -> None:
    checkout, env = demo_checkout
    failures = []
    ran = 0
    for block in COMMANDS:
        if SKIP.match(block.mark):
            continue
        ran += 1
        done = _bash(checkout, env, block.text, block)
        if done.returncode != 0:
            failed = re.findall(r"doc-test: failed .*", done.stderr)
            failures.append(f"{block.where}: exit {done.returncode}: {failed[-1] if failed else block.text.strip()}\n"
                            f"  stderr: {done.stderr.strip()[-1500:]}\n  stdout: {done.stdout.strip()[-800:]}")
    assert ran >= 10, ran
    assert not failures, f"{len(failures)} of {ran} command blocks failed:\n\n" + "\n\n".join(failures)
    # What the blocks claim: the README's run of 2024-01-03 loaded its 39 springs, and the walk-through
    # loaded three dates of its own source.
    with psycopg.connect(PG_URL) as dw:
        springs = dw.execute("SELECT count(*) FROM raw.springs WHERE _partition_date = '2024-01-03'").fetchone()
        mine = dw.execute("SELECT _partition_date::text, count(*) FROM factory.springs GROUP BY 1 ORDER BY 1").fetchall()
    assert springs == (39,)
    assert mine == [("2024-01-03", 39), ("2024-01-04", 39), ("2024-01-05", 39)]
