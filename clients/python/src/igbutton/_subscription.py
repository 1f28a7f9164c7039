"""Subscription iterators that reconnect after UNAVAILABLE (or a CANCELLED they did not
cause) and resume where they left off.

A broadcast subscription remembers the last sequence it yielded and resumes with
``after_sequence`` set to it, so a reconnect loses nothing and repeats nothing. If nothing was
yielded yet and it started at "latest", it resumes from the time it first subscribed. A group
subscription simply rejoins: the group keeps its own position on the server, and postbacks
left unacknowledged are delivered again after their ack deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

import grpc

from igbutton._requests import SubscribeOptions
from igbutton._retry import ReconnectPolicy
from igbutton.errors import IgButtonError, from_rpc_error
from igbutton.models import Postback
from igbutton.v1 import postback_service_pb2

log = logging.getLogger("igbutton")

SubscribeRequest = postback_service_pb2.SubscribePostbacksRequest
SubscribeResponse = postback_service_pb2.SubscribePostbacksResponse
OnDisconnect = Callable[[IgButtonError, float], None]
"""Called with the error and the delay before the next attempt, each time a stream is lost."""


_RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""Stream endings worth a reconnect. CANCELLED reaches here only from the server's side
(a stream this subscription cancels ends it instead): grpc cancels new calls it has no room
for, as when every subscriber reconnects at once after a restart."""


class _Cursor:
    """What to ask for on each (re)connect, and which events are new."""

    def __init__(self, options: SubscribeOptions) -> None:
        self.options = options
        self.last_sequence: int | None = None
        self._since: datetime | None = None
        self._connected_once = False

    def next_request(self) -> SubscribeRequest:
        if not self._connected_once:
            self._connected_once = True
            if self.options.starts_latest and not self.options.group:
                self._since = datetime.now(UTC)
            return self.options.request()
        if self.options.group:
            return self.options.request()
        if self.last_sequence is not None:
            return self.options.request(resume_after=self.last_sequence)
        return self.options.request(resume_since=self._since)

    def accept(self, response: SubscribeResponse) -> Postback | None:
        event = Postback.from_proto(response)
        if not self.options.group:
            if self.last_sequence is not None and event.sequence <= self.last_sequence:
                return None  # already yielded before the reconnect
            self.last_sequence = event.sequence
        return event


class _Reconnects:
    """Counts consecutive failed streams and decides whether, and when, to reconnect."""

    def __init__(
        self,
        policy: ReconnectPolicy,
        on_disconnect: OnDisconnect | None,
        on_fatal: Callable[[], None],
    ) -> None:
        self._policy = policy
        self._on_disconnect = on_disconnect
        self._on_fatal = on_fatal
        self._failures = 0

    def succeeded(self) -> None:
        self._failures = 0

    def after(self, error: grpc.RpcError) -> float:
        """The delay before reconnecting, or raise the typed error when we must not."""
        typed = from_rpc_error(error)
        self._failures += 1
        if typed.code not in _RECONNECT_CODES or self._policy.gives_up(self._failures):
            self._on_fatal()  # the subscription is over: later reads end the iteration
            raise typed from error
        delay = self._policy.delay(self._failures)
        log.info("subscription lost (%s); reconnecting in %.2fs", typed.describe(), delay)
        if self._on_disconnect is not None:
            self._on_disconnect(typed, delay)
        return delay


