"""Offline checks of the Docker path: docker-compose.yaml, docker/Dockerfile, .dockerignore.

There is no Docker engine in CI, so the compose file is validated against the official
Compose Specification JSON schema (compose-spec/compose-spec, Apache-2.0) as shipped inside
the pinned dev dependency check-jsonschema (requirements-dev.txt), then checked for the
project's own invariants that the schema cannot express.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK_FILE = ROOT / "requirements.lock"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
LONG_RUNNING = AIRFLOW_SERVICES - {"airflow-init"}
DB_SERVICES = {"warehouse", "airflow-db"}
# Started only with their compose profile (`docker compose --profile <name> up`).
OPTIONAL_SERVICES = {
    "elasticsearch": "elasticsearch",
    "redis": "celery",
    "s3": "celery",
    "airflow-worker": "celery",
}
# The one environment key the Celery workers add to the common environment.
WORKER_ONLY_ENV = {"DUMB_INIT_SETSID": "0"}
REQUIRED_MOUNTS = {
    "./dags:/opt/airflow/dags",
    "./plugins:/opt/airflow/plugins",
    "./include:/opt/airflow/include",
    "lake:/opt/airflow/lake",
}
# The one literal secret allowed in the compose file: the documented development default.
DEV_DEFAULT_SECRET = "dw"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|(^|_)KEY($|_)", re.IGNORECASE)
# A test environment for interpolation; the JWT secret is the one required variable.
TEST_ENV = {"AIRFLOW_JWT_SECRET": "not-a-real-secret-only-for-tests"}


# --------------------------------------------------------------------------- helpers


def _schema() -> dict[str, Any]:
    return get_builtin_schema("vendor.compose-spec")


def _validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_errors(doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _validator().iter_errors(doc)
    ]


def _load() -> dict[str, Any]:
    # safe_load resolves YAML anchors/aliases and `<<` merge keys like Compose does.
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    pass


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    """The subset of Compose interpolation this file uses: $$, $VAR, ${VAR}, ${VAR[:]-default}, ${VAR[:]?err}."""

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("-"):
            return arg if unset else str(value)
        if op and op.endswith("?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if value is None else value

    return _VAR.sub(repl, text)


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate_str(node, env)
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    return node


def _env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _iter_strings(node: Any, path: str = ""):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _iter_strings(v, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _iter_strings(v, f"{path}.{k}" if path else str(k))


# --------------------------------------------------------------------------- schema


def test_schema_is_the_official_compose_spec() -> None:
    schema = _schema()
    assert schema.get("title") == "Compose Specification"
    assert schema.get("$id") == "compose_spec.json"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


def test_compose_file_matches_compose_spec_schema() -> None:
    errors = _schema_errors(_load())
    assert not errors, "docker-compose.yaml violates the Compose Specification:\n" + "\n".join(errors)


def test_interpolated_compose_file_matches_compose_spec_schema() -> None:
    errors = _schema_errors(_interpolate(_load(), TEST_ENV))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["services"]["warehouse"].__setitem__("ports", 5432), id="ports-as-integer"),
        pytest.param(lambda d: d.__setitem__("servicez", {}), id="unknown-top-level-key"),
        pytest.param(
            lambda d: d["services"]["airflow-scheduler"]["depends_on"]["airflow-init"].__setitem__(
                "condition", "service_completed"
            ),
            id="bad-depends-on-condition",
        ),
        pytest.param(
            lambda d: d["services"]["airflow-apiserver"].__setitem__(
                "healthcheck", {"tset": ["CMD", "true"]}
            ),
            id="misspelled-healthcheck-key",
        ),
        pytest.param(
            lambda d: d["services"]["warehouse"].__setitem__("volumes", "warehouse-data"),
            id="volumes-as-string",
        ),
    ],
)
def test_schema_rejects_broken_copies(mutate) -> None:
    broken = copy.deepcopy(_load())
    mutate(broken)
    assert _schema_errors(broken), "the schema validator accepted a deliberately broken compose file"


# --------------------------------------------------------------------------- services


def test_expected_services() -> None:
    services = _load()["services"]
    assert set(services) == AIRFLOW_SERVICES | DB_SERVICES | set(OPTIONAL_SERVICES)
    for name, profile in OPTIONAL_SERVICES.items():
        assert services[name]["profiles"] == [profile], name
    for name in set(services) - set(OPTIONAL_SERVICES):  # the default `up` starts no optional one
        assert "profiles" not in services[name], name
        assert not set(OPTIONAL_SERVICES) & set(services[name].get("depends_on") or {}), name


def test_optional_elasticsearch() -> None:
    es = _load()["services"]["elasticsearch"]
    assert es["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    assert es["environment"]["discovery.type"] == "single-node"
    assert es["ports"] == ["127.0.0.1:${ES_PORT:-9200}:9200"]  # security off: this host only
    assert "_cluster/health" in " ".join(es["healthcheck"]["test"])


def test_optional_celery() -> None:
    services = _load()["services"]
    redis, s3, worker = services["redis"], services["s3"], services["airflow-worker"]
    for svc in (redis, s3):
        assert "ports" not in svc  # only the compose network reaches them
    assert redis["image"].startswith("redis:")
    assert redis["command"][:3] == ["redis-server", "--requirepass", "${REDIS_PASSWORD:-dw}"]
    assert "ping" in " ".join(redis["healthcheck"]["test"])
    assert s3["image"].startswith("chrislusf/seaweedfs:")
    assert s3["command"][:2] == ["server", "-s3"] and "-master.volumeSizeLimitMB=64" in s3["command"]
    assert "healthz" in " ".join(s3["healthcheck"]["test"])
    assert worker["deploy"]["replicas"] == 2
    for dep in ("redis", "s3"):
        assert worker["depends_on"][dep] == {"condition": "service_healthy"}
    assert "celery_executor.app inspect ping" in " ".join(worker["healthcheck"]["test"])


def test_celery_wiring_uses_the_same_secrets() -> None:
    """The workers' broker URL and lake connection use the passwords the redis and s3 services get."""
    env = {**TEST_ENV, "REDIS_PASSWORD": "r3dis", "S3_ACCESS_KEY": "AKEY", "S3_SECRET_KEY": "s3cret"}
    resolved = _interpolate(_load(), env)["services"]
    worker_env = resolved["airflow-worker"]["environment"]
    assert worker_env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:r3dis@redis:6379/0"
    assert resolved["redis"]["command"][2] == "r3dis"
    conn = json.loads(worker_env["AIRFLOW_CONN_SNDW_LAKE"])
    assert conn == {"conn_type": "aws", "login": "AKEY", "password": "s3cret",
                    "extra": {"endpoint_url": "http://s3:8333", "region_name": "us-east-1"}}
    assert resolved["s3"]["environment"] == {"AWS_ACCESS_KEY_ID": "AKEY", "AWS_SECRET_ACCESS_KEY": "s3cret"}
    assert resolved["s3"]["command"][2] == "-s3.port=8333"


