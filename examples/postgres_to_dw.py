"""PostgreSQL -> warehouse through the product's core pipeline (what ``etl.cli run`` and the DAGs do).

    . scripts/dev-env && python examples/postgres_to_dw.py

Copies the manufacturing demo's ``refills`` table into ``raw.refills``: extract to a lake
partition (Parquet), load it in one transaction, one row in ``etl_audit_log``. Every column keeps
its PostgreSQL type (``numeric(6,2)`` stays ``numeric(6,2)``, ``smallint`` stays ``smallint``).
The same from the command line::

    python -m etl.cli run --config examples/postgres_connector.json \\
        --query "SELECT * FROM refills" --source manufacturing --table refills --schema raw --lake ./lake
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from _demo_source import HERE, demo_source, lake, report, warehouse_url
from sndw.connectors import load_connector
from sndw.runner import run_table


def main() -> int:
    demo_source()
    url = warehouse_url()
    connector = load_connector(str(HERE / "postgres_connector.json"))
    table = connector.table("refills", "SELECT * FROM refills")
    result = run_table(url=url, pipeline="examples", source="manufacturing", kind=connector.kind, table=table,
                       access=connector.access(), lake=lake(), schema="raw", partition=datetime.now(UTC).date())
    report(result)
    return 0 if result["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
