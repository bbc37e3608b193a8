"""What the examples share: the warehouse, the lake, and the demo's PostgreSQL source.

The source is read through ``examples/postgres_connector.json`` (``env_prefix: PG``): the
``PG_*`` variables name it. When they are not set, the manufacturing demo's database
(``sndw_demo_source``, which ``make demo`` creates) on the warehouse's server is used, and created
here if it is missing. ``python examples/_demo_source.py env`` prints those ``PG_*`` settings as
``export`` lines (`make run-pipeline` reads them when ``PG_HOST`` is not set).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
DEMO_DB = "sndw_demo_source"


def warehouse_url() -> str:
    from sndw.runner import read_env_file
    from sndw.settings import dw_url

    read_env_file()
    return dw_url()


def lake() -> str:
    from sndw.settings import lake_root

    return os.environ.get("SNDW_LAKE_ROOT") or lake_root()


def demo_source() -> None:
    """Point ``PG_*`` at the demo source database unless they are set already."""
    if os.environ.get("PG_HOST"):
        return
    import psycopg
    from psycopg import sql
    from sndw.demo import manufacturing

    url = warehouse_url()
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
            created = True
        else:
            created = False
    parts = urlsplit(url)
    if created:
        with psycopg.connect(urlunsplit(parts._replace(path=f"/{DEMO_DB}"))) as conn:
            manufacturing.create(conn)
    os.environ.update({"PG_HOST": parts.hostname or "localhost", "PG_PORT": str(parts.port or 5432),
                       "PG_DATABASE": DEMO_DB, "PG_USERNAME": unquote(parts.username or ""),
                       "PG_PASSWORD": unquote(parts.password or "")})


def report(result: dict) -> None:
    status = result["status"]
    print(f"{status}: {result['rows_loaded']} rows -> {result['target_table']} ({result['write_mode']}) "
          f"in {result['seconds']:.1f}s" + (f": {result['error']}" if result["error"] else ""))
    for child in result.get("children", []):
        print(f"         {child['rows_loaded']} rows -> {child['target_table']}")


if __name__ == "__main__":
    if sys.argv[1:] != ["env"]:
        sys.exit("usage: python examples/_demo_source.py env")
    demo_source()
    for name in ("PG_HOST", "PG_PORT", "PG_DATABASE", "PG_USERNAME", "PG_PASSWORD"):
        print(f"export {name}={shlex.quote(os.environ.get(name, ''))}")
