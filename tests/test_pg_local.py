"""End-to-end tests for scripts/pg-local against a real PostgreSQL server (no mocks).

Each test uses its own PG_LOCAL_DIR, so the project's own cluster in .local/pg is
never touched. Skipped only when no PostgreSQL server binaries exist at all.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pg-local"
IS_ROOT = os.geteuid() == 0


def _has_server_bins(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _server_bins_available() -> bool:
    """Same search order as the script: $PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates.extend(glob.glob("/usr/lib/postgresql/*/bin"))
    return any(c and _has_server_bins(c) for c in candidates)


pytestmark = pytest.mark.skipif(
    not _server_bins_available(), reason="no PostgreSQL server binaries (initdb, pg_ctl, postgres) found"
)


def run(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PG_LOCAL_DIR": str(state)}
    proc = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"pg-local {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_env(state: Path) -> dict[str, str]:
    """Parse the `export KEY=VALUE` lines the way a shell `eval` would."""
    values = {}
    for line in run(state, "env").stdout.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        key, _, value = words[1].partition("=")
        values[key] = value
    return values


def connect(state: Path) -> psycopg.Connection:
    env = read_env(state)
    return psycopg.connect(
        host=env["DW_HOST"],
        port=int(env["DW_PORT"]),
        dbname=env["DW_DATABASE"],
        user=env["DW_USERNAME"],
        password=env["DW_PASSWORD"],
        connect_timeout=10,
        autocommit=True,
    )


def postmaster_pid(state: Path) -> int:
    return int((state / "server" / "data" / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def reachable_state() -> Iterator[Path]:
    """A state folder under /tmp with opened permissions, so the postgres account
    (used when running as root) can reach it directly."""
    parent = Path(tempfile.mkdtemp(prefix="sndw-pg-local-test-", dir="/tmp"))
    parent.chmod(0o755)
    state = parent / "state"
    try:
        yield state
    finally:
        run(state, "destroy", check=False)
        shutil.rmtree(parent, ignore_errors=True)


def test_lifecycle(reachable_state: Path) -> None:
    state = reachable_state

    # Nothing initialised yet: env refuses, status reports "not running".
    assert run(state, "env", check=False).returncode != 0
    assert run(state, "status", check=False).returncode == 3

    started = run(state, "start")
    assert "127.0.0.1:" in started.stdout and str(state) in started.stdout
    assert run(state, "status").returncode == 0

    password_file = state / "password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    env = read_env(state)
    assert env["DW_HOST"] == "127.0.0.1"
    assert env["DW_DATABASE"] == "dw" and env["DW_USERNAME"] == "dw"
    assert env["DW_PASSWORD"] == password_file.read_text().strip()
    assert run(state, "url").stdout.strip() == (
        f"postgresql://dw:{env['DW_PASSWORD']}@127.0.0.1:{env['DW_PORT']}/dw"
    )

    with connect(state) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_encoding", "lc_collate", "listen_addresses", "fsync")
        }
        assert settings == {
            "server_encoding": "UTF8",
            "lc_collate": "C",
            "listen_addresses": "127.0.0.1",
            "fsync": "on",
        }
        conn.execute("CREATE TABLE survivor (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO survivor VALUES (1, 'before kill -9')")

    # psql subcommand passes its arguments through.
    assert run(state, "psql", "-tAc", "SELECT count(*) FROM survivor").stdout.strip() == "1"

    # A second start is a quick no-op.
    t0 = time.monotonic()
    again = run(state, "start")
    assert time.monotonic() - t0 < 3
    assert "already running" in again.stdout

    # Crash the postmaster; start must recover and the committed row must survive.
    os.kill(postmaster_pid(state), signal.SIGKILL)
    time.sleep(0.2)
    run(state, "start")
    assert run(state, "status").returncode == 0
    with connect(state) as conn:
        assert conn.execute("SELECT note FROM survivor WHERE id = 1").fetchone() == ("before kill -9",)

    # Stop is idempotent; env still works on a stopped cluster.
    run(state, "stop")
    run(state, "stop")
    status = run(state, "status", check=False)
    assert status.returncode == 3 and status.stdout.strip()
    assert read_env(state)["DW_PORT"]

    run(state, "destroy")
    assert not (state / "server").exists()
    assert not (state / "password").exists()
    assert run(state, "status", check=False).returncode == 3
    assert run(state, "env", check=False).returncode != 0


@pytest.mark.skipif(not IS_ROOT, reason="the /tmp fallback is only needed when root delegates to postgres")
def test_root_falls_back_to_tmp_when_postgres_cannot_reach_state(tmp_path: Path) -> None:
    # pytest's tmp dirs are root-only (mode 700), so the postgres account cannot get there.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    state = locked / "state"
    try:
        run(state, "start")
        server = state / "server"
        assert server.is_symlink()
        target = Path(os.readlink(server))
        assert target.parent == Path("/tmp") and target.name.startswith("sndw-pg-")
        with connect(state) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("dw",)
        run(state, "destroy")
        assert not target.exists()
    finally:
        run(state, "destroy", check=False)
