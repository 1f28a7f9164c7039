"""A server interceptor that counts every RPC by method and status and times it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from service import logs, metrics

# A string: grpc.RpcMethodHandler is generic only in the type stubs, not at run time.
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _short(method: str) -> str:
    # "/igbutton.v1.SendService/SendButtonTemplate" -> "SendService/SendButtonTemplate"
    return method.rsplit(".", 1)[-1]


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary-unary and unary-stream handlers; also tags each call's logs with an id."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = _short(handler_call_details.method)
        if handler.unary_unary is not None:
            # The stubs type handlers as sync callables; on grpc.aio they are coroutines.
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = logs.call_id.set(uuid.uuid4().hex[:16])
                start = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    return await inner(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    _observe(method, code, start)
                    logs.call_id.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                # No reset: each RPC runs in a task of its own, and a stream's generator
                # may be finalised from another context when the server shuts down.
                logs.call_id.set(uuid.uuid4().hex[:16])
                start = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    _observe(method, code, start)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _observe(method: str, code: grpc.StatusCode, start: float) -> None:
    metrics.RPCS.labels(method, code.name).inc()
    metrics.RPC_LATENCY.labels(method).observe(time.perf_counter() - start)
