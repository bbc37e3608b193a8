"""End-to-end tests for the scale-out servers: scripts/s3-local (SeaweedFS S3) and scripts/redis-local.

Real servers, real clients (s3fs, Airflow's aws connection, redis-py), no mocks. Every test uses
its own state folder under tmp_path, so the developer's .local/s3 and .local/redis are never
touched, and stops its server in a finally.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import redis
import s3fs
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parents[1]
# redis-py retries failed connects and logins with backoff (seconds each); a refusal is the answer.
NO_RETRY = {"socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}
S3_LOCAL = ROOT / "scripts" / "s3-local"
REDIS_LOCAL = ROOT / "scripts" / "redis-local"


def run(script: Path, state_var: str, state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, state_var: str(state)}
    proc = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{script.name} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def s3(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(S3_LOCAL, "S3_LOCAL_DIR", state, *args, check=check)


def rds(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(REDIS_LOCAL, "REDIS_LOCAL_DIR", state, *args, check=check)


def parse_exports(text: str) -> dict[str, str]:
    """The `export KEY=VALUE` lines, unquoted the way a shell `eval` would."""
    values = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        key, _, value = words[1].partition("=")
        values[key] = value
    return values


def answers(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port (no client retries to wait for)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def assert_secret_private(state: Path, secret: str) -> None:
    """No file that others may read holds the secret (weed and redis run with umask 077)."""
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & stat.S_IROTH:
            assert secret.encode() not in path.read_bytes(), f"{path} is world-readable and holds the secret"


def test_s3_local_env_before_start_is_a_clear_error(tmp_path: Path) -> None:
    proc = s3(tmp_path / "s3", "env", check=False)
    assert proc.returncode == 1 and "scripts/s3-local start" in proc.stderr
    assert s3(tmp_path / "s3", "status", check=False).returncode == 3


def test_s3_local_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "s3"
    try:
        assert "started on 127.0.0.1:" in s3(state, "start").stdout
        assert "already running" in s3(state, "start").stdout  # idempotent
        assert s3(state, "status").returncode == 0
        env = parse_exports(s3(state, "env").stdout)
        assert set(env) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                            "AWS_DEFAULT_REGION", "SNDW_S3_BUCKET", "AIRFLOW_CONN_SNDW_LAKE"}
        endpoint, bucket = env["AWS_ENDPOINT_URL"], env["SNDW_S3_BUCKET"]
        assert endpoint.startswith("http://127.0.0.1:") and s3(state, "url").stdout.strip() == endpoint
        endpoint_port = int(endpoint.rsplit(":", 1)[1])
        assert answers(endpoint_port)
        assert bucket == "sndw-lake" and env["AWS_DEFAULT_REGION"] == "us-east-1"
        conn = json.loads(env["AIRFLOW_CONN_SNDW_LAKE"])
        assert conn == {"conn_type": "aws", "login": env["AWS_ACCESS_KEY_ID"],
                        "password": env["AWS_SECRET_ACCESS_KEY"],
                        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}

        fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=endpoint, skip_instance_cache=True)
        fs.pipe(f"{bucket}/probe/hello.txt", b"hello lake")
        assert fs.cat(f"{bucket}/probe/hello.txt") == b"hello lake"
        assert fs.ls(f"{bucket}/probe", refresh=True) == [f"{bucket}/probe/hello.txt"]

        # Through the Airflow connection the env defines, as the lake's ObjectStoragePath uses it.
        from airflow.sdk import ObjectStoragePath

        monkeypatch.setenv("AIRFLOW_CONN_SNDW_LAKE", env["AIRFLOW_CONN_SNDW_LAKE"])
        path = ObjectStoragePath(f"s3://sndw_lake@{bucket}/probe/airflow.txt")
        path.write_bytes(b"via airflow")
        fs.invalidate_cache()  # s3fs cached the listing of probe/ above
        assert fs.cat(f"{bucket}/probe/airflow.txt") == b"via airflow"

        wrong = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret="not-the-secret",
                                  endpoint_url=endpoint, skip_instance_cache=True)
        with pytest.raises(PermissionError):
            wrong.ls(bucket, refresh=True)
        anonymous = s3fs.S3FileSystem(anon=True, endpoint_url=endpoint, skip_instance_cache=True)
        with pytest.raises(PermissionError):
            anonymous.ls(bucket, refresh=True)

        assert_secret_private(state, env["AWS_SECRET_ACCESS_KEY"])
        assert stat.S_IMODE((state / "secret_key").stat().st_mode) == 0o600

        assert "stopped" in s3(state, "stop").stdout
        assert "not running" in s3(state, "stop").stdout  # idempotent
        assert s3(state, "status", check=False).returncode == 3
        assert not answers(endpoint_port)

        # A restart keeps the identity and the data.
        s3(state, "start")
        assert parse_exports(s3(state, "env").stdout) == env
        assert fs.cat(f"{bucket}/probe/hello.txt") == b"hello lake"
    finally:
        s3(state, "stop", check=False)
    assert s3(state, "status", check=False).returncode == 3


def test_redis_local_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "redis"
    try:
        assert "started on 127.0.0.1:" in rds(state, "start").stdout
        assert "already running" in rds(state, "start").stdout  # idempotent
        assert rds(state, "status").returncode == 0
        env = parse_exports(rds(state, "env").stdout)
        url = env["SNDW_REDIS_URL"]
        assert set(env) == {"SNDW_REDIS_URL"} and rds(state, "url").stdout.strip() == url
        client = redis.Redis.from_url(url, **NO_RETRY)
        assert client.ping() is True
        port = client.connection_pool.connection_kwargs["port"]
        password = client.connection_pool.connection_kwargs["password"]
        # Without the password (RESP2, Celery's default): NOAUTH.
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            redis.Redis(host="127.0.0.1", port=port, protocol=2, **NO_RETRY).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="not-the-password", **NO_RETRY).ping()
        assert_secret_private(state, password)
        assert stat.S_IMODE((state / "password").stat().st_mode) == 0o600
        client.close()

        assert "stopped" in rds(state, "stop").stdout
        assert "not running" in rds(state, "stop").stdout  # idempotent
        assert rds(state, "status", check=False).returncode == 3
        assert not answers(port)
    finally:
        rds(state, "stop", check=False)
