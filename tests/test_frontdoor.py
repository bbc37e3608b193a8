"""The product's front door for a newcomer (issues 26 and 21): the demo API knows its checkout,
/sndw/docs works offline, the test servers are stopped, the Celery workers' log servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sndw.demo.api import DemoApi, served_by


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
