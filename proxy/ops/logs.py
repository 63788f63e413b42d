"""Structured logs on stderr: JSON lines by default, ``--log-format text`` for humans.

Every line has ``ts``, ``level`` and ``event``; lines written while a request is handled also carry its
``request_id`` (a context variable, so nothing has to thread it through). Extra fields come from
``extra={...}``; nothing else is printed on stdout or stderr.
"""
from __future__ import annotations

import logging
import sys
import time

import orjson

from ..serve.answers import request_id

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "event"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        if getattr(record, "event", None):
            line["message"] = record.getMessage()
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_"))
        rid = request_id.get()
        head = time.strftime("%H:%M:%S", time.localtime(record.created))
        event = getattr(record, "event", None) or record.getMessage()
        text = f"{head} {record.levelname.lower():7} {event}"
        if rid:
            text += f" request_id={rid}"
        return f"{text} {extras}".rstrip()


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The file watcher's own "N changes detected" lines: the proxy logs `rules_changed` itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    logging.captureWarnings(True)
