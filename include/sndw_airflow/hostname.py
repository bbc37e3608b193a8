"""The hostname Airflow records for a task (``[core] hostname_callable``), naming its Celery worker.

Several Celery workers on one machine share its hostname; ``make up EXECUTOR=celery`` starts each
with ``SNDW_WORKER_NAME`` so the UI's task details (and the tests) tell which worker ran a task.
"""

from __future__ import annotations

import os

from airflow.utils.net import getfqdn


def worker_hostname() -> str:
    name = os.environ.get("SNDW_WORKER_NAME")
    host = getfqdn()  # Airflow's default hostname_callable
    return f"{name}@{host}" if name else host
