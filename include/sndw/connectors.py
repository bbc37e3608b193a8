"""Connector files of the command line: one source system, its protocol and how to reach it.

    {"protocol": "http" | "https", "base_url": "https://api.example.com", ...http table keys}
    {"protocol": "postgres" | "postgresql", "host", "port", "database", "username", "password"}
    {"protocol": "postgres", "env_prefix": "PG"}      PG_HOST, PG_PORT, PG_DATABASE, PG_USERNAME, PG_PASSWORD
    {"protocol": "sqlite", "path": "data/app.db"}
    {"protocol": "file", "path": "data/"}             --query is a file path or glob below it

JSON or YAML. ``${VAR}`` takes a value from the environment, so a file needs no secret. A relative
``path`` starts at the connector file's folder. The connector turns ``--query`` into a table spec
of the source kind (``http`` endpoint, ``sql`` query, ``file`` path) and into the ``SourceAccess``
that ``sndw.pipeline.extract_table`` reads it through: the same core path as the DAGs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sndw.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PROTOCOLS = {"http": "http", "https": "http", "postgres": "sql", "postgresql": "sql", "sqlite": "sql",
             "file": "file"}
HTTP_CONNECTION_KEYS = {"protocol", "base_url", "login", "password", "extra", "headers"}
POSTGRES_KEYS = {"protocol", "host", "port", "database", "username", "password", "env_prefix", "sslmode",
                 "connect_timeout", "options"}
SQLITE_KEYS = {"protocol", "path"}
FILE_KEYS = {"protocol", "path", "format", "csv", "records_path"}
# Table keys a connector may not set: they belong to the run (--table, --write-mode) or a source config.
NOT_IN_CONNECTOR = {"name", "endpoint", "write_mode", "primary_key", "incremental", "unnest", "target_table",
                    "batch_rows", "query", "table"}
ENV_SUFFIXES = {"host": "HOST", "port": "PORT", "database": "DATABASE", "username": "USERNAME",
                "password": "PASSWORD"}


@dataclass
class Connector:
    """A parsed connector file. ``settings`` hold the expanded values (secrets included: never print them)."""

    path: str
    protocol: str
    settings: dict[str, Any]
    table_options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return PROTOCOLS[self.protocol]

    @property
    def lake_protocol(self) -> str:
        """The lake folder of the source kind: http, sql or file (as the DAGs write it)."""
        return self.kind

    # -- the table of one run ----------------------------------------------------------------

    def table(self, name: str, query: str, write_mode: str = "replace", **extra: Any) -> Any:
        """The table spec of ``--query`` for this connector's source kind (validated like a config's)."""
        from sndw.config import table_spec

        if self.kind == "http":
            spec = {**self.table_options, "name": name, "endpoint": query}
        elif self.kind == "sql":
            spec = {"name": name, "query": query}
        else:
            spec = {**self.table_options, "name": name, "path": query}
        return table_spec(self.kind, {**spec, "write_mode": write_mode, **extra}, where=self.path)

    # -- reaching the source -------------------------------------------------------------------

    def postgres_conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        s = self.settings
        extra = {k: s[k] for k in ("sslmode", "connect_timeout", "options") if s.get(k) is not None}
        return make_conninfo(host=str(s.get("host") or "localhost"), port=str(s.get("port") or 5432),
                             dbname=str(s.get("database") or ""), user=str(s.get("username") or ""),
                             password=str(s.get("password") or ""), **extra)

    def sqlite_path(self) -> str:
        return str(self._resolve(self.settings["path"]))

    def base_path(self) -> str:
        return str(self._resolve(self.settings.get("path") or "."))

    def _resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else Path(self.path).resolve().parent / path

    def access(self, warehouse: Callable[[], Any] | None = None) -> Any:
        """The ``SourceAccess`` of this connector (what the core pipeline reads through)."""
        from sndw.pipeline import SourceAccess

        if self.protocol in ("postgres", "postgresql"):
            from sndw.audit import register_secret

            if self.settings.get("password"):
                register_secret(str(self.settings["password"]))
            return SourceAccess(postgres_conninfo=self.postgres_conninfo(), warehouse=warehouse)
        if self.protocol == "sqlite":
            import sqlite3

            path = self.sqlite_path()
            return SourceAccess(dbapi_connect=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True),
                                warehouse=warehouse)
        if self.kind == "http":
            return SourceAccess(http_client=self.http_client, warehouse=warehouse)
        return SourceAccess(base_path=self.base_path(), warehouse=warehouse)

    def http_client(self, table: Any) -> Any:
        from sndw.extract.http import requests_client

        s = self.settings
        return requests_client(s["base_url"], table, login=s.get("login"), password=s.get("password"),
                               extra=s.get("extra") or {}, headers={str(k): str(v) for k, v in
                                                                     (s.get("headers") or {}).items()},
                               where=self.path)

    def describe(self) -> str:
        """Where the connector points, without any secret."""
        s = self.settings
        if self.kind == "http":
            from sndw.extract.http import safe_url

            return safe_url(s["base_url"])
        if self.protocol == "sqlite":
            return f"sqlite:{self.sqlite_path()}"
        if self.kind == "sql":
            return f"postgresql://{s.get('host') or 'localhost'}:{s.get('port') or 5432}/{s.get('database') or ''}"
        return f"file:{self.base_path()}"


def _expand(value: Any, path: str, where: str) -> Any:
    if isinstance(value, str):
        def variable(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(path, where, f"${{{name}}} is not set in the environment")
            return os.environ[name]

        return _VAR.sub(variable, value)
    if isinstance(value, dict):
        return {k: _expand(v, path, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _read(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc.strerror}") from None
    is_json = path.endswith(".json")
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(path, "", f"not valid {'JSON' if is_json else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the file must hold an object with a protocol")
    return data


def load_connector(path: str) -> Connector:
    """Read and check a connector file; errors name the file and the key, and never a secret."""
    data = _read(path)
    protocol = str(data.get("protocol") or "").lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(path, "protocol", f"must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    if protocol in ("http", "https"):
        return _http(path, data, protocol)
    allowed = {"postgres": POSTGRES_KEYS, "postgresql": POSTGRES_KEYS, "sqlite": SQLITE_KEYS, "file": FILE_KEYS}[protocol]
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise ConfigError(path, unknown[0], f"unknown key for a {protocol} connector (known: {', '.join(sorted(allowed))})")
    data = _expand(data, path, "")
    if protocol in ("postgres", "postgresql"):
        prefix = data.get("env_prefix")
        if prefix:
            for key, suffix in ENV_SUFFIXES.items():
                name = f"{prefix}_{suffix}"
                if key not in data and name in os.environ:
                    data[key] = os.environ[name]
            if not data.get("host") and not data.get("database"):
                raise ConfigError(path, "env_prefix", f"{prefix}_HOST and {prefix}_DATABASE are not set in the environment")
        if data.get("port") is not None and not str(data["port"]).isdigit():
            raise ConfigError(path, "port", "must be a number")
        return Connector(path=path, protocol=protocol, settings=data)
    if not data.get("path"):
        raise ConfigError(path, "path", f"a {protocol} connector needs a path")
    options = {k: v for k, v in data.items() if k in ("format", "csv", "records_path")}
    connector = Connector(path=path, protocol=protocol, settings=data, table_options=options)
    if protocol == "sqlite" and not Path(connector.sqlite_path()).is_file():
        raise ConfigError(path, "path", f"no SQLite database at {connector.sqlite_path()}")
    return connector


def _http(path: str, data: dict[str, Any], protocol: str) -> Connector:
    from sndw.config import HttpTable

    base_url = data.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(path, "base_url", "must be an http:// or https:// URL")
    unknown = sorted(k for k in data if k not in HTTP_CONNECTION_KEYS
                     and (k in NOT_IN_CONNECTOR or k not in HttpTable.model_fields))
    if unknown:
        raise ConfigError(path, unknown[0], "unknown key for an http connector")
    data = _expand(data, path, "")
    for key in ("extra", "headers"):
        if not isinstance(data.get(key) or {}, dict):
            raise ConfigError(path, key, "must be an object")
    return Connector(path=path, protocol=protocol, settings=data,
                     table_options={k: v for k, v in data.items() if k not in HTTP_CONNECTION_KEYS})
