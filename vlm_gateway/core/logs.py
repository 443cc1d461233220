"""Log records for people and for machines: one text format with UTC timestamps and one JSON
object per line, for our loggers and uvicorn's alike, each tagged with the id of the request
it is about (vlm_gateway/core/request_context.py). docs/operations.md shows both."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from vlm_gateway.core.request_context import current_request

# Record attributes that become JSON fields when a line has them (the access line sets them
# all; the filter sets model and key on every line of a request once they are known).
EXTRA_FIELDS = (
    "model",
    "key",
    "status",
    "duration_ms",
    "method",
    "path",
    "client",
    "prompt_tokens",
    "completion_tokens",
    "images",
)


class RequestContextFilter(logging.Filter):
    """Tags each record with the current request's id, model and key name, unless the caller
    already passed them (`extra={"request_id": ...}`): a handler filter, so it sees every logger's
    records, uvicorn's included."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_request()
        if getattr(record, "request_id", None) is None:
            record.request_id = context.request_id if context is not None else None
        if getattr(record, "model", None) is None and context is not None:
            record.model = context.model
        if getattr(record, "key", None) is None and context is not None:
            record.key = context.key
        return True


class Timestamps:
    """ISO 8601 in UTC with milliseconds: 2026-05-01T12:34:56.789Z. The date and time up to the
    second are made once a second: a datetime per line was a tenth of the access line's cost."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            moment = datetime.fromtimestamp(second, tz=UTC)
            self._prefix, self._second = moment.strftime("%Y-%m-%dT%H:%M:%S"), second
        millis = int((record.created - second) * 1000)
        return f"{self._prefix}.{millis:03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    # The redaction filter may have stored a cleaned traceback in exc_text: prefer it.
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    text = record.exc_text or ""
    if record.stack_info:
        text = (text + "\n" if text else "") + formatter.formatStack(record.stack_info)
    return text or None


class TextFormatter(logging.Formatter):
    """`2026-05-01T12:34:56.789Z INFO vlm_gateway.access [req_ab12]: message`; the brackets
    only when the line is about a request."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamp = Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        tag = f" [{request_id}]" if request_id else ""
        when = self._timestamp(record)
        line = f"{when} {record.levelname} {record.name}{tag}: {record.getMessage()}"
        details = _exception_text(self, record)
        return line + "\n" + details if details else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (null outside a request),
    then model, key, status, duration_ms, method, path, client and the usage counts where the
    line has them, and exc with the traceback of a logged exception."""

    def __init__(self) -> None:
        super().__init__()
        self._timestamp = Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for field in EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        details = _exception_text(self, record)
        if details:
            entry["exc"] = details
        return orjson.dumps(entry, default=str).decode()


# The access lines (server/door/access_line.py): one per request, written after its response.
ACCESS_LOGGER = "vlm_gateway.access"


class TurnBufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, on an event loop's thread, gathers the access lines of one turn
    of the loop and writes them at the turn's end in one write: with many requests in flight,
    one write a turn instead of one per request (issue 23). Every other line is written at
    once, after what was gathered, so lines keep their order and a line logged before a
    response (a refusal's reason) or before a hard exit is out before it. What is gathered is
    written by `flush`, which logging calls at exit, and `flush_log_handlers` before an
    `os._exit`."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop's thread: at once, in order
            loop = None
        if loop is None or record.name != ACCESS_LOGGER:
            self._pending.append(line)
            self.flush()
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                lines = "".join(self._pending)
                self._pending.clear()
                try:
                    self.stream.write(lines)
                except Exception:  # a closed stream at exit: nothing left to tell
                    return
            super().flush()


def flush_log_handlers() -> None:
    """Write what every handler of the root logger holds: before `os._exit`, which skips
    logging's own flush at exit."""
    for handler in logging.getLogger().handlers:
        handler.flush()