def test_airflow_services_merge_the_common_anchor() -> None:
    """Each Airflow service is `<<: *airflow-common` (same YAML node), not a hand-made copy."""
    root = yaml.compose(COMPOSE_FILE.read_text())
    assert isinstance(root, yaml.MappingNode)
    top = {k.value: v for k, v in root.value}
    common = top["x-airflow-common"]
    services = {k.value: v for k, v in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merges = [v for k, v in services[name].value if k.value == "<<"]
        assert merges and merges[0] is common, f"{name} does not merge *airflow-common"


def test_airflow_services_share_image_build_env_and_mounts() -> None:
    data = _load()
    common = data["x-airflow-common"]
    common_env = data["x-airflow-common-env"]
    assert common["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    assert (ROOT / common["build"]["context"] / common["build"]["dockerfile"]).is_file()
    for name in AIRFLOW_SERVICES:
        svc = data["services"][name]
        assert svc["build"] == common["build"], name
        assert svc["image"] == common["image"], name
        extra = WORKER_ONLY_ENV if name == "airflow-worker" else {}
        assert _env(svc) == {**common_env, **extra}, f"{name}: environment differs from x-airflow-common-env"
        assert REQUIRED_MOUNTS <= set(svc["volumes"]), f"{name}: missing mounts"
        assert any(str(v).endswith(":/opt/airflow/logs") for v in svc["volumes"]), name
        assert svc.get("env_file") == [{"path": ".env", "required": False}], name


def test_common_environment() -> None:
    env = _load()["x-airflow-common-env"]
    resolved = _interpolate(env, TEST_ENV)
    # Executor and lake root are configurable; the defaults stay local.
    assert resolved["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert resolved["SNDW_LAKE_ROOT"] == "/opt/airflow/lake"
    celery = _interpolate(env, {**TEST_ENV, "AIRFLOW_EXECUTOR": "CeleryExecutor", "SNDW_LAKE_ROOT": "s3://sndw-lake/l"})
    assert celery["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert celery["SNDW_LAKE_ROOT"] == "s3://sndw-lake/l"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) == 4
    assert int(env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"]) == 30
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert "@airflow-db:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "@warehouse:5432/" in env["AIRFLOW_CONN_DW"]
    assert env["PYTHONPATH"] == "/opt/airflow/include"
    assert re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:\?[^}]+\}", env["AIRFLOW__API_AUTH__JWT_SECRET"])


def test_dev_defaults_and_required_secret() -> None:
    resolved = _interpolate(_load(), TEST_ENV)
    env = resolved["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW_CONN_DW"] == "postgresql://dw:dw@warehouse:5432/dw"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == TEST_ENV["AIRFLOW_JWT_SECRET"]
    assert resolved["services"]["warehouse"]["ports"] == ["5432:5432"]
    overridden = _interpolate(_load(), {**TEST_ENV, "DW_PASSWORD": "s3cret", "DW_PORT": "6543"})
    assert overridden["services"]["warehouse"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert overridden["services"]["warehouse"]["ports"] == ["6543:5432"]
    assert (
        "dw:s3cret@warehouse" in overridden["services"]["airflow-triggerer"]["environment"]["AIRFLOW_CONN_DW"]
    )
    with pytest.raises(MissingVariable, match="AIRFLOW_JWT_SECRET"):
        _interpolate(_load(), {})


def test_dependencies() -> None:
    services = _load()["services"]
    for name in LONG_RUNNING:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"] == {"condition": "service_completed_successfully"}, name
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        for db in DB_SERVICES:
            assert deps[db] == {"condition": "service_healthy"}, f"{name} -> {db}"
    assert "airflow-init" not in services["airflow-init"]["depends_on"]


def test_service_commands_and_healthchecks() -> None:
    services = _load()["services"]
    init_cmd = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init_cmd and "mkdir -p" in init_cmd
    assert services["airflow-init"].get("restart") in (None, "no")
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    for name, cmd in expected.items():
        assert str(services[name]["command"]).removeprefix("airflow ") == cmd, name
        assert "healthcheck" in services[name], name
    api = services["airflow-apiserver"]
    assert any(str(p).endswith(":8080") for p in api["ports"])
    assert "http://localhost:8080/api/v2/version" in " ".join(api["healthcheck"]["test"])
    for db in DB_SERVICES:
        assert services[db]["image"] == "postgres:15"
        assert "pg_isready" in " ".join(services[db]["healthcheck"]["test"])
    wh = services["warehouse"]
    assert wh["ports"] == ["${DW_PORT:-5432}:5432"]
    assert wh["environment"]["POSTGRES_PASSWORD"] == "${DW_PASSWORD:-dw}"


def test_named_volumes_are_declared() -> None:
    data = _load()
    declared = set(data.get("volumes") or {})
    for name, svc in data["services"].items():
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            if not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name}: volume {source!r} not declared"
            elif source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name}: bind source {source} missing"
    assert {"lake", "warehouse-data"} <= declared


def test_no_literal_secrets() -> None:
    data = _load()
    text = COMPOSE_FILE.read_text()
    # Defaults of secret-like variables: empty or the documented dev default only.
    for name, _op, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-)([^}]*)\}", text):
        if SECRET_NAME.search(name):
            assert default in ("", DEV_DEFAULT_SECRET), f"${{{name}}} defaults to a literal secret"
    interp = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")
    # Passwords inside URIs must come from variables.
    for path, value in _iter_strings(data):
        masked = interp.sub("<var>", value)  # a variable, whatever its default (checked above)
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", masked):
            assert password == "<var>", f"{path}: literal password in URI"
    # Passwords inside JSON connections (AIRFLOW_CONN_*='{...}') must come from variables.
    for path, value in _iter_strings(data):
        if value.lstrip().startswith("{") and '"password"' in value:
            conn = json.loads(interp.sub("<var>", value))
            assert conn["password"] == "<var>", f"{path}: literal password in a JSON connection"
    # Secret-like environment keys must be variables.
    envs = [data["x-airflow-common-env"]] + [_env(s) for s in data["services"].values()]
    for env in envs:
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and interp.fullmatch(value), f"{key} is a literal"


