"""What a send ends with (a result or an ApiError), and how it is kept for idempotency."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server.errors import ApiError

R = errors_pb2.ErrorReason

# Failures the caller may retry with the same request_id: Meta did not act. They are not
# remembered, so the retry really sends. Everything else is remembered and replayed.
_RETRYABLE_REASONS = frozenset(
    {
        R.ERROR_REASON_RATE_LIMITED,
        R.ERROR_REASON_GRAPH_UNAVAILABLE,
        R.ERROR_REASON_SHUTTING_DOWN,
        R.ERROR_REASON_REQUEST_IN_PROGRESS,
        R.ERROR_REASON_STORAGE_UNAVAILABLE,
    }
)


@dataclass(frozen=True)
class SendResult:
    """Meta's answer to a successful send."""

    recipient_id: str
    message_id: str


Outcome = SendResult | ApiError


class SendTracker:
    """Set by the Graph client once a request may have reached Meta.

    After that point a failure or a cancellation is ambiguous: the message may have
    been sent, so the send must not be repeated.
    """

    def __init__(
        self,
        before_write: Callable[[], Awaitable[None]] | None = None,
        *,
        slot_taken: bool = False,
    ) -> None:
        self.written = False
        self.attempts = 0
        self._before_write = before_write
        self.slot_taken = slot_taken
        """The first attempt's rate-limit slot was taken already (RateLimiter.take_now)."""

    async def about_to_write(self) -> None:
        """Called by the Graph client before it starts writing a request (each attempt).
        The first call runs ``before_write`` (the idempotency claim is marked written,
        durably); if that raises, the request must not be written."""
        if self._before_write is not None:
            mark, self._before_write = self._before_write, None
            await mark()


def outcome_unknown(message: str, status: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> ApiError:
    """The error for a send that reached Meta without a readable answer."""
    return ApiError(
        status,
        R.ERROR_REASON_SEND_OUTCOME_UNKNOWN,
        message + "; the message may or may not have been sent, so igbutton did not retry "
        "it and a repeat with the same request_id returns this error",
    )


def is_final(error: ApiError) -> bool:
    """Whether the failure is kept for the request_id (False: the caller may retry).

    igbutton's own messaging-window refusal is not kept: nothing was asked of Meta, and a
    retry once the person wrote again may pass."""
    return error.reason not in _RETRYABLE_REASONS and not getattr(error, "before_meta", False)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Built once: ``json.dumps`` with arguments builds an encoder per call (3 of its 8 µs)."""


def dump_outcome(outcome: Outcome) -> str:
    """The outcome as JSON, for a store."""
    if isinstance(outcome, SendResult):
        body: dict[str, Any] = {
            "result": {"recipient_id": outcome.recipient_id, "message_id": outcome.message_id}
        }
    else:
        body = {
            "error": {
                "code": outcome.code.name,
                "reason": errors_pb2.ErrorReason.Name(outcome.reason),
                "message": outcome.message,
                "metadata": dict(outcome.metadata),
            }
        }
    return _ENCODER.encode(body)


def load_outcome(text: str) -> Outcome:
    """The outcome a store kept, as :func:`dump_outcome` wrote it."""
    body = json.loads(text)
    if "result" in body:
        result = body["result"]
        return SendResult(str(result["recipient_id"]), str(result["message_id"]))
    error = body["error"]
    return ApiError(
        grpc.StatusCode[error["code"]],
        errors_pb2.ErrorReason.Value(error["reason"]),
        str(error["message"]),
        metadata={str(k): str(v) for k, v in error["metadata"].items()},
    )
