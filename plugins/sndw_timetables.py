"""Registers the factory's timetable (cron presets shown as written, e.g. ``@daily``).

Airflow serializes and deserializes a custom timetable only when a plugin registers it, in every
process that does (DAG processor, scheduler, API server, ``airflow dags test``); a file of its own,
so that it only depends on include/sndw_airflow/timetables.py.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from sndw_airflow.timetables import PresetCronTriggerTimetable


class SndwTimetablesPlugin(AirflowPlugin):
    name = "sndw_timetables"
    timetables = [PresetCronTriggerTimetable]
