"""igbutton's failures and the one place that turns them into gRPC statuses (AIP-193).

Expected failures (bad input, Meta said no, a limit) are raised as :class:`ApiError`
subclasses and reach the caller as a status with one ``google.rpc.ErrorInfo`` and, where
they apply, ``google.rpc.BadRequest`` and ``google.rpc.RetryInfo``. Servicers only raise;
the RPC middleware answers each call's failure through :func:`api_error`, and what that does
not know is a bug: the middleware logs it with its trace and answers INTERNAL.

Every status is bounded so that a default client can read it. A gRPC client refuses
trailers above 16 KiB all together, and already above 8 KiB it refuses some of them at
random (grpc's soft limit, ``grpc.max_metadata_size``), answering RESOURCE_EXHAUSTED instead
of the real error. The details (``grpc-status-details-bin``, counted decoded) are kept within
:data:`DETAILS_MAX_BYTES` and the message (``grpc-message``, percent-encoded: up to three
bytes per UTF-8 byte) within :data:`MESSAGE_MAX_BYTES`: 7 KiB at worst. Each string is cut
to its limit and then ends with :data:`TRUNCATED`; BadRequest keeps the violations that fit,
then one (with an empty field) saying how many were left out.
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
from igbutton_server.storage.groups import GroupHasMembers, GroupNotFound
from igbutton_server.storage.postbacks import (
    GroupFilterMismatch,
    StorageUnavailable,
    StoreClosed,
    TooManyGroups,
    split_group_key,
)

ERROR_DOMAIN = "igbutton"
_REASON_PREFIX = "ERROR_REASON_"

TRUNCATED = "…[truncated]"
"""Ends a string that igbutton cut to its limit."""
MESSAGE_MAX_BYTES = 1024
"""The status message, in UTF-8 bytes."""
DETAILS_MAX_BYTES = 4096
"""The serialized google.rpc.Status, message and every detail included."""
METADATA_MAX_BYTES = 1536
"""ErrorInfo's metadata entries together (UTF-8 of keys and values)."""
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 256
VIOLATIONS_MAX = 20
FIELD_MAX_CHARS = 128
DESCRIPTION_MAX_CHARS = 256


def bounded(text: str, max_chars: int, max_bytes: int | None = None) -> str:
    """``text``, or its start ending in :data:`TRUNCATED`, within ``max_chars`` code points
    and, if given, ``max_bytes`` bytes of UTF-8."""
    if len(text) <= max_chars and (max_bytes is None or len(text.encode()) <= max_bytes):
        return text
    cut = text[: max(max_chars - len(TRUNCATED), 0)]
    if max_bytes is not None:
        room = max(max_bytes - len(TRUNCATED.encode()), 0)
        cut = cut.encode()[:room].decode(errors="ignore")
    return cut + TRUNCATED


def bounded_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """ErrorInfo metadata within METADATA_MAX_BYTES, each key and value cut to its limit.

    Entries are kept in order; the first that does not fit ends the list.
    """
    kept: dict[str, str] = {}
    room = METADATA_MAX_BYTES
    for key, value in metadata.items():
        short_key = bounded(key, METADATA_KEY_MAX_CHARS)
        short_value = bounded(value, METADATA_VALUE_MAX_CHARS)
        room -= len(short_key.encode()) + len(short_value.encode())
        if room < 0:
            break
        kept[short_key] = short_value
    return kept


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
        message = bounded(self.message, MESSAGE_MAX_BYTES, MESSAGE_MAX_BYTES)
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.reason),
            domain=ERROR_DOMAIN,
            metadata=bounded_metadata(self.metadata),
        )
        details.append(_pack(info))
        if self.violations:
            # What is left of the budget once the rest is packed.
            used = len(message.encode()) + info.ByteSize() + _RESERVE_BYTES
            details.append(_pack(_bad_request(self.violations, DETAILS_MAX_BYTES - used)))
        if self.retry_after is not None:
            delay = max(self.retry_after, 0.0)
            seconds = math.floor(delay)
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=seconds, nanos=int((delay - seconds) * 1e9)
                )
            )
            details.append(_pack(retry))
        status = status_pb2.Status(code=_CODES[self.code], message=message, details=details)
        converted: grpc.Status = rpc_status.to_status(status)
        return converted


