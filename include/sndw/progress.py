"""Progress of long extracts and loads: rows, bytes, rows/s and elapsed time at a steady interval.

Lines go to the ``sndw.progress`` logger (INFO): Airflow's task log shows them; the command line
turns them into one live line on a terminal and plain lines otherwise. ``SNDW_PROGRESS_SECONDS``
sets the interval (default 30 s).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

log = logging.getLogger("sndw.progress")


def interval() -> float:
    try:
        return max(0.1, float(os.environ.get("SNDW_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class Progress:
    """Counts rows and bytes of one step; logs where it stands every ``interval()`` seconds."""

    def __init__(self, what: str, unit: str = "rows") -> None:
        self.what = what
        self.unit = unit
        self.every = interval()
        self.started = self.last = time.monotonic()
        self.rows = 0
        self.bytes = 0
        self.pages = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, rows: int, nbytes: int = 0, pages: int = 0) -> None:
        self.rows += rows
        self.bytes += nbytes
        self.pages += pages
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        seconds = (now or time.monotonic()) - self.started
        pages = f", {self.pages} pages" if self.pages else ""
        return (f"{self.what}: {self.rows:,} {self.unit}, {self.bytes / 2**20:,.1f} MiB{pages}, "
                f"{self.rows / max(seconds, 1e-9):,.0f} {self.unit}/s, {seconds:,.0f}s elapsed")


class LiveLine(logging.Handler):
    """Progress as one line rewritten in place on a terminal; plain lines on anything else."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if self.live:
            self.stream.write("\r\x1b[2K" + text)
            self.shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Finish the live line so the next output starts on a line of its own."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def show_progress(stream: IO[str] | None = None) -> LiveLine:
    """Send progress lines to ``stream`` (the command line's stderr); a live line every second on a terminal."""
    handler = LiveLine(stream)
    if handler.live and "SNDW_PROGRESS_SECONDS" not in os.environ:
        os.environ["SNDW_PROGRESS_SECONDS"] = "1"
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler
