"""Typed exceptions for igbutton's errors (AIP-193), decoded from the gRPC status.

Every failed call raises an :class:`IgButtonError`. Its class says what went wrong — by the
ErrorInfo reason where igbutton gave one (``OutsideMessagingWindowError``), otherwise by the
status code (``UnavailableError``) — and each reason class subclasses its code's class, so
``except FailedPreconditionError`` also catches ``OutsideMessagingWindowError``.

The exception carries the decoded details: ``reason`` and ``metadata`` from
``google.rpc.ErrorInfo`` (Graph's ``graphCode``, ``graphSubcode`` and ``fbtraceId`` are also
properties), ``violations`` from ``google.rpc.BadRequest`` and ``retry_after`` (seconds) from
``google.rpc.RetryInfo``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "igbutton"
"""The ErrorInfo domain of igbutton's own errors."""


class FieldViolation(NamedTuple):
    """One broken rule of a request, at a field path such as ``template.buttons[1].title``."""

    field: str
    description: str


class IgButtonError(Exception):
    """A call to igbutton failed. The base of every exception this library raises for a call."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        """The gRPC status code."""
        self.message = message
        """The status message, meant for developers."""
        self.reason = reason
        """ErrorInfo reason in UPPER_SNAKE, such as ``RATE_LIMITED``; None without ErrorInfo."""
        self.domain = domain
        """ErrorInfo domain; ``"igbutton"`` for igbutton's own errors."""
        self.metadata: dict[str, str] = dict(metadata or {})
        """ErrorInfo metadata (for Graph errors: graphCode, graphSubcode, fbtraceId)."""
        self.violations: list[FieldViolation] = list(violations)
        """Every field violation from google.rpc.BadRequest, as (field, description)."""
        self.retry_after = retry_after
        """Seconds to wait before retrying, from google.rpc.RetryInfo; None without it."""
        self.request_id = request_id
        """For sends: the request_id used, so the send can be repeated safely."""

    @property
    def graph_code(self) -> int | None:
        """Meta's Graph API error code, when Meta reported the error."""
        return _int_or_none(self.metadata.get("graphCode"))

    @property
    def graph_subcode(self) -> int | None:
        """Meta's Graph API error subcode, when Meta reported one."""
        return _int_or_none(self.metadata.get("graphSubcode"))

    @property
    def fbtrace_id(self) -> str | None:
        """Meta's trace id of the failed Graph call, for support requests."""
        return self.metadata.get("fbtraceId")

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """One line: the status, the reason and every violation."""
        parts = [self.code.name]
        if self.reason:
            parts.append(self.reason)
        text = " ".join(parts) + f": {self.message}"
        if self.violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.violations) + "]"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, violations={self.violations!r})"
        )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- One class per status code igbutton uses. ---


class CancelledError(IgButtonError):
    """CANCELLED: the call was cancelled (usually by the caller)."""


class UnknownError(IgButtonError):
    """UNKNOWN: the outcome is not known."""


class InvalidArgumentError(IgButtonError):
    """INVALID_ARGUMENT: the request is wrong; repeating it will not help."""


class DeadlineExceededError(IgButtonError):
    """DEADLINE_EXCEEDED: no answer in time. A send may or may not have gone out; repeat it
    with the same request_id to find out without sending twice."""


class NotFoundError(IgButtonError):
    """NOT_FOUND."""


class AlreadyExistsError(IgButtonError):
    """ALREADY_EXISTS."""


class PermissionDeniedError(IgButtonError):
    """PERMISSION_DENIED."""


class ResourceExhaustedError(IgButtonError):
    """RESOURCE_EXHAUSTED."""


class FailedPreconditionError(IgButtonError):
    """FAILED_PRECONDITION: the system is not in a state that allows the call."""


class InternalError(IgButtonError):
    """INTERNAL: a bug in igbutton."""


class UnavailableError(IgButtonError):
    """UNAVAILABLE: try again (the client already retried where that is safe)."""


class UnauthenticatedError(IgButtonError):
    """UNAUTHENTICATED: no valid caller token."""


# --- One class per ErrorReason (proto/igbutton/v1/errors.proto). ---


class InvalidRequestError(InvalidArgumentError):
    """The request broke documented limits; ``violations`` lists every one."""


class UnknownAccountError(IgButtonError):
    """The account is not configured, or none was given and several are configured."""


class RequestIdReusedError(AlreadyExistsError):
    """The request_id was used before for a different request."""


class RateLimitedError(ResourceExhaustedError):
    """igbutton's or Meta's rate limit; wait ``retry_after`` seconds."""


class GraphUnavailableError(UnavailableError):
    """Meta reported a temporary problem and did not act; safe to repeat with the same
    request_id."""


class SendOutcomeUnknownError(UnknownError):
    """The send reached Meta but no answer came back; the message may or may not be sent."""


class OutsideMessagingWindowError(FailedPreconditionError):
    """The 24-hour messaging window is closed (consider the human_agent tag)."""


class PolicyBlockedError(FailedPreconditionError):
    """The account is temporarily blocked by Meta for policy violations."""


class GraphPermissionDeniedError(PermissionDeniedError):
    """The Meta app lacks a permission."""


