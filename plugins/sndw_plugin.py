"""The sndw Airflow plugin: the warehouse's HTTP API under /sndw and the ETL page in the UI's menu.

The app lives in include/sndw_airflow/webapi.py (the SQL in include/sndw/stats.py); this file only
registers it with Airflow's API server, which serves it behind Airflow's own login.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/sndw"


class LazyApp:
    """The API as an ASGI app that imports FastAPI and the routes on its first request.

    Every Airflow process loads this file (task processes too, for macros and timetables); only the
    API server ever calls the app, so only it pays for the import.
    """

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            from sndw_airflow.webapi import app

            self.app = app
        await self.app(scope, receive, send)


app = LazyApp()


class SndwPlugin(AirflowPlugin):
    name = "sndw"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "sndw warehouse API"}]
    external_views = [{"name": "ETL", "href": f"{URL_PREFIX}/ui", "destination": "nav",
                       "url_route": "sndw-etl", "nav_top_level": True}]
