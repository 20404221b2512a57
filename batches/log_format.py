"""Log lines: plain text for a terminal, or one JSON object per line (BATCHBOARD_LOG_FORMAT=json) for a platform.

Both formatters strike the configured API key from the finished line, whatever code logged it: the service module
already keeps it out of every message, and this is the last line of defence.

A plain record is one line whatever it quotes: a user name, a file id or an upstream message may hold a line break,
and a reader (or a log shipper) would take what follows for a record of its own. So the message is escaped
(`one_line`), and the continuation lines of a traceback are indented, so that only a record's first line starts at
the margin.
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


# Control characters (C0, DEL, C1 with NEL), the Unicode line and paragraph separators, and the bidirectional
# overrides that can make a line read otherwise than it is written.
_UNPRINTABLE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNPRINTABLE}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def one_line(text: str) -> str:
    """The text with every line break and other control character written as an escape (`\\n`, `\\x00`, `\\u2028`)."""
    return text.translate(_ESCAPES)


# JSON escapes the C0 controls itself, but leaves these raw inside strings, where a line-based reader splits on them.
_JSON_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_line(value) -> str:
    """One JSON object on one line, readable by any line-based reader: non-ASCII text kept, line breaks escaped."""
    return json.dumps(value, default=str, ensure_ascii=False).translate(_JSON_LINE_BREAKS)


def _redact(text: str) -> str:
    key = getattr(settings, "OPENAI_API_KEY", "")
    return text.replace(key, REDACTED) if key else text


class PlainFormatter(logging.Formatter):
    """`time level logger message` on one line; a traceback follows on lines indented under it."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # record.message is the formatter's own copy of the interpolated message, set afresh by every format().
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        # A traceback's own lines are kept as lines, indented; any other break inside them is escaped like the message.
        return _redact("\n".join([first, *(f"  {one_line(line)}" for line in rest)]))


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
        return _redact(json_line(entry))
