"""The webhook's listening socket: what one client, or a flood of them, can hold.

The webhook port faces the internet, so it bounds every connection (the handlers are in
webhook.py):

- at most ``webhook.max_connections`` are open at once; one over the cap is closed as soon as
  it is accepted, before anything is read from it;
- a client has ``webhook.header_timeout_seconds`` from connecting, and from its first byte
  after an answer (the rest of a refused body counts as such), to send a whole request head;
  then the connection is closed;
- a POST's body has ``webhook.body_timeout_seconds`` (enforced where it is read, webhook.py);
- an idle kept-alive connection is closed after ``webhook.keepalive_timeout_seconds``
  (aiohttp's ``keepalive_timeout``, which also closes a request head left unfinished then);
- request bodies are never decompressed (webhook.py refuses any ``Content-Encoding``), and
  what a refused request still sends is read and dropped for one second at most.

So a slowloris on the webhook port holds a bounded number of file descriptors, each for a
bounded time, and the gRPC and ops ports keep serving.

aiohttp has no header timeout and no connection cap; they are added here by wrapping each
connection's aiohttp protocol (``web.RequestHandler``) in a thin ``asyncio.Protocol`` that
forwards everything to it, created by this module's site in place of ``web.TCPSite``.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.typedefs import Handler

from igbutton_server import metrics
from igbutton_server.config import WebhookSettings

log = logging.getLogger(__name__)

LINGER_SECONDS = 1.0
"""How long aiohttp reads and drops the rest of a body it did not need (a refused POST), so a
well-behaved client sees the answer rather than a reset; nothing refused is worth longer."""

_LIMIT_WARNING_INTERVAL = 60.0
"""At most one warning this often while connections are refused over the cap."""

_HTTP_LOG = logging.getLogger(__name__ + ".http")
"""aiohttp's protocol logs through this logger on the webhook port (its ``logger=``)."""


class _ClientFaultsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (answered 400: bad framing, Content-Length with
    Transfer-Encoding) or a client that went away as an ERROR with a full traceback. Both are
    the client's doing, not a fault of ours: keep one short INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionError):
            detail = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            detail = detail.strip().split("\n", 1)[0][:200]  # aiohttp quotes the bad line below
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {detail}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


_HTTP_LOG.addFilter(_ClientFaultsInOneLine())


class ConnectionGuard:
    """Counts the webhook port's connections, refuses those over the cap and times out
    request heads; ``middleware`` tells it when a request's head has arrived."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self._max = max_connections
        self._header_timeout = header_timeout
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._refused_unreported = 0
        self._last_warning: float | None = None

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet closed."""
        return len(self._open)

    def wrap(self, handler: web.RequestHandler) -> asyncio.Protocol:
        """The protocol for one accepted connection, served by aiohttp's ``handler``."""
        return _Connection(self, handler, self._header_timeout)

    def admit(self, transport: asyncio.BaseTransport, connection: _Connection) -> bool:
        """Whether a just accepted connection may stay (under the cap)."""
        if len(self._open) >= self._max:
            metrics.WEBHOOK_CONNECTIONS_CLOSED.labels(reason="over_limit").inc()
            self._warn_refused()
            return False
        self._open[transport] = connection
        metrics.WEBHOOK_CONNECTIONS.inc()
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        """A connection admitted earlier has closed."""
        if self._open.pop(transport, None) is not None:
            metrics.WEBHOOK_CONNECTIONS.dec()

    def _warn_refused(self) -> None:
        self._refused_unreported += 1
        now = asyncio.get_running_loop().time()
        if self._last_warning is None or now - self._last_warning >= _LIMIT_WARNING_INTERVAL:
            log.warning(
                "webhook.max_connections reached: closing new webhook connections unread",
                extra={"max_connections": self._max, "refused": self._refused_unreported},
            )
            self._last_warning = now
            self._refused_unreported = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Stop the connection's head deadline while its request is handled."""
        transport = request.transport
        connection = None if transport is None else self._open.get(transport)
        if connection is not None:
            connection.request_started()
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_finished()


class _Connection(asyncio.Protocol):
    """One webhook connection: aiohttp's protocol, a cap check and a head deadline."""

    def __init__(
        self, guard: ConnectionGuard, handler: web.RequestHandler, header_timeout: float
    ) -> None:
        self._guard = guard
        self._handler = handler
        self._header_timeout = header_timeout
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False

    # asyncio.Protocol, forwarded to aiohttp once admitted.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport, self):
            transport.close()
            return
        self._transport = transport
        self._arm()
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._disarm()
        self._guard.release(self._transport)
        self._transport = None
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if not self._in_request and self._deadline is None:
            self._arm()  # the first byte of the next request: its head is due
        self._handler.data_received(data)

    def eof_received(self) -> None:
        # aiohttp's returns None too: a half-closed connection is closed.
        if self._transport is not None:
            self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    # The head deadline.
    def request_started(self) -> None:
        """A request's head is in: no head deadline while it is handled."""
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        """Answered: the next request's head is due from its first byte."""
        self._in_request = False

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._header_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._in_request:
            metrics.WEBHOOK_CONNECTIONS_CLOSED.labels(reason="header_timeout").inc()
            log.debug("webhook connection closed: no complete request head in time")
            self._transport.close()


class GuardedSite(web.BaseSite):
    """Like ``web.TCPSite``, with every connection's protocol wrapped by a ConnectionGuard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self._host, self._port, backlog=self._backlog
        )

    def _accept(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        return self._guard.wrap(server())


async def serve_webhook(app: web.Application, settings: WebhookSettings) -> web.AppRunner:
    """Serve ``app`` on the webhook address with every bound above; the runner is started
    (``runner.addresses`` holds the bound port) and is the caller's to clean up."""
    guard = ConnectionGuard(settings.max_connections, settings.header_timeout_seconds)
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        logger=_HTTP_LOG,
        keepalive_timeout=settings.keepalive_timeout_seconds,
        lingering_time=LINGER_SECONDS,
        auto_decompress=False,  # never inflate before the signature check: webhook.py
    )
    await runner.setup()
    try:
        await GuardedSite(runner, settings.host, settings.port, guard).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
