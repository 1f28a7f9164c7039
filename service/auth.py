"""Caller authentication: bearer tokens in gRPC metadata, each allowed a set of accounts.

With no callers configured the API is open (local use, the sandbox). Otherwise every call
except health checks and reflection needs ``authorization: Bearer <token>`` matching a
configured caller, or it ends UNAUTHENTICATED before reaching a servicer. The matched
caller is put in a context variable for the servicers, which answer PERMISSION_DENIED for
an account the caller may not use. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from igbutton.v1 import errors_pb2

from service.config import Caller
from service.errors import ApiError

log = logging.getLogger(__name__)

R = errors_pb2.ErrorReason

# The caller of the current RPC; None when no callers are configured (open mode).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "current_caller", default=None
)

# Services anyone may call: load balancers and tools probe them without a token.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def caller_may_use(account_id: str) -> bool:
    """Whether the current caller may use the account (always, in open mode)."""
    caller = current_caller.get()
    return caller is None or caller.allows(account_id)


def account_not_allowed(account_id: str) -> ApiError:
    """The error for a caller using an account it is not allowed."""
    caller = current_caller.get()
    name = caller.name if caller is not None else "caller"
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        R.ERROR_REASON_ACCOUNT_NOT_ALLOWED,
        f"{name} may not use Instagram account {account_id}",
        metadata={"accountId": account_id},
    )


_UNAUTHENTICATED = ApiError(
    grpc.StatusCode.UNAUTHENTICATED,
    R.ERROR_REASON_CALLER_UNAUTHENTICATED,
    "a valid caller token is required as 'authorization: Bearer <token>' metadata",
)


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the length.
    return hashlib.sha256(token.encode()).digest()


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's bearer token and records who is calling."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self._callers = [
            (c, _digest(c.token.get_secret_value() if c.token else "")) for c in callers
        ]

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
        """The caller whose token the metadata carries, or None."""
        values = [v for k, v in metadata or () if k.lower() == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = _digest(token.strip())
        found: Caller | None = None
        for caller, expected in self._callers:  # no early exit: same time for every caller
            if hmac.compare_digest(given, expected):
                found = caller
        return found

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Let authenticated (or open) calls through; answer the rest UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if not self._callers or handler is None:
            return handler
        method: str = handler_call_details.method
        if method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        caller = self.identify(handler_call_details.invocation_metadata)
        if caller is None:
            log.info("caller not authenticated", extra={"method": method})
            return _rejecting(handler)
        # Documented: the interceptor's context is the one the handler runs in.
        current_caller.set(caller)
        return handler


def _rejecting(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape that ends the call UNAUTHENTICATED."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(_UNAUTHENTICATED.to_status())

    async def streaming(
        _request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort_with_status(_UNAUTHENTICATED.to_status())
        yield  # pragma: no cover - makes this an async generator

    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