class AsyncSubscription:
    """An async iterator of :class:`Postback` events; use ``async with`` or :meth:`aclose`.

    Reconnects after UNAVAILABLE, or a CANCELLED it did not cause, with growing delays and
    resumes where it left off.
    Other errors end the iteration with the typed :class:`IgButtonError`.
    """

    def __init__(
        self,
        open_stream: Callable[
            [SubscribeRequest], grpc.aio.UnaryStreamCall[SubscribeRequest, SubscribeResponse]
        ],
        options: SubscribeOptions,
        reconnect: ReconnectPolicy,
        on_disconnect: OnDisconnect | None = None,
    ) -> None:
        self._open = open_stream
        self._cursor = _Cursor(options)
        self._closed = asyncio.Event()
        self._reconnects = _Reconnects(reconnect, on_disconnect, self._closed.set)
        self._call: grpc.aio.UnaryStreamCall[SubscribeRequest, SubscribeResponse] | None = None

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last postback yielded (broadcast only)."""
        return self._cursor.last_sequence

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Postback:
        while True:
            if self._closed.is_set():
                raise StopAsyncIteration
            if self._call is None:
                self._call = self._open(self._cursor.next_request())
            call = self._call
            try:
                response = await call.read()
            except grpc.aio.AioRpcError as err:
                self._call = None
                if self._closed.is_set():
                    raise StopAsyncIteration from None
                await self._pause(self._reconnects.after(err))
                continue
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError in read() when aclose() cancelled the call
                # from another task; only a cancellation of this task itself propagates.
                task = asyncio.current_task()
                if self._closed.is_set() and (task is None or task.cancelling() == 0):
                    raise StopAsyncIteration from None
                raise
            if response is grpc.aio.EOF:
                self._call = None
                self._closed.set()
                raise StopAsyncIteration
            assert isinstance(response, SubscribeResponse)
            self._reconnects.succeeded()
            event = self._cursor.accept(response)
            if event is not None:
                return event

    async def wait_subscribed(self) -> None:
        """Open the stream now and return once the server has fixed its start position:
        every matching postback stored from then on will be yielded. Reconnects (and raises)
        as iteration does; returns at once if the subscription is closed."""
        while not self._closed.is_set():
            if self._call is None:
                self._call = self._open(self._cursor.next_request())
            call = self._call
            await call.initial_metadata()  # igbutton sends it once the cursor exists
            if not call.done():
                self._reconnects.succeeded()
                return
            code = await call.code()
            if code is grpc.StatusCode.OK:
                return
            self._call = None
            if self._closed.is_set():
                return
            error = grpc.aio.AioRpcError(
                code,
                grpc.aio.Metadata(),
                await call.trailing_metadata(),
                await call.details(),
            )
            await self._pause(self._reconnects.after(error))

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), delay)

    async def aclose(self) -> None:
        """End the subscription; iteration stops."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncStream(Protocol):
    """What the blocking API returns for a server stream: an iterator that is also the call
    (and, once failed, the error)."""

    def __next__(self) -> SubscribeResponse: ...

    def initial_metadata(self) -> object: ...

    def is_active(self) -> bool: ...

    def code(self) -> grpc.StatusCode | None: ...

    def cancel(self) -> object: ...


class Subscription:
    """An iterator of :class:`Postback` events; use ``with`` or :meth:`close`.

    Reconnects after UNAVAILABLE, or a CANCELLED it did not cause, with growing delays and
    resumes where it left off.
    Other errors end the iteration with the typed :class:`IgButtonError`. :meth:`close` may be
    called from another thread to end a blocked iteration.
    """

    def __init__(
        self,
        open_stream: Callable[[SubscribeRequest], SyncStream],
        options: SubscribeOptions,
        reconnect: ReconnectPolicy,
        on_disconnect: OnDisconnect | None = None,
    ) -> None:
        self._open = open_stream
        self._cursor = _Cursor(options)
        self._closed = threading.Event()
        self._reconnects = _Reconnects(reconnect, on_disconnect, self._closed.set)
        self._call: SyncStream | None = None
        self._lock = threading.Lock()

    @property
    def last_sequence(self) -> int | None:
        """The sequence of the last postback yielded (broadcast only)."""
        return self._cursor.last_sequence

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Postback:
        while True:
            with self._lock:
                if self._closed.is_set():
                    raise StopIteration
                if self._call is None:
                    self._call = self._open(self._cursor.next_request())
                call = self._call
            try:
                response = next(call)
            except StopIteration:
                self.close()
                raise
            except grpc.RpcError as err:
                with self._lock:
                    self._call = None
                if self._closed.is_set():
                    raise StopIteration from None
                self._closed.wait(self._reconnects.after(err))
                continue
            self._reconnects.succeeded()
            event = self._cursor.accept(response)
            if event is not None:
                return event

    def wait_subscribed(self) -> None:
        """Open the stream now and return once the server has fixed its start position:
        every matching postback stored from then on will be yielded. Reconnects (and raises)
        as iteration does; returns at once if the subscription is closed."""
        while not self._closed.is_set():
            with self._lock:
                if self._closed.is_set():
                    return
                if self._call is None:
                    self._call = self._open(self._cursor.next_request())
                call = self._call
            call.initial_metadata()  # igbutton sends it once the cursor exists
            if call.is_active():
                self._reconnects.succeeded()
                return
            if call.code() is grpc.StatusCode.OK:
                return
            with self._lock:
                if self._call is call:
                    self._call = None
            if self._closed.is_set():
                return
            assert isinstance(call, grpc.RpcError)
            self._closed.wait(self._reconnects.after(call))

    def close(self) -> None:
        """End the subscription; iteration stops (also when blocked in another thread)."""
        with self._lock:
            self._closed.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
