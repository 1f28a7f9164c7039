"""PostbackService requests checked in full and turned into storage terms.

Every broken rule is collected, so a caller learns all of them from one INVALID_ARGUMENT
(AIP-193 BadRequest with field paths such as ``account_ids[2]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from igbutton.v1 import postback_service_pb2
from igbutton_server.auth import account_not_allowed
from igbutton_server.config import ACCOUNT_ID_RE, PostbackSettings
from igbutton_server.errors import FieldViolation, InvalidRequest
from igbutton_server.storage.postbacks import GROUP_NAME_RE, Filter, GroupOptions, Start

MAX_ACCOUNT_IDS = 1000
MAX_PAYLOAD_PREFIX = 1000
MIN_ACK_DEADLINE = 1.0
MAX_ACK_DEADLINE = 600.0
MAX_UNACKED = 10_000
MAX_ACK_IDS = 10_000
MAX_ACK_ID_LENGTH = 128
_MAX_SEQUENCE = 2**63 - 1
_MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z

_GROUP_RULE = "must be 1 to 64 letters, digits, '.', '_' or '-'"


@dataclass(frozen=True)
class SubscribeSpec:
    """A valid subscription in storage terms."""

    filter: Filter
    start: Start
    group: str
    """Empty for a broadcast."""
    options: GroupOptions | None
    """Set for a group."""


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidRequest(violations)


def _filter(
    request: postback_service_pb2.SubscribePostbacksRequest,
    allowed: frozenset[str] | None,
    violations: list[FieldViolation],
) -> Filter:
    if len(request.account_ids) > MAX_ACCOUNT_IDS:
        violations.append(FieldViolation("account_ids", f"at most {MAX_ACCOUNT_IDS} accounts"))
    for i, account in enumerate(request.account_ids):
        if not ACCOUNT_ID_RE.match(account):
            violations.append(
                FieldViolation(
                    f"account_ids[{i}]", "must be an IG ID: 1 to 64 letters, digits, '.', '_', '-'"
                )
            )
    if len(request.payload_prefix) > MAX_PAYLOAD_PREFIX:
        violations.append(
            FieldViolation("payload_prefix", f"at most {MAX_PAYLOAD_PREFIX} characters")
        )
    _raise_if(violations)
    accounts = frozenset(request.account_ids)
    if allowed is not None:
        denied = sorted(accounts - allowed) if accounts else ([] if allowed else ["*"])
        if denied:
            raise account_not_allowed(denied[0])
        accounts = accounts or allowed
    return Filter(accounts, request.payload_prefix)


def _start(
    request: postback_service_pb2.SubscribePostbacksRequest, violations: list[FieldViolation]
) -> Start:
    which = request.WhichOneof("start")
    if which == "after_sequence":
        if request.after_sequence > _MAX_SEQUENCE:
            violations.append(FieldViolation("after_sequence", f"at most {_MAX_SEQUENCE}"))
        return Start.after(min(request.after_sequence, _MAX_SEQUENCE))
    if which == "since_time":
        since = request.since_time
        if not 0 <= since.seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= since.nanos < 10**9:
            violations.append(
                FieldViolation("since_time", "must be a valid time from 1970 to 9999")
            )
            return Start.earliest()
        # "at or after": a time between two milliseconds starts at the next one.
        return Start.since(since.seconds * 1000 + math.ceil(since.nanos / 1_000_000))
    position = request.position
    if position == postback_service_pb2.START_POSITION_EARLIEST:
        return Start.earliest()
    if position not in (
        postback_service_pb2.START_POSITION_UNSPECIFIED,
        postback_service_pb2.START_POSITION_LATEST,
    ):
        violations.append(FieldViolation("position", "unknown start position"))
    return Start.latest()


def _group_options(
    request: postback_service_pb2.SubscribePostbacksRequest,
    settings: PostbackSettings,
    violations: list[FieldViolation],
) -> GroupOptions | None:
    has_deadline = request.HasField("ack_deadline")
    if not request.group:
        if has_deadline:
            violations.append(FieldViolation("ack_deadline", "only applies with a group"))
        if request.max_unacked:
            violations.append(FieldViolation("max_unacked", "only applies with a group"))
        return None
    if not GROUP_NAME_RE.match(request.group):
        violations.append(FieldViolation("group", _GROUP_RULE))
    deadline = settings.default_ack_deadline_seconds
    if has_deadline:
        given = request.ack_deadline
        deadline = given.seconds + given.nanos / 1e9
        if not MIN_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
            violations.append(FieldViolation("ack_deadline", "must be from 1 s to 10 min"))
    max_unacked = request.max_unacked or settings.default_max_unacked
    if max_unacked > MAX_UNACKED:
        violations.append(FieldViolation("max_unacked", f"must be from 1 to {MAX_UNACKED}"))
    return GroupOptions(
        ack_deadline=deadline,
        max_unacked=max_unacked,
        max_attempts=settings.max_delivery_attempts,
    )


def subscribe_spec(
    request: postback_service_pb2.SubscribePostbacksRequest,
    settings: PostbackSettings,
    allowed: frozenset[str] | None,
) -> SubscribeSpec:
    """Check a SubscribePostbacksRequest; ``allowed`` is the caller's accounts (None: all).

    Raises InvalidRequest with every violation, or PERMISSION_DENIED / ACCOUNT_NOT_ALLOWED.
    """
    violations: list[FieldViolation] = []
    start = _start(request, violations)
    options = _group_options(request, settings, violations)
    flt = _filter(request, allowed, violations)  # raises the violations collected so far
    return SubscribeSpec(filter=flt, start=start, group=request.group, options=options)


def check_ack_request(request: postback_service_pb2.AckPostbacksRequest) -> None:
    """Check an AckPostbacksRequest; raises InvalidRequest with every violation."""
    violations: list[FieldViolation] = []
    if not request.group:
        violations.append(FieldViolation("group", "required"))
    elif not GROUP_NAME_RE.match(request.group):
        violations.append(FieldViolation("group", _GROUP_RULE))
    total = len(request.ack_ids) + len(request.nack_ids)
    if total == 0:
        violations.append(FieldViolation("ack_ids", "give at least one ack or nack id"))
    elif total > MAX_ACK_IDS:
        violations.append(FieldViolation("ack_ids", f"at most {MAX_ACK_IDS} ids per call"))
    for name, ids in (("ack_ids", request.ack_ids), ("nack_ids", request.nack_ids)):
        for i, ack_id in enumerate(ids):
            if not 0 < len(ack_id) <= MAX_ACK_ID_LENGTH:
                violations.append(
                    FieldViolation(f"{name}[{i}]", f"must be 1 to {MAX_ACK_ID_LENGTH} characters")
                )
    _raise_if(violations)
