"""Structured logs: a message a person can search for, and the fields a machine can filter on.

    log = get_logger(__name__)
    log.info("SSE stream opened for generation {generation_id}", generation_id=gid, after=42)

Text format: `2026-11-24T06:13:41Z INFO gateway.sse SSE stream opened for generation 5f… after=42`.
JSON format (KILN_LOG_FORMAT=json): one object per line with every field. Secret values and
`token=` query parameters are redacted from every line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

_TOKEN_PARAM = re.compile(r"(token=)[^&\s\"']+")
# A request line about one generation (`GET /generations/<id>/stream`) names it as a field.
_GENERATION_PATH = re.compile(r"/generations/([0-9a-fA-F-]{36})\b")


class Redactor:
    """Replaces known secret values and `token=` parameters with `***`."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        """Never show these values again (longest first, so one never hides part of another)."""
        self._secrets = sorted(
            {*self._secrets, *(v for v in values if v and len(v) >= 4)}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        text = _TOKEN_PARAM.sub(r"\1***", text)
        for value in self._secrets:
            if value in text:
                text = text.replace(value, "***")
        return text


redactor = Redactor()


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
        message = record.getMessage()
        if "generation_id" not in fields:
            named = _GENERATION_PATH.search(message)
            if named:
                fields["generation_id"] = named.group(1)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self.json:
            body = {
                "ts": stamp,
                "level": record.levelname,
                "logger": record.name,
                "message": message,
            }
            body.update({k: _plain(v) for k, v in fields.items()})
            return redactor(json.dumps(body, default=str))
        extras = " ".join(f"{k}={_plain(v)}" for k, v in fields.items() if k != "error")
        line = f"{stamp} {record.levelname:<5} {record.name} {message}"
        if extras:
            line += f"  {extras}"
        if "error" in fields:
            line += "\n" + str(fields["error"])
        return redactor(line)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class Logger:
    """A logger whose messages are templates filled from keyword fields."""

    def __init__(self, name: str, bound: dict[str, Any] | None = None) -> None:
        self._logger = logging.getLogger(name)
        self._bound = bound or {}

    def bind(self, **fields: Any) -> Logger:
        """This logger with `fields` in every line it logs (a line's own fields win)."""
        return Logger(self._logger.name, {**self._bound, **fields})

    def _log(self, level: int, message: str, fields: dict[str, Any], exc_info: Any = None) -> None:
        if not self._logger.isEnabledFor(level):
            return
        if self._bound:
            fields = {**self._bound, **fields}
        try:
            text = message.format(**fields) if fields else message
        except (KeyError, IndexError, ValueError):
            text = message
        self._logger.log(level, text, extra={"fields": fields}, exc_info=exc_info, stacklevel=3)

    def debug(self, message: str, /, **fields: Any) -> None:
        """Log at DEBUG."""
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, /, **fields: Any) -> None:
        """Log at INFO."""
        self._log(logging.INFO, message, fields)

    def warning(self, message: str, /, **fields: Any) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, /, **fields: Any) -> None:
        """Log at ERROR."""
        self._log(logging.ERROR, message, fields)

    def exception(self, message: str, /, **fields: Any) -> None:
        """Log at ERROR with the current exception's traceback."""
        self._log(logging.ERROR, message, fields, exc_info=True)


def get_logger(name: str) -> Logger:
    """A structured logger for a module."""
    return Logger(name)


def setup_logging(fmt: str = "text", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every log line (Kiln's, uvicorn's, nats-py's) through one redacting formatter."""
    redactor.add(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