class GraphInvalidParameterError(InvalidArgumentError):
    """Meta rejected a parameter."""


class RecipientNotFoundError(NotFoundError):
    """No such recipient."""


class RecipientUnavailableError(FailedPreconditionError):
    """The person cannot receive messages now."""


class AccessTokenInvalidError(FailedPreconditionError):
    """The account's access token is invalid or expired; an operator must refresh it."""


class GraphError(UnknownError):
    """Any other Graph API error; see ``graph_code``."""


class CallerUnauthenticatedError(UnauthenticatedError):
    """No valid caller token was sent."""


class AccountNotAllowedError(PermissionDeniedError):
    """The caller's token is not allowed this account."""


class UnknownAckIdError(NotFoundError):
    """An ack id is unknown, expired or belongs to another group."""


class ShuttingDownError(UnavailableError):
    """The server is shutting down; reconnect (to another replica)."""


class RequestInProgressError(UnavailableError):
    """Another call with the same request_id is still in flight, or ended without sending;
    repeat with the same request_id (the client already retried)."""


class StorageUnavailableError(UnavailableError):
    """igbutton's storage cannot write now (locked, full, read-only, corrupt, file removed);
    nothing was sent. Retry later with the same request_id."""


class ReauthorizationRequiredError(FailedPreconditionError):
    """Meta rejected the account's access token (Graph 190): nothing is sent from it until
    a person logs in again and the new token is configured in igbutton."""


class AccountCheckFailedError(UnavailableError):
    """AccountService: a call to Meta about the account failed; retry later."""


class AdminRequiredError(PermissionDeniedError):
    """A GroupService call from a caller not configured with ``admin: true``."""


class GroupNotFoundError(NotFoundError):
    """No such consumer group, or one the caller may not see."""


class GroupHasMembersError(FailedPreconditionError):
    """DeleteGroup while members are connected; delete with ``force=True``, or later."""


_BY_REASON: dict[str, type[IgButtonError]] = {
    "INVALID_REQUEST": InvalidRequestError,
    "UNKNOWN_ACCOUNT": UnknownAccountError,
    "REQUEST_ID_REUSED": RequestIdReusedError,
    "RATE_LIMITED": RateLimitedError,
    "GRAPH_UNAVAILABLE": GraphUnavailableError,
    "SEND_OUTCOME_UNKNOWN": SendOutcomeUnknownError,
    "OUTSIDE_MESSAGING_WINDOW": OutsideMessagingWindowError,
    "POLICY_BLOCKED": PolicyBlockedError,
    "GRAPH_PERMISSION_DENIED": GraphPermissionDeniedError,
    "GRAPH_INVALID_PARAMETER": GraphInvalidParameterError,
    "RECIPIENT_NOT_FOUND": RecipientNotFoundError,
    "RECIPIENT_UNAVAILABLE": RecipientUnavailableError,
    "ACCESS_TOKEN_INVALID": AccessTokenInvalidError,
    "GRAPH_ERROR": GraphError,
    "CALLER_UNAUTHENTICATED": CallerUnauthenticatedError,
    "ACCOUNT_NOT_ALLOWED": AccountNotAllowedError,
    "UNKNOWN_ACK_ID": UnknownAckIdError,
    "SHUTTING_DOWN": ShuttingDownError,
    "REQUEST_IN_PROGRESS": RequestInProgressError,
    "STORAGE_UNAVAILABLE": StorageUnavailableError,
    "REAUTHORIZATION_REQUIRED": ReauthorizationRequiredError,
    "ACCOUNT_CHECK_FAILED": AccountCheckFailedError,
    "ADMIN_REQUIRED": AdminRequiredError,
    "GROUP_NOT_FOUND": GroupNotFoundError,
    "GROUP_HAS_MEMBERS": GroupHasMembersError,
}

_BY_CODE: dict[grpc.StatusCode, type[IgButtonError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_class(
    code: grpc.StatusCode, reason: str | None, domain: str | None
) -> type[IgButtonError]:
    """The exception class for a status code and (igbutton's) ErrorInfo reason."""
    if domain == ERROR_DOMAIN and reason in _BY_REASON:
        return _BY_REASON[reason]
    return _BY_CODE.get(code, IgButtonError)


def from_status(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    *,
    request_id: str | None = None,
) -> IgButtonError:
    """Build the typed exception for a status and its ``google.rpc.Status`` details."""
    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    cls = error_class(code, reason, domain)
    return cls(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        violations=violations,
        retry_after=retry_after,
        request_id=request_id,
    )


def from_rpc_error(error: grpc.RpcError, *, request_id: str | None = None) -> IgButtonError:
    """Decode a failed call (``grpc.RpcError`` or ``grpc.aio.AioRpcError``) into the typed
    exception, reading ``google.rpc.Status`` from the ``grpc-status-details-bin`` trailer."""
    assert isinstance(error, grpc.Call | grpc.aio.AioRpcError), error
    code = error.code()
    message = error.details() or ""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except ValueError:
        # The details disagree with the status (not igbutton's doing): keep the status only.
        status = None
    return from_status(code, message, status, request_id=request_id)
