"""What runs around every RPC: a call id for the logs, caller authentication, metrics, and
the one place a servicer's failure becomes the call's status.

It is applied once per method, when a servicer is registered, rather than through
grpc.aio server interceptors. With any interceptor installed, grpc.aio runs a chain of
Python coroutines on every call just to find the handler, and rebuilds the handler each
time: about 40 µs per call on the benchmark machine, a tenth of a send's server CPU
(docs/performance.md). Wrapped handlers keep grpc's registered-method fast path.

Order, outermost first: call id and metrics (so refused calls are counted and logged
with an id too), the failure's status, then authentication, then the servicer.

Servicers raise: an :class:`~igbutton_server.errors.ApiError` (or a storage failure
:func:`~igbutton_server.errors.api_error` knows) leaves as its status with details; any
other exception is a bug, logged once with its trace and answered INTERNAL without its
text. grpc's own abort (the call has its status already) and cancellation pass through.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import grpc

from igbutton_server import auth, errors, logs, metrics
from igbutton_server.config import Caller

log = logging.getLogger(__name__)

# Strings: grpc's handler and context types are generic only in the type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def new_call_id() -> str:
    """16 hex digits; unique enough to find one call's lines, with no system call."""
    return f"{random.getrandbits(64):016x}"


async def _answer(method: str, context: Context, exc: BaseException) -> None:
    """End the call with the status for ``exc`` (abort raises); return if it is not ours."""
    if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
        return
    error = errors.api_error(exc)
    if error is None:
        # The text of a bug is for the log: it may name internals the caller must not see.
        log.error("RPC failed unexpectedly", exc_info=exc, extra={"method": method})
    # grpc keeps a call's abort until its server's next call, with ``exc`` as its context.
    # Without a traceback (and with the callers' ``del request``) it holds no frame and so no
    # request, which may be a million parsed buttons (54 MB from a 2 MB message).
    exc.__traceback__ = None
    if error is None:
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    await context.abort_with_status(error.to_status())


def _code(failed: bool, context: Context) -> grpc.StatusCode:
    if not failed:
        return grpc.StatusCode.OK
    return context.code() or grpc.StatusCode.UNKNOWN


def _short(method: str) -> str:
    # "/igbutton.v1.SendService/SendButtonTemplate" -> "SendService/SendButtonTemplate"
    return method.rsplit(".", 1)[-1]


class _CallMetrics:
    """One method's metric children, bound once instead of looked up per call."""

    def __init__(self, method: str) -> None:
        self._method = _short(method)
        self._latency = metrics.RPC_LATENCY.labels(self._method)
        self._ok = metrics.RPCS.labels(self._method, grpc.StatusCode.OK.name)

    def observe(self, code: grpc.StatusCode, start: float) -> None:
        if code is grpc.StatusCode.OK:
            self._ok.inc()
        else:
            metrics.RPCS.labels(self._method, code.name).inc()
        self._latency.observe(time.perf_counter() - start)


class RpcMiddleware:
    """Wraps method handlers with the call id, metrics and caller authentication."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self._auth = auth.CallerAuth(callers)

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler of ``method`` (its full path) with the middleware around it."""
        check = self._auth.enabled and not method.startswith(auth.OPEN_SERVICE_PREFIXES)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner = handler.unary_stream
            # A stream handler is an async generator or, in the reader/writer form (grpc's
            # health Watch), a coroutine that writes through the context; grpc tells them
            # apart by the function's kind, so the wrapper must be of the same kind.
            streams = inspect.isasyncgenfunction(inner)
            return grpc.unary_stream_rpc_method_handler(
                (self._unary_stream if streams else self._unary)(method, inner, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Request streams (only reflection, an open service, has them): no metrics, as
        # they are long-lived tool sessions; authentication if ever needed.
        return self._auth.guard_streaming(method, handler) if check else handler

    def _unary(self, method: str, inner: Any, check: bool) -> Callable[..., Any]:
        # The stubs type handlers as sync callables; on grpc.aio they are coroutines.
        observed = _CallMetrics(method)
        identify = self._auth.admit

        async def unary(request: Any, context: Context) -> Any:
            token = logs.call_id.set(new_call_id())
            start = time.perf_counter()
            failed = False
            try:
                if check:
                    await identify(method, context)
                return await inner(request, context)
            except BaseException as exc:
                failed = True
                del request  # see _answer
                await _answer(method, context, exc)
                raise
            finally:
                observed.observe(_code(failed, context), start)
                logs.call_id.reset(token)

        return unary

    def _unary_stream(self, method: str, inner: Any, check: bool) -> Callable[..., Any]:
        observed = _CallMetrics(method)
        identify = self._auth.admit

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            # No reset: each RPC runs in a task of its own, and a stream's generator
            # may be finalised from another context when the server shuts down.
            logs.call_id.set(new_call_id())
            start = time.perf_counter()
            failed = False
            try:
                if check:
                    await identify(method, context)
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                failed = True
                del request  # see _answer
                await _answer(method, context, exc)
                raise
            finally:
                observed.observe(_code(failed, context), start)

        return stream


class Registrar:
    """Stands in for the gRPC server when a generated ``add_*Servicer_to_server`` runs.

    Generated code registers each service twice, as a generic handler and as registered
    method handlers (which take precedence); both are wrapped, so the middleware runs
    whichever grpc picks.
    """

    def __init__(self, server: grpc.aio.Server, middleware: RpcMiddleware) -> None:
        self._server = server
        self._middleware = middleware

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Forward generic handlers, each wrapped on first use of a method."""
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._middleware) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        """Forward the service's method handlers, wrapped."""
        wrap = self._middleware.wrap
        self._server.add_registered_method_handlers(
            service_name,
            {name: wrap(f"/{service_name}/{name}", h) for name, h in method_handlers.items()},
        )


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, middleware: RpcMiddleware) -> None:
        self._inner = inner
        self._middleware = middleware
        self._wrapped: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # not cached: unknown names must not grow the map
            wrapped = self._wrapped[method] = self._middleware.wrap(method, handler)
        return wrapped
