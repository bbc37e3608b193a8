"""Settings the core reads from the environment (the CLI's; the Airflow layer uses connections)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from sndw.audit import register_secret
from sndw.errors import ConfigError


def dw_url() -> str:
    """The warehouse as a libpq URL: ``AIRFLOW_CONN_DW`` if set, else the ``DW_*`` variables."""
    url = os.environ.get("AIRFLOW_CONN_DW")
    if url and url.startswith(("postgres://", "postgresql://")):
        register_secret(unquote(urlsplit(url).password or "") or None)  # masked in every message
        return url.replace("postgres://", "postgresql://", 1)
    if url:
        raise ConfigError("AIRFLOW_CONN_DW", "", "must be a postgresql:// URI for the command line tools")
    host = os.environ.get("DW_HOST")
    if not host:
        raise ConfigError("environment", "DW_HOST",
                          "no warehouse configured: set AIRFLOW_CONN_DW or DW_HOST/DW_PORT/DW_DATABASE/"
                          "DW_USERNAME/DW_PASSWORD (or run through `make`, which starts the local one)")
    register_secret(os.environ.get("DW_PASSWORD"))
    user = quote(os.environ.get("DW_USERNAME", "postgres"), safe="")
    password = quote(os.environ.get("DW_PASSWORD", ""), safe="")
    database = quote(os.environ.get("DW_DATABASE", "dw"), safe="")
    auth = f"{user}:{password}@" if password else f"{user}@"
    return f"postgresql://{auth}{host}:{os.environ.get('DW_PORT', '5432')}/{database}"


def lake_root() -> str:
    """Where the lake lives: ``SNDW_LAKE_ROOT``, else ``lake/`` beside ``AIRFLOW_HOME``."""
    configured = os.environ.get("SNDW_LAKE_ROOT")
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME")
    base = Path(home).parent if home else Path.home() / "sndw"
    return str(base / "lake")