# --------------------------------------------------------------------------- Dockerfile & context


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == ["apache/airflow:3.3.2-python3.11"]
    lock_airflow = re.search(r"^apache-airflow==(\S+)$", LOCK_FILE.read_text(), re.MULTILINE)
    assert lock_airflow and lock_airflow.group(1) == "3.3.2", "image and lock disagree on Airflow"
    assert re.search(r"^USER airflow$", text, re.MULTILINE)
    assert "pip install --no-cache-dir" in text and "requirements.lock" in text
    assert re.search(r"pip install .*--no-deps -e /opt/airflow", text)
    assert "COPY --chown=airflow:0 include/ /opt/airflow/include/" in text
    assert "import sndw" in text


def test_dockerignore() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = {".venv", ".local", ".airflow", "lake", "logs", ".git", ".env", "**/__pycache__"} - entries
    assert not missing, f".dockerignore lacks {sorted(missing)}"
    # Nothing the Dockerfile copies may be ignored.
    for needed in ("requirements.lock", "pyproject.toml", "include"):
        assert needed not in entries


def test_no_host_specific_paths() -> None:
    text = COMPOSE_FILE.read_text()
    assert "/work/" not in text and os.path.expanduser("~") not in text


def test_the_compose_warehouse_runs_with_the_local_warehouses_server_settings(dw: Any) -> None:
    """docker-compose's warehouse and scripts/pg-local's (the one `make demo`, `make up` and the
    tests use) take the same settings beyond PostgreSQL's defaults; the test cluster shows them."""
    command = _load()["services"]["warehouse"]["command"]
    assert command[0] == "postgres"
    settings = dict(arg.split("=", 1) for arg in command[2::2])
    assert command[1::2] == ["-c"] * len(settings) and settings, command
    for name, value in settings.items():
        shown = dw.execute(f"SHOW {name}").fetchone()[0]  # noqa: S608 (names from our own compose file)
        assert shown == value, f"{name}: the server shows {shown}, compose sets {value} (restart the test cluster?)"
