"""Log lines: plain text for a terminal, or one JSON object per line (BATCHBOARD_LOG_FORMAT=json) for a platform.

Both formatters strike the configured API key from the finished line, whatever code logged it: the service module
already keeps it out of every message, and this is the last line of defence.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from django.conf import settings

REDACTED = "[redacted]"
# Context that request and sync log lines pass with `extra=`; each becomes a key of the JSON object.
CONTEXT_FIELDS = (
    "request_id",
    "user",
    "method",
    "path",
    "status",
    "duration_ms",
    "pass_number",
    "pages",
    "calls",
    "seen",
    "changed",
    "retrieved",
    "imported",
    "seconds",
    "outcome",
)


def _redact(text: str) -> str:
    key = getattr(settings, "OPENAI_API_KEY", "")
    return text.replace(key, REDACTED) if key else text


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context fields given, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _redact(json.dumps(entry, default=str, ensure_ascii=False))
