"""Logging set-up: human text, or one JSON object a line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FIELDS = "fields"
"""The ``extra`` key under which a record carries structured fields (method, pool, result ...)."""


class TextFormatter(logging.Formatter):
    """``time level logger: message``, the date and time formatted once a second rather than once a line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time as ``logging.Formatter`` writes it by default."""
        return f"{_second_text(self, record, self.default_time_format)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{_second_text(self, record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, form: str, stream: str = "stderr") -> None:
    """Log to ``stream`` ("stderr" or "stdout") at ``level`` in ``form`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stdout if stream == "stdout" else sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else TextFormatter())
    # Requests log a line each (granted address requests at DEBUG only). No format here shows the
    # thread, the process or the calling source line, and collecting them was about a third of a
    # line's cost: the logging HOWTO's "Optimization" section names these switches for exactly that.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # waitress logs every queue-depth warning at WARNING; keep it, but not its INFO chatter.
    logging.getLogger("waitress").setLevel(max(root.level, logging.WARNING))


def _second_text(formatter: TextFormatter | JsonFormatter, record: logging.LogRecord, datefmt: str) -> str:
    """The record's time to the second in ``datefmt``, remembered for the rest of that second."""
    second = int(record.created)
    cached_second, text = formatter._second
    if second != cached_second:
        text = time.strftime(datefmt, formatter.converter(record.created))
        formatter._second = (second, text)  # one assignment: a thread sees the old pair or the new one
    return text
