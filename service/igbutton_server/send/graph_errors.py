"""Maps a Graph API error answer to igbutton's ApiError, and says whether to retry it.

The table follows instagram-platform.md ("Errors from the Graph API"): branch on ``code``
first and on ``error_subcode`` only within a code (subcode 1545041 means different things
under different codes). Every mapped error carries one ErrorInfo with the metadata keys
``graphCode``, ``graphSubcode``, ``fbtraceId`` and ``graphType`` (those Meta sent).

Every string copied from Meta's answer (the message, ``fbtrace_id``, ``type``) goes through
the caller's ``redact`` (Meta may echo an access token anywhere) and is then bounded:
:data:`MESSAGE_MAX_CHARS` for the message, :data:`FIELD_MAX_CHARS` for each metadata value,
a cut one ending with :data:`~igbutton_server.errors.TRUNCATED`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server.errors import ApiError, bounded

R = errors_pb2.ErrorReason

MESSAGE_MAX_CHARS = 500
"""Meta's message, as quoted in the status message."""
FIELD_MAX_CHARS = 256
"""Each other string from Meta (``fbtrace_id``, ``type``), as an ErrorInfo metadata value."""


class Retry(enum.Enum):
    """Whether Meta surely did not act, and how to wait before trying again."""

    NO = "no"
    """Meta decided; retrying cannot help (or could send twice)."""
    TRANSIENT = "transient"
    """A temporary problem on Meta's side: retry after an exponential backoff with jitter."""
    THROTTLE = "throttle"
    """A rate limit: hold the whole account back, then retry."""


@dataclass(frozen=True)
class GraphError:
    """The ``error`` object of a Graph API answer."""

    code: int
    subcode: int | None = None
    type: str = ""
    message: str = ""
    fbtrace_id: str = ""
    is_transient: bool | None = None


@dataclass(frozen=True)
class Rule:
    """How one Graph code (or code/subcode pair) reaches the caller."""

    status: grpc.StatusCode
    reason: errors_pb2.ErrorReason.ValueType
    retry: Retry


_TRANSIENT = Rule(grpc.StatusCode.UNAVAILABLE, R.ERROR_REASON_GRAPH_UNAVAILABLE, Retry.TRANSIENT)
_THROTTLED = Rule(grpc.StatusCode.RESOURCE_EXHAUSTED, R.ERROR_REASON_RATE_LIMITED, Retry.THROTTLE)
_PERMISSION = Rule(
    grpc.StatusCode.PERMISSION_DENIED, R.ERROR_REASON_GRAPH_PERMISSION_DENIED, Retry.NO
)
_RECIPIENT_UNAVAILABLE = Rule(
    grpc.StatusCode.FAILED_PRECONDITION, R.ERROR_REASON_RECIPIENT_UNAVAILABLE, Retry.NO
)
_OUTSIDE_WINDOW = Rule(
    grpc.StatusCode.FAILED_PRECONDITION, R.ERROR_REASON_OUTSIDE_MESSAGING_WINDOW, Retry.NO
)
_OTHER = Rule(grpc.StatusCode.UNKNOWN, R.ERROR_REASON_GRAPH_ERROR, Retry.NO)

# (code, subcode) pairs, checked before the code alone.
SUBCODE_RULES: Mapping[tuple[int, int], Rule] = {
    (10, 2534022): _OUTSIDE_WINDOW,  # Instagram: outside the messaging window
    (10, 2018278): _OUTSIDE_WINDOW,  # Messenger: outside the messaging window
    (100, 2018001): Rule(grpc.StatusCode.NOT_FOUND, R.ERROR_REASON_RECIPIENT_NOT_FOUND, Retry.NO),
    (200, 1545041): _RECIPIENT_UNAVAILABLE,
}

