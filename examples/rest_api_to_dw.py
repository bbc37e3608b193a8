"""A REST API's nested JSON -> a parent table and a child table, through the core pipeline.

    . scripts/dev-env && python examples/rest_api_to_dw.py [BASE_URL]

Without a base URL it serves the demo JSON API on localhost for the run. ``/users`` records hold
nested objects (``address.geo.lat`` becomes the column ``address__geo__lat``) and a list
(``tags``), which ``unnest`` turns into the child table ``staging.api_users__tags`` linked to its
parent by ``parent__id`` and ``parent__index``. The connector is ``examples/api_connector.json``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from _demo_source import HERE, lake, report, warehouse_url
from sndw.connectors import Connector, load_connector
from sndw.runner import run_table


def main(argv: list[str]) -> int:
    from sndw.demo.api import DemoApi

    url = warehouse_url()
    api = None if len(argv) > 1 else DemoApi().start()
    try:
        connector = load_connector(str(HERE / "api_connector.json"))
        base_url = argv[1] if api is None else api.url
        connector = Connector(connector.path, connector.protocol, {**connector.settings, "base_url": base_url},
                              connector.table_options)
        table = connector.table("api_users", "/users", write_mode="merge", primary_key=["id"], unnest=["tags"])
        result = run_table(url=url, pipeline="examples", source="demo_api", kind="http", table=table,
                           access=connector.access(), lake=lake(), schema="staging",
                           partition=datetime.now(UTC).date())
    finally:
        if api is not None:
            api.stop()
    report(result)
    print(json.dumps({k: result[k] for k in ("run_id", "status", "rows_loaded", "parquet_files")}))
    return 0 if result["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
