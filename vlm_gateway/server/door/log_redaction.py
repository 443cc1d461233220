"""Logs never carry base64 payloads: a filter on the process's log handlers that replaces
every long base64 run (data URLs above all) with its size."""

from __future__ import annotations

import logging
import re

# 200+ base64 characters: far longer than any id, key digest or word a log line carries.
_SHORTEST_RUN = 200
_BASE64_RUN = re.compile(r"(data:[\w.+-]+/[\w.+-]+;base64,)?[A-Za-z0-9+/]{200,}={0,2}")


def redact(text: str) -> str:
    if len(text) < _SHORTEST_RUN:
        return text  # too short to hold a run: most lines, the access line among them
    return _BASE64_RUN.sub(_placeholder, text)


def _placeholder(match: re.Match[str]) -> str:
    prefix = match.group(1) or ""
    return f"{prefix}<base64, {len(match.group(0)) - len(prefix)} characters>"


class RedactBase64(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        # Formatted once here for every handler and formatter after (args are not kept).
        record.msg, record.args = redacted, None
        return True


def install_log_redaction(
    logger_names: tuple[str, ...] = ("", "uvicorn", "uvicorn.error", "uvicorn.access"),
) -> None:
    """Attach the filter to every handler of these loggers (idempotent). Handler filters see
    records propagated from child loggers too, which logger filters would not."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactBase64) for f in handler.filters):
                handler.addFilter(RedactBase64())