CODE_RULES: Mapping[int, Rule] = {
    1: _TRANSIENT,
    2: _TRANSIENT,
    1200: _TRANSIENT,
    4: _THROTTLED,
    17: _THROTTLED,
    32: _THROTTLED,
    613: _THROTTLED,
    341: _THROTTLED,
    80001: _THROTTLED,
    80002: _THROTTLED,
    80006: _THROTTLED,
    368: Rule(grpc.StatusCode.FAILED_PRECONDITION, R.ERROR_REASON_POLICY_BLOCKED, Retry.NO),
    10: _PERMISSION,
    100: Rule(grpc.StatusCode.INVALID_ARGUMENT, R.ERROR_REASON_GRAPH_INVALID_PARAMETER, Retry.NO),
    190: Rule(grpc.StatusCode.FAILED_PRECONDITION, R.ERROR_REASON_ACCESS_TOKEN_INVALID, Retry.NO),
    551: _RECIPIENT_UNAVAILABLE,
    **dict.fromkeys(range(200, 300), _PERMISSION),
}


def rule_for(error: GraphError) -> Rule:
    """The rule for a Graph error; ``is_transient: true`` makes an unlisted code transient."""
    if error.subcode is not None and (error.code, error.subcode) in SUBCODE_RULES:
        return SUBCODE_RULES[(error.code, error.subcode)]
    rule = CODE_RULES.get(error.code)
    if rule is None:
        return _TRANSIENT if error.is_transient else _OTHER
    return rule


def parse_graph_error(payload: Any) -> GraphError | None:
    """The Graph ``error`` object of a decoded JSON answer, or None if it has none."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if not isinstance(error, dict):
        return None
    code = _as_int(error.get("code"))
    if code is None:
        return None
    transient = error.get("is_transient")
    return GraphError(
        code=code,
        subcode=_as_int(error.get("error_subcode")),
        type=str(error.get("type") or ""),
        message=str(error.get("message") or ""),
        fbtrace_id=str(error.get("fbtrace_id") or ""),
        is_transient=transient if isinstance(transient, bool) else None,
    )


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def regain_access_seconds(business_use_case_usage: str | None) -> float | None:
    """The longest ``estimated_time_to_regain_access`` (minutes) in the header, in seconds.

    The header maps business object ids to lists of usage entries. None when absent,
    unreadable or zero everywhere.
    """
    if not business_use_case_usage:
        return None
    try:
        usage = json.loads(business_use_case_usage)
    except ValueError:
        return None
    minutes: list[float] = []
    if isinstance(usage, dict):
        for entries in usage.values():
            for entry in entries if isinstance(entries, list) else [entries]:
                if isinstance(entry, dict):
                    value = entry.get("estimated_time_to_regain_access")
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        minutes.append(float(value))
    longest = max(minutes, default=0.0)
    return longest * 60.0 if longest > 0 else None


@dataclass(frozen=True)
class MappedError:
    """A Graph error as the caller will see it, plus what to do about it."""

    error: ApiError
    retry: Retry


def map_graph_error(
    error: GraphError,
    http_status: int,
    *,
    retry_after: float | None,
    redact: Callable[[str], str],
) -> MappedError:
    """The ApiError for a Graph error answer.

    ``retry_after`` goes into RetryInfo for rate limits (Meta's regain-access time or the
    client's backoff). ``redact`` removes every secret from a string Meta sent; it is
    applied before the string is cut, so no part of a secret survives the cut.
    """
    rule = rule_for(error)
    metadata = {"graphCode": str(error.code), "httpStatus": str(http_status)}
    if error.subcode is not None:
        metadata["graphSubcode"] = str(error.subcode)
    if error.fbtrace_id:
        metadata["fbtraceId"] = bounded(redact(error.fbtrace_id), FIELD_MAX_CHARS)
    if error.type:
        metadata["graphType"] = bounded(redact(error.type), FIELD_MAX_CHARS)
    safe_message = bounded(redact(error.message), MESSAGE_MAX_CHARS)
    where = f"{error.code}/{error.subcode}" if error.subcode is not None else str(error.code)
    text = f"Graph API error {where}: {safe_message}" if safe_message else f"Graph API {where}"
    api_error = ApiError(
        rule.status,
        rule.reason,
        text,
        metadata=metadata,
        retry_after=retry_after if rule.retry is Retry.THROTTLE else None,
    )
    return MappedError(api_error, rule.retry)
