"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
PG_LOCAL = ROOT / "scripts" / "pg-local"
TEST_PG_DIR = Path(os.environ.get("SNDW_TEST_PG_DIR", ROOT / ".local" / "pg-test"))
# Each test session's databases carry its pid: a session starting beside another one (two local runs
# on the one test cluster) drops only the databases of sessions that have ended.
TEST_DB_PREFIX = f"sndw_t{os.getpid()}_"
TEMPLATE_DB = f"{TEST_DB_PREFIX}template"
_SESSION_DB = re.compile(r"^sndw_t(\d+)_")

# The tests' own Airflow home and DAG folder, so test runs never show up in the project's UI.
# Airflow reads these when it is first imported, which happens after this module.
TEST_AIRFLOW_HOME = Path(os.environ.get("SNDW_TEST_AIRFLOW_HOME", ROOT / ".local" / "airflow-test"))
TEST_DAGS = TEST_AIRFLOW_HOME / "dags"
TEST_SOURCES = TEST_DAGS / "sources"
TEST_SOURCES.mkdir(parents=True, exist_ok=True)
for dag_file in ("sndw_sources.py", "example_manual_pipeline.py", "sndw_maintenance.py"):
    (TEST_DAGS / dag_file).write_text((ROOT / "dags" / dag_file).read_text())
# The transforms package beside the DAGs (``transform: transforms.<module>:<function>``), as in dags/.
(TEST_DAGS / "transforms").mkdir(exist_ok=True)
for module in (ROOT / "dags" / "transforms").glob("*.py"):
    (TEST_DAGS / "transforms" / module.name).write_text(module.read_text())
