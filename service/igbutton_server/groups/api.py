"""GroupService: the consumer groups' operations (storage.groups) as RPCs.

Every RPC first checks that the caller may administer (``auth.require_admin``), then that it
may see the group it names (``names.may_see``); a group it may not see is NOT_FOUND, as
one that does not exist, so nothing about another caller's groups leaks.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from google.protobuf import duration_pb2

from igbutton.v1 import group_service_pb2 as pb
from igbutton.v1 import group_service_pb2_grpc, postback_service_pb2
from igbutton_server.auth import current_caller, require_admin
from igbutton_server.config import Caller
from igbutton_server.errors import FieldViolation, InvalidRequest, group_not_found
from igbutton_server.groups.names import GroupNames, may_see
from igbutton_server.postbacks.api import postback_message
from igbutton_server.storage.groups import (
    DEAD_LETTER_PAGE_MAX,
    DeadLetter,
    DeadLetterReason,
    GroupDetails,
    GroupNotFound,
    GroupOperations,
)
from igbutton_server.storage.postbacks import Start, StartKind

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_PAGE_SIZE = 100
MAX_ACK_DEADLINE_SECONDS = 600.0
MAX_ACK_IDS = 1000

_START_POSITIONS = {
    StartKind.LATEST: postback_service_pb2.START_POSITION_LATEST,
    StartKind.EARLIEST: postback_service_pb2.START_POSITION_EARLIEST,
}
_REASONS = {
    DeadLetterReason.EXPIRED: pb.DEAD_LETTER_REASON_EXPIRED,
    DeadLetterReason.NACKED: pb.DEAD_LETTER_REASON_NACKED,
}


def _invalid(field: str, description: str) -> InvalidRequest:
    return InvalidRequest([FieldViolation(field, description)])


def _page_size(size: int, field: str = "page_size") -> int:
    if size < 0:
        raise _invalid(field, "must not be negative")
    return min(size or DEFAULT_PAGE_SIZE, DEAD_LETTER_PAGE_MAX)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(int(seconds * 1000))
    return duration


class GroupApi(group_service_pb2_grpc.GroupServiceServicer):
    """The GroupService servicer over a store's GroupOperations."""

    def __init__(self, groups: GroupOperations, callers: list[Caller]) -> None:
        self._groups = groups
        self._names = GroupNames(callers)

    def group_message(self, details: GroupDetails) -> pb.Group:
        """The proto form of a group's details."""
        named = self._names.of(details.key)
        message = pb.Group(
            name=named.name,
            group=named.group,
            caller=named.caller,
            account_ids=sorted(details.filter.account_ids),
            payload_prefix=details.filter.payload_prefix,
            ack_deadline=_duration(details.ack_deadline),
            max_delivery_attempts=details.max_attempts,
            connected_member_count=details.members,
            last_delivered_sequence=details.position,
            backlog_count=details.backlog,
            unacked_count=details.unacked,
            redelivered_count=details.redelivered,
            dead_letter_count=details.dead_lettered,
        )
        start = details.start
        if start.kind is StartKind.AFTER_SEQUENCE:
            message.start_after_sequence = start.after_sequence
        elif start.kind is StartKind.SINCE_TIME:
            message.start_time.FromMilliseconds(start.since_ms)
        else:
            message.start_position = _START_POSITIONS[start.kind]
        if details.oldest_unacked_ms is not None:
            age = max(time.time() - details.oldest_unacked_ms / 1000, 0.0)
            message.oldest_unacked_age.CopyFrom(_duration(age))
        return message

    async def _visible(self, rpc: str, name: str, field: str = "name") -> tuple[str, GroupDetails]:
        """The store key and details of the group ``name`` if the caller may see it."""
        require_admin(rpc)
        if not name:
            raise _invalid(field, "the group's resource name is required")
        key = self._names.key(name)
        if key is None:
            raise _invalid(field, "must be groups/{group} or callers/{caller}/groups/{group}")
        try:
            details = await self._groups.get_group(key)
        except GroupNotFound:
            raise group_not_found(name) from None
        if not may_see(current_caller.get(), details.filter):
            raise group_not_found(name)
        return key, details

    async def ListGroups(
        self, request: pb.ListGroupsRequest, _context: Context
    ) -> pb.ListGroupsResponse:
        """See the proto."""
        require_admin("ListGroups")
        size = _page_size(request.page_size)
        caller = current_caller.get()
        messages = sorted(
            (
                self.group_message(d)
                for d in await self._groups.list_groups()
                if may_see(caller, d.filter)
            ),
            key=lambda m: m.name,
        )
        after = [m for m in messages if m.name > request.page_token]
        page = after[:size]
        token = page[-1].name if len(after) > size else ""
        return pb.ListGroupsResponse(groups=page, next_page_token=token)

    async def GetGroup(self, request: pb.GetGroupRequest, _context: Context) -> pb.GetGroupResponse:
        """See the proto."""
        _, details = await self._visible("GetGroup", request.name)
        return pb.GetGroupResponse(group=self.group_message(details))

    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, _context: Context
    ) -> pb.DeleteGroupResponse:
        """See the proto."""
        key, _ = await self._visible("DeleteGroup", request.name)
        await self._groups.remove_group(key, force=request.force)
        return pb.DeleteGroupResponse()

    async def SeekGroup(
        self, request: pb.SeekGroupRequest, _context: Context
    ) -> pb.SeekGroupResponse:
        """See the proto."""
        key, _ = await self._visible("SeekGroup", request.name)
        target = request.WhichOneof("target")
        if target == "after_sequence":
            to = Start.after(request.after_sequence)
        elif target == "time":
            to = Start.since(request.time.ToMilliseconds())
        else:
            raise _invalid("target", "after_sequence or time is required")
        await self._groups.seek_group(key, to)
        return pb.SeekGroupResponse()

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, _context: Context
    ) -> pb.ListDeadLettersResponse:
        """See the proto."""
        key, _ = await self._visible("ListDeadLetters", request.parent, "parent")
        size = _page_size(request.page_size)
        token = request.page_token
        if token and not token.isdigit():
            raise _invalid("page_token", "not a token ListDeadLetters returned")
        page = await self._groups.list_dead_letters(key, int(token or 0), size)
        return pb.ListDeadLettersResponse(
            dead_letters=[_dead_letter(d) for d in page.dead_letters],
            next_page_token="" if page.next_after is None else str(page.next_after),
        )

    async def RedriveDeadLetters(
        self, request: pb.RedriveDeadLettersRequest, _context: Context
    ) -> pb.RedriveDeadLettersResponse:
        """See the proto."""
        key, _ = await self._visible("RedriveDeadLetters", request.name)
        if request.all == bool(request.sequences):
            raise _invalid("sequences", "give the sequences to redrive, or all, not both")
        sequences = None if request.all else list(request.sequences)
        count = await self._groups.redrive_dead_letters(key, sequences)
        return pb.RedriveDeadLettersResponse(redriven_count=count)

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, _context: Context
    ) -> pb.PurgeDeadLettersResponse:
        """See the proto."""
        key, _ = await self._visible("PurgeDeadLetters", request.name)
        return pb.PurgeDeadLettersResponse(purged_count=await self._groups.purge_dead_letters(key))

    async def ModifyAckDeadline(
        self, request: pb.ModifyAckDeadlineRequest, _context: Context
    ) -> pb.ModifyAckDeadlineResponse:
        """See the proto."""
        key, _ = await self._visible("ModifyAckDeadline", request.name)
        violations: list[FieldViolation] = []
        if not 1 <= len(request.ack_ids) <= MAX_ACK_IDS:
            violations.append(FieldViolation("ack_ids", f"1 to {MAX_ACK_IDS} ack ids"))
        seconds = request.ack_deadline.ToMilliseconds() / 1000
        if not 0 <= seconds <= MAX_ACK_DEADLINE_SECONDS:
            violations.append(FieldViolation("ack_deadline", "0 to 10 minutes"))
        if violations:
            raise InvalidRequest(violations)
        result = await self._groups.modify_ack_deadline(key, request.ack_ids, seconds)
        return pb.ModifyAckDeadlineResponse(
            applied_count=result.applied, unknown_ack_ids=result.unknown
        )


def _dead_letter(letter: DeadLetter) -> pb.DeadLetter:
    message = pb.DeadLetter(
        postback=postback_message(letter.postback),
        reason=_REASONS[letter.reason],
        delivery_attempts=letter.attempts,
    )
    message.dead_letter_time.FromMilliseconds(letter.dead_ms)
    return message
