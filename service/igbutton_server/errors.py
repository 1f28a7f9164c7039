"""igbutton's failures and the one place that turns them into gRPC statuses (AIP-193).

Expected failures (bad input, Meta said no, a limit) are raised as :class:`ApiError`
subclasses and reach the caller as a status with one ``google.rpc.ErrorInfo`` and, where
they apply, ``google.rpc.BadRequest`` and ``google.rpc.RetryInfo``. Servicers only raise;
the RPC middleware answers each call's failure through :func:`api_error`, and what that does
not know is a bug: the middleware logs it with its trace and answers INTERNAL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from igbutton.v1 import errors_pb2
from igbutton_server.storage.postbacks import (
    GroupFilterMismatch,
    StorageUnavailable,
    StoreClosed,
)

ERROR_DOMAIN = "igbutton"
_REASON_PREFIX = "ERROR_REASON_"


def reason_name(reason: errors_pb2.ErrorReason.ValueType) -> str:
    """The ErrorInfo reason string for an ErrorReason value (its name without the prefix)."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule of a request, at a field path such as ``template.buttons[1].title``."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """An expected failure, with everything needed to build its gRPC status."""

    code: grpc.StatusCode
    reason: errors_pb2.ErrorReason.ValueType
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        """The gRPC status with its AIP-193 details packed in."""
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.reason), domain=ERROR_DOMAIN, metadata=dict(self.metadata)
        )
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after is not None:
            delay = max(self.retry_after, 0.0)
            seconds = math.floor(delay)
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=seconds, nanos=int((delay - seconds) * 1e9)
                )
            )
            details.append(_pack(retry))
        status = status_pb2.Status(code=_CODES[self.code], message=self.message, details=details)
        converted: grpc.Status = rpc_status.to_status(status)
        return converted


def _pack(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.BadRequest
    | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: code_pb2.OK,
    grpc.StatusCode.CANCELLED: code_pb2.CANCELLED,
    grpc.StatusCode.UNKNOWN: code_pb2.UNKNOWN,
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: code_pb2.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: code_pb2.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE: code_pb2.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: code_pb2.DATA_LOSS,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
}

R = errors_pb2.ErrorReason


class InvalidRequest(ApiError):
    """The request breaks documented limits; every violation is listed."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        count = len(violations)
        first = violations[0]
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            R.ERROR_REASON_INVALID_REQUEST,
            f"invalid request: {first.field}: {first.description}{more}",
            violations=violations,
        )


class RateLimited(ApiError):
    """A rate limit, igbutton's own or Meta's; ``retry_after`` seconds until a retry may pass."""

    def __init__(self, message: str, retry_after: float, metadata: Mapping[str, str] = {}) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            R.ERROR_REASON_RATE_LIMITED,
            message,
            metadata=dict(metadata),
            retry_after=retry_after,
        )


class ShuttingDown(ApiError):
    """The server is stopping; the caller should reconnect (to another replica)."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            R.ERROR_REASON_SHUTTING_DOWN,
            "igbutton is shutting down; reconnect",
        )


def _group_filter_mismatch(exc: GroupFilterMismatch) -> InvalidRequest:
    accounts = ", ".join(sorted(exc.existing.account_ids)) or "all"
    prefix = exc.existing.payload_prefix or "(none)"
    return InvalidRequest(
        [
            FieldViolation(
                "group",
                f"group {exc.group} exists with other filters: account_ids {accounts}, "
                f"payload_prefix {prefix}; members of a group must use the same filters",
            )
        ]
    )


def api_error(exc: Exception) -> ApiError | None:
    """The expected failure ``exc`` stands for, or None when it is a bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreClosed):
        return ShuttingDown()
    if isinstance(exc, StorageUnavailable):
        return ApiError(grpc.StatusCode.UNAVAILABLE, R.ERROR_REASON_STORAGE_UNAVAILABLE, str(exc))
    if isinstance(exc, GroupFilterMismatch):
        return _group_filter_mismatch(exc)
    return None