# The Status's code and framing, the Any wrappers with their type URLs, the RetryInfo and
# the closing "N more violations" entry, with room to spare.
_RESERVE_BYTES = 320


def _bad_request(violations: Sequence[FieldViolation], budget: int) -> error_details_pb2.BadRequest:
    """The first violations that fit ``budget`` bytes, then one saying how many were left out."""
    bad = error_details_pb2.BadRequest()
    for index, violation in enumerate(violations):
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=bounded(violation.field, FIELD_MAX_CHARS),
            description=bounded(violation.description, DESCRIPTION_MAX_CHARS),
        )
        cost = entry.ByteSize() + 3  # tag and length of the repeated field
        if index >= VIOLATIONS_MAX or cost > budget:
            left = len(violations) - index
            bad.field_violations.add(
                field="", description=f"{left} more violation{'s' if left > 1 else ''} not shown"
            )
            break
        budget -= cost
        bad.field_violations.append(entry)
    return bad


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


class ReauthorizationRequired(ApiError):
    """Meta rejected the account's token (Graph 190); nothing is sent until a new one."""

    def __init__(self, account_id: str) -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            R.ERROR_REASON_REAUTHORIZATION_REQUIRED,
            f"Meta rejected the access token of account {account_id} (Graph code 190): a "
            "person must log in again and the new token be configured",
            metadata={"accountId": account_id},
        )


class AccountCheckFailed(ApiError):
    """A call to Meta about an account (me, subscribed_apps) failed; retry later."""

    def __init__(self, account_id: str, why: str, graph_code: int | None = None) -> None:
        metadata = {"accountId": account_id}
        if graph_code is not None:
            metadata["graphCode"] = str(graph_code)
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            R.ERROR_REASON_ACCOUNT_CHECK_FAILED,
            f"the Graph API call for account {account_id} failed: {why}",
            metadata=metadata,
        )


def _group_filter_mismatch(exc: GroupFilterMismatch) -> InvalidRequest:
    # The group is of the caller's own scope (the API joins only there), so its filters
    # are the caller's own; the message names the group as the caller did, not its key.
    accounts = ", ".join(sorted(exc.existing.account_ids)) or "all"
    prefix = exc.existing.payload_prefix or "(none)"
    name = split_group_key(exc.group)[1]
    return InvalidRequest(
        [
            FieldViolation(
                "group",
                f"group {name} exists with other filters: account_ids {accounts}, "
                f"payload_prefix {prefix}; members of a group must use the same filters",
            )
        ]
    )


def _too_many_groups(exc: TooManyGroups) -> ApiError:
    name = split_group_key(exc.group)[1]
    description = (
        f"group {name} not created: this caller has {exc.limit} groups already, the most "
        "postbacks.max_groups_per_caller allows; reuse a group, or wait until an idle "
        "one is removed (postbacks.group_idle_retention_seconds)"
    )
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        R.ERROR_REASON_INVALID_REQUEST,
        description,
        metadata={"limit": str(exc.limit)},
        violations=[FieldViolation("group", description)],
    )


def group_not_found(name: str) -> ApiError:
    """The error for a group that does not exist or that the caller may not see."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_GROUP_NOT_FOUND,
        f"no group {name}",
        metadata={"group": name},
    )


def _group_has_members(exc: GroupHasMembers) -> ApiError:
    name = split_group_key(exc.group)[1]
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        R.ERROR_REASON_GROUP_HAS_MEMBERS,
        f"group {name} has {exc.members} members connected; delete it with force, or when "
        "they left",
        metadata={"group": name, "members": str(exc.members)},
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
    if isinstance(exc, TooManyGroups):
        return _too_many_groups(exc)
    if isinstance(exc, GroupNotFound):
        return group_not_found(split_group_key(exc.group)[1])
    if isinstance(exc, GroupHasMembers):
        return _group_has_members(exc)
    return None
