"""Logging set-up: human text, or one JSON object a line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

FIELDS = "fields"
"""The ``extra`` key under which a record carries structured fields (method, pool, result ...)."""


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
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
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # waitress logs every queue-depth warning at WARNING; keep it, but not its INFO chatter.
    logging.getLogger("waitress").setLevel(max(root.level, logging.WARNING))
