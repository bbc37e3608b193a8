"""Incremental PostgreSQL -> warehouse: only rows changed since the last load, upserted on the key.

    . scripts/dev-env && python examples/incremental_postgres_to_dw.py

Reads the manufacturing demo's ``bodies`` table by its ``updated_at`` watermark into
``raw.bodies_incremental`` (merge on ``id``). The first run reads every row; the watermark is
stored in ``etl_state`` in the load's own transaction. The example then touches 3 rows in the
source and runs again: only those 3 are read. ``sndw state list`` shows the watermark.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from _demo_source import HERE, demo_source, lake, report, warehouse_url
from sndw.connectors import load_connector
from sndw.runner import run_table, warehouse_factory


def main() -> int:
    demo_source()
    url = warehouse_url()
    connector = load_connector(str(HERE / "postgres_connector.json"))
    table = connector.table("bodies_incremental", "SELECT * FROM bodies", write_mode="merge",
                            primary_key=["id"], incremental={"cursor": "updated_at"})
    results = []
    for step in ("first run", "after 3 updates"):
        if step != "first run":
            import psycopg

            with psycopg.connect(connector.postgres_conninfo()) as src:
                # Past the watermark whatever the data's dates (sample rows may lie ahead of now()).
                src.execute("UPDATE bodies SET defects = defects + 1, updated_at = greatest(now(), "
                            "(SELECT max(updated_at) FROM bodies) + interval '1 second') "
                            "WHERE id IN (SELECT id FROM bodies ORDER BY id LIMIT 3)")
        result = run_table(url=url, pipeline="examples", source="manufacturing", kind=connector.kind, table=table,
                           access=connector.access(warehouse=warehouse_factory(url)), lake=lake(), schema="raw",
                           partition=datetime.now(UTC).date())
        print(f"{step}: {result['rows_extracted']} rows read")
        report(result)
        results.append(result)
    if not all(r["status"] == "success" for r in results):
        return 1
    if results[1]["rows_extracted"] != 3:
        print(f"expected the second run to read the 3 updated rows, it read {results[1]['rows_extracted']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
