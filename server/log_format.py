"""How the servers' log lines look: ``text`` for people, ``json`` for log collectors.

Both put one record on one line, to stderr, times in UTC as ISO 8601 with
milliseconds. ``json`` lines are objects with ``time``, ``level``, ``logger`` and
``message``, ``exception`` when there is a traceback, and the record's
``fields`` (``log.info(..., extra={"fields": {...}})``) as keys of their own;
``text`` appends those fields as ``key=value``. The access log
(:mod:`sealog.server.access_log`) writes its lines to the same handler, in the
same format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

__all__ = [
    "FORMATS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "format_time",
    "text_value",
]

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")

_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})
"""Keys of every JSON line; a field of the same name is written as ``field_<name>``."""


def format_time(seconds: float) -> str:
    """``seconds`` (Unix time) as ``2026-12-02T16:38:38.123Z``."""
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def text_value(value: object) -> str:
    """A field's value in a text line: numbers as they are, anything else JSON-quoted, so a
    value can hold no space, newline or ``=`` that breaks the line apart."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if (
        isinstance(value, str)
        and value.isascii()
        and value.isprintable()
        and value
        and not any(c in value for c in ' "=\\')
    ):
        return value
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=True)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``, one line (a traceback follows indented)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{format_time(record.created)} {record.levelname} {record.name}: "
            f"{_one_line(record.getMessage())}"
        )
        fields = _fields(record)
        if fields:
            line += "".join(f" {k}={text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + "\n".join(
                "    " + x for x in self.formatException(record.exc_info).split("\n")
            )
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": format_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            line[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def _one_line(message: str) -> str:
    return message.replace("\r", "\\r").replace("\n", "\\n")


def configure_logging(
    log_format: LogFormat, level: int, stream: TextIO | None = None
) -> logging.StreamHandler[TextIO]:
    """Send every log record at ``level`` and above to ``stream`` (default stderr), one line
    each, in ``log_format``; replaces whatever handlers the root logger had. Returns the
    handler, for the access log to write through."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: want one of {', '.join(FORMATS)}")
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(
        stream if stream is not None else sys.stderr
    )
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
