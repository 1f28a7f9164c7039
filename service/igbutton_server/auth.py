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
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server import logs
from igbutton_server.config import Caller
from igbutton_server.errors import ApiError

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


def require_admin(rpc: str) -> None:
    """Raise PERMISSION_DENIED / ADMIN_REQUIRED unless the caller may administer (every
    caller may in open mode)."""
    caller = current_caller.get()
    if caller is not None and not caller.admin:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            R.ERROR_REASON_ADMIN_REQUIRED,
            f"{caller.name} may not call {rpc}: it needs a caller with admin: true",
        )


_UNAUTHENTICATED = ApiError(
    grpc.StatusCode.UNAUTHENTICATED,
    R.ERROR_REASON_CALLER_UNAUTHENTICATED,
    "a valid caller token is required as 'authorization: Bearer <token>' metadata",
)


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the length.
    return hashlib.sha256(token.encode()).digest()


class CallerAuth:
    """Checks the caller's bearer token and records who is calling."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self._callers = [
            (c, _digest(c.token.get_secret_value() if c.token else "")) for c in callers
        ]
        # Anyone who reaches the port can cause this line: at most a few a minute.
        self._refusals = logs.RateLimitedLog(log)

    @property
    def enabled(self) -> bool:
        """Whether callers are configured (otherwise the API is open)."""
        return bool(self._callers)

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller | None:
        """The caller whose token the metadata carries, or None."""
        values = [v for k, v in metadata or () if k.lower() == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str):
            return None
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.by_token(token)

    def by_token(self, token: str) -> Caller | None:
        """The caller with this token (surrounding spaces ignored), or None."""
        if not token.strip():
            return None
        given = _digest(token.strip())
        found: Caller | None = None
        for caller, expected in self._callers:  # no early exit: same time for every caller
            if hmac.compare_digest(given, expected):
                found = caller
        return found

    async def admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Record the call's caller, or end the call UNAUTHENTICATED (abort raises)."""
        caller = self.identify(context.invocation_metadata())
        if caller is None:
            self._refusals.log(
                logging.INFO,
                "caller_unauthenticated",
                "caller not authenticated",
                extra={"method": method},
            )
            await context.abort_with_status(_UNAUTHENTICATED.to_status())
        # The call's own task: the servicer it runs next sees this value.
        current_caller.set(caller)

    def guard_streaming(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A request-streaming handler that admits the caller first."""
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        admit = self.admit
        if handler.stream_unary is not None:
            inner_unary: Any = handler.stream_unary

            async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await admit(method, context)
                return await inner_unary(requests, context)

            return grpc.stream_unary_rpc_method_handler(unary, deserialize, serialize)
        inner_stream: Any = handler.stream_stream

        async def streaming(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await admit(method, context)
            async for item in inner_stream(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