os.environ["AIRFLOW_HOME"] = str(TEST_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(TEST_DAGS)
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", uuid.uuid4().hex * 2)

_metadb_spec = importlib.util.spec_from_file_location("airflow_metadb", ROOT / "scripts" / "airflow_metadb.py")
assert _metadb_spec is not None and _metadb_spec.loader is not None
metadb = importlib.util.module_from_spec(_metadb_spec)
_metadb_spec.loader.exec_module(metadb)


# The test servers (scripts/pg-local, s3-local, redis-local in .local/*-test): the session stops at
# its end those it started itself, not those that already ran (SNDW_TEST_KEEP_SERVERS=1 keeps them).
S3_LOCAL = ROOT / "scripts" / "s3-local"
REDIS_LOCAL = ROOT / "scripts" / "redis-local"
TEST_S3_DIR = Path(os.environ.get("SNDW_TEST_S3_DIR", ROOT / ".local" / "s3-test"))
TEST_REDIS_DIR = Path(os.environ.get("SNDW_TEST_REDIS_DIR", ROOT / ".local" / "redis-test"))
TEST_SERVERS = ((PG_LOCAL, "PG_LOCAL_DIR", TEST_PG_DIR), (S3_LOCAL, "S3_LOCAL_DIR", TEST_S3_DIR),
                (REDIS_LOCAL, "REDIS_LOCAL_DIR", TEST_REDIS_DIR))


def _server_running(script: Path, state_var: str, state: Path) -> bool:
    return subprocess.run([str(script), "status"], env={**os.environ, state_var: str(state)}, capture_output=True,
                          check=False, timeout=60).returncode == 0


RUNNING_BEFORE = {state: _server_running(*server) for server in TEST_SERVERS for state in server[2:]}


def _start_test_cluster() -> str:
    """Start the tests' PostgreSQL (idempotent, fast when it runs) and return its URL."""
    env = {**os.environ, "PG_LOCAL_DIR": str(TEST_PG_DIR)}
    started = subprocess.run([str(PG_LOCAL), "start"], env=env, capture_output=True, text=True, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"could not start the test PostgreSQL:\n{started.stdout}\n{started.stderr}")
    return subprocess.run([str(PG_LOCAL), "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()


# Airflow's metadata DB: the database `airflow` on the tests' cluster, whatever .env says. Set before
# Airflow is imported; created and migrated (once per cluster and Airflow version) by `airflow_db`.
PG_URL = _start_test_cluster()
AIRFLOW_METADATA_URL = metadb.metadata_url(PG_URL, "airflow")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = AIRFLOW_METADATA_URL
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", None)


DAY = datetime(2024, 1, 2, tzinfo=UTC)


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _session_alive(database: str) -> bool:
    """Whether the test session that made ``database`` still runs (older names carry no pid)."""
    match = _SESSION_DB.match(database)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server of the test session's own (scripts/pg-local in .local/pg-test)."""
    url = _start_test_cluster()
    with psycopg.connect(url, autocommit=True) as conn:
        names = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'sndw\\_t%' "
                             "OR datname = 'sndw_test_template'").fetchall()
        for (name,) in names:
            if not _session_alive(name):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    yield url


@pytest.fixture
def dw_url(pg_url: str) -> Iterator[str]:
    """A fresh database for one test, cloned from the template and dropped afterwards."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB)))
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def dw(dw_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dw_url) as conn:
        yield conn


@pytest.fixture
def source_db(pg_url: str) -> Iterator[str]:
    """A second fresh database, used as a SQL source."""
    name = f"{TEST_DB_PREFIX}src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def count(conn: psycopg.Connection, table: str) -> int:
    schema, _, name = table.rpartition(".")
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema or "public"), sql.Identifier(name))).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The tests' Airflow metadata DB (PostgreSQL: the database `airflow` on the tests' cluster),
    migrated once per cluster and Airflow version and kept between sessions."""
    try:
        metadb.ensure(AIRFLOW_METADATA_URL, TEST_AIRFLOW_HOME / "db-migrate.log")
    except SystemExit as exc:
        pytest.fail(str(exc))
    return TEST_AIRFLOW_HOME


def metadata_db() -> psycopg.Connection:
    """A connection to the tests' Airflow metadata DB, to read what Airflow stored."""
    return psycopg.connect(metadb.libpq_url(AIRFLOW_METADATA_URL))


# Every session marks its run with a file named by its pid: at its end, a session that finds no other
# live session's mark is the only one left, so the cluster is its to stop. (Counting the cluster's
# client connections kept it running after most `make test` runs: this session's own Airflow pool
# still held some.)
SESSIONS_DIR = TEST_PG_DIR.with_name(TEST_PG_DIR.name + ".sessions")
SESSIONS_DIR.mkdir(parents=True, exist_ok=True)
SESSION_MARK = SESSIONS_DIR / str(os.getpid())
SESSION_MARK.touch()


def _other_sessions() -> bool:
    """Whether another test session of this tree still runs (its mark names a live process)."""
    for mark in SESSIONS_DIR.iterdir():
        try:
            os.kill(int(mark.name), 0)
        except (ValueError, ProcessLookupError):
            mark.unlink(missing_ok=True)  # a session that ended without its clean-up
            continue
        except PermissionError:
            pass
        return True
    return False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the test servers this session started (`make test` leaves none running); a cluster
    another session still uses is left alone."""
    SESSION_MARK.unlink(missing_ok=True)
    if os.environ.get("SNDW_TEST_KEEP_SERVERS") or hasattr(session.config, "workerinput"):
        return
    for script, state_var, state in TEST_SERVERS:
        if RUNNING_BEFORE[state] or not _server_running(script, state_var, state):
            continue
        if script == PG_LOCAL and _other_sessions():
            continue
        subprocess.run([str(script), "stop"], env={**os.environ, state_var: str(state)}, capture_output=True,
                       check=False, timeout=180)


# ------------------------------------------------------------------ the lake on an S3-compatible server


@pytest.fixture(scope="session")
def s3_env() -> dict[str, str]:
    """The tests' own SeaweedFS S3 server (scripts/s3-local in .local/s3-test, started once, stopped
    at the session's end like the tests' PostgreSQL): the ``AWS_*`` and ``AIRFLOW_CONN_SNDW_LAKE`` variables."""
    env = {**os.environ, "S3_LOCAL_DIR": str(TEST_S3_DIR)}
    started = subprocess.run([str(S3_LOCAL), "start"], env=env, capture_output=True, text=True, check=False,
                             timeout=180)
    if started.returncode != 0:
        pytest.fail(f"could not start the test S3 server:\n{started.stdout}\n{started.stderr}")
    out = subprocess.run([str(S3_LOCAL), "env"], env=env, capture_output=True, text=True, check=True).stdout
    variables = subprocess.run(["bash", "-c", f"{out}\nenv -0"], capture_output=True, check=True, env={}).stdout
    names = ("AWS_", "AIRFLOW_CONN_SNDW_LAKE", "SNDW_S3_BUCKET")
    return {k: v for k, _, v in (item.partition("=") for item in variables.decode().split("\0") if item)
            if k.startswith(names)}


@pytest.fixture
def s3_lake(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh lake root on the test S3 server (``s3://<bucket>/<random prefix>``), with the
    credentials in the environment only, as the command line and the provider read them."""
    from sndw import storage

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    storage.use_filesystem("s3", _s3fs(s3_env))
    return f"s3://{s3_env['SNDW_S3_BUCKET']}/t-{uuid.uuid4().hex[:10]}"


def _s3fs(s3_env: dict[str, str]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key=s3_env["AWS_ACCESS_KEY_ID"], secret=s3_env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=s3_env["AWS_ENDPOINT_URL"], skip_instance_cache=True)


# ------------------------------------------------------------------ end-to-end runs through Airflow


@pytest.fixture
def env(airflow_db: Path, dw_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AIRFLOW_CONN_DW", dw_url)
    monkeypatch.setenv("SNDW_LAKE_ROOT", str(tmp_path / "lake"))
    return {"dw_url": dw_url, "lake": tmp_path / "lake", "tmp": tmp_path}


@pytest.fixture
def configs() -> Iterator[list[Path]]:
    written: list[Path] = []
    yield written
    for path in written:
        path.unlink(missing_ok=True)


def run(config: dict[str, Any], configs: list[Path], logical_date: datetime | None = DAY) -> Any:
    """Write the config into the tests' DAG folder (dag.test() syncs that folder), then run it."""
    from sndw.config import parse_source
    from sndw_airflow.factory import build_dag

    path = TEST_SOURCES / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    configs.append(path)
    dag = build_dag(parse_source(config, str(path)), path)
    return dag.test(logical_date=logical_date)


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}




# ------------------------------------------------------------------ the command line, Airflow-free


@pytest.fixture
def cli(tmp_path: Path, dw_url: str) -> Any:
    """Run the command line in a subprocess (cwd tmp_path) with an ``airflow`` package that refuses
    to import, the warehouse in AIRFLOW_CONN_DW and no other connection variable; returns
    (exit code, stdout parsed as JSON when it is, stderr)."""
    poison = tmp_path / "poison" / "airflow"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the CLI must not import Airflow')\n")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_", "PG_"))}
    base_env["PYTHONPATH"] = os.pathsep.join([str(poison.parent), str(ROOT / "include")])
    base_env["AIRFLOW_CONN_DW"] = dw_url

    def call(*args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = (),
             module: str = "etl.cli") -> tuple[int, Any, str]:
        full_env = {**base_env, **(env or {})}
        for name in drop:
            full_env.pop(name, None)
        result = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=full_env,
                                capture_output=True, text=True, timeout=180, check=False)
        try:
            out = json.loads(result.stdout) if result.stdout.strip() else None
        except json.JSONDecodeError:
            out = result.stdout
        return result.returncode, out, result.stderr

    return call
