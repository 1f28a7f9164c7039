"""Structured logging: one JSON object per line on stderr, with per-call context."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from igbutton_server.config import LogSettings

# Set by the RPC layer for the duration of a call, so every line it logs carries it.
call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

# Set by the tracing module while tracing is on: the current span's (trace_id, span_id) as
# W3C hex, or None outside a span. A hook, so that logging never imports OpenTelemetry.
current_trace_ids: Callable[[], tuple[str, str] | None] | None = None

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
        if current_trace_ids is not None and (ids := current_trace_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
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


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0
    level: int = logging.NOTSET
    summary_due: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """At most ``limit`` lines of one kind per ``interval`` seconds, for lines a client can
    cause at will (refused calls and webhooks), so a flood cannot flood the log.

    Lines over the limit are counted, not written; one line "suppressed K similar lines"
    reports them when the interval ends (a timer on the running event loop) or, outside an
    event loop, with the kind's next line. Every line carries ``kind``. Kinds are a few
    fixed names chosen by the code, never values from a request: each keeps a window.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        limit: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._limit = limit
        self._interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(
        self,
        level: int,
        kind: str,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Log ``msg % args`` at ``level`` unless ``kind`` is over its limit."""
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        window = self._windows.get(kind)
        if window is not None and now - window.start >= self._interval:
            self._summarise(kind)
            window = None
        if window is None:
            window = self._windows[kind] = _Window(start=now)
        if window.logged < self._limit:
            window.logged += 1
            self._logger.log(level, msg, *args, extra={"kind": kind, **(extra or {})})
            return
        window.suppressed += 1
        window.level = max(window.level, level)
        if window.summary_due is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop: the kind's next line reports them
            delay = max(0.0, window.start + self._interval - now)
            # An empty context: the summary is no one call's line (no call_id).
            window.summary_due = loop.call_later(
                delay, self._summarise, kind, context=contextvars.Context()
            )

    def _summarise(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window is None:
            return
        if window.summary_due is not None:
            window.summary_due.cancel()
        if window.suppressed:
            self._logger.log(
                window.level,
                "suppressed %d similar lines (%s) in %.0f s",
                window.suppressed,
                kind,
                self._interval,
                extra={"kind": kind, "suppressed": window.suppressed},
            )
