"""Logs: one line per inference request (when enabled), as text or JSON, with request ids.

A transport sets the request id (`X-Request-ID`, gRPC `x-request-id` metadata, the OIP
`id`, or a new one) in `request_id` for the request's task; the inference service logs the
request's line with it, and the transport returns it to the client.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from contextvars import ContextVar
from typing import Any, Literal

import orjson

request_id: ContextVar[str | None] = ContextVar("torchport_request_id", default=None)
requests_log = logging.getLogger("torchport.requests")

# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def new_request_id(given: str | None = None) -> str:
    """The client's id when it is usable (printable ASCII, at most 128 characters: it goes
    back in an HTTP header and gRPC metadata, which carry nothing else), else a new one."""
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return f"{_PREFIX}{next(_COUNTER):016x}"


# New ids: a random prefix per process and a counter, unique without a syscall a request.
_PREFIX = uuid.uuid4().hex[:16]
_COUNTER = itertools.count()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(_extra(record))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    # Private attributes are other libraries' (Ray stamps `_ray_timestamp_ns` on every
    # record once imported), not fields of ours.
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k[0] != "_"}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …`, the record's extra fields after the
    message (quoted when they hold spaces), so a request line says what it was."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={_text(v)}" for k, v in _extra(record).items())
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {fields}{newline}{rest}"


def _text(value: Any) -> str:
    text = "-" if value is None else str(value)
    return orjson.dumps(text).decode() if not text or any(c.isspace() for c in text) else text


def configure_logging(fmt: Literal["text", "json"], access_log: bool) -> None:
    """Log torchport's records to stderr as text or JSON; request lines only if asked."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("torchport")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    requests_log.setLevel(logging.INFO if access_log else logging.WARNING)
