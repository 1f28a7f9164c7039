"""Structured logging: one JSON object per line on stderr, with per-call context."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from igbutton_server.config import LogSettings

# Set by the RPC layer for the duration of a call, so every line it logs carries it.
call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line; ``extra=`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = call_id.get()
        if cid is not None:
            entry["call_id"] = cid
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(settings: LogSettings) -> None:
    """Install the root handler once, in the chosen format and level."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # aiohttp logs every request at INFO; that is metrics' job, not the log's.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
