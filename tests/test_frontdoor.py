"""The product's front door for a newcomer (issues 26 and 21): the demo API knows its checkout,
/sndw/docs works offline, the test servers are stopped, the Celery workers' log servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sndw.demo.api import DemoApi, served_by

from tests.conftest import ROOT


def test_the_demo_api_says_which_checkout_serves_it(tmp_path: Path) -> None:
    """`make demo`/`make up` reuse a demo API on their port only when it is their checkout's."""
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "other-checkout")
    server = subprocess.Popen([sys.executable, "-m", "sndw.demo.api", "--port", "0"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "SNDW_ROOT": ours})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        port = url.rsplit(":", 1)[1]
        assert served_by(url, ours) and not served_by(url, theirs)
        check = [sys.executable, "-m", "sndw.demo.api", "--is-ours", "--port", port, "--owner"]
        assert subprocess.run([*check, ours], check=False, timeout=60).returncode == 0
        assert subprocess.run([*check, theirs], check=False, timeout=60).returncode == 1
    finally:
        server.terminate()
        server.wait(timeout=10)
    with DemoApi() as anonymous:  # a server that names no owner is nobody's
        assert not served_by(anonymous.url, ours)
    assert not served_by(url, ours)  # nothing listens there any more


def test_a_test_session_stops_the_servers_it_started_and_keeps_those_that_ran(tmp_path: Path) -> None:
    """`make test` left its PostgreSQL running; a session now stops the test servers it started."""
    state = tmp_path / "pg-test"
    env = {**os.environ, "SNDW_TEST_PG_DIR": str(state), "SNDW_TEST_AIRFLOW_HOME": str(tmp_path / "airflow"),
           "SNDW_TEST_S3_DIR": str(tmp_path / "s3-test"), "SNDW_TEST_REDIS_DIR": str(tmp_path / "redis-test")}
    env.pop("SNDW_TEST_KEEP_SERVERS", None)
    pg = [str(ROOT / "scripts" / "pg-local"), "status"]
    pg_env = {**os.environ, "PG_LOCAL_DIR": str(state)}
    session = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_naming.py"]
    try:
        done = subprocess.run(session, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert state.is_dir()  # the session made and started its own cluster ...
        assert subprocess.run(pg, env=pg_env, capture_output=True, check=False).returncode == 3  # ... and stopped it
        subprocess.run([*pg[:1], "start"], env=pg_env, capture_output=True, check=True, timeout=180)
        done = subprocess.run(session, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert subprocess.run(pg, env=pg_env, capture_output=True, check=False).returncode == 0  # it ran before
    finally:
        subprocess.run([*pg[:1], "stop"], env=pg_env, capture_output=True, check=False, timeout=180)
