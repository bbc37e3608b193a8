"""A cron timetable that shows the preset a config wrote (``@daily``), not its expansion.

Airflow expands ``@daily`` to ``0 0 * * *`` when it builds the timetable, and the UI shows the
timetable's ``summary``: the expanded expression. This is Airflow's own CronTriggerTimetable
(the same runs, data intervals and ``ds`` as ``schedule="@daily"``) that keeps the preset for its
summary. A custom timetable must be registered by a plugin (plugins/sndw_plugin.py) so that the
scheduler and the API server can deserialize it.
"""

from __future__ import annotations

from typing import Any

from airflow.timetables.trigger import CronTriggerTimetable


class PresetCronTriggerTimetable(CronTriggerTimetable):
    """``CronTriggerTimetable(preset)`` whose summary is the preset as written."""

    def __init__(self, cron: str, *, timezone: Any = "UTC", **kwargs: Any) -> None:
        super().__init__(cron, timezone=timezone, **kwargs)
        self._preset = cron

    @property
    def summary(self) -> str:
        return self._preset

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> PresetCronTriggerTimetable:
        timetable = super().deserialize(data)
        assert isinstance(timetable, PresetCronTriggerTimetable)
        timetable._preset = data.get("preset", data["expression"])
        return timetable

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "preset": self._preset}
