"""The plain Python values of GroupService and the messaging window, converted from the
protobuf responses (see models.py for the send and postback ones)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from igbutton.models import Postback
from igbutton.v1 import group_service_pb2, postback_service_pb2, send_service_pb2


def group_name(name: str) -> str:
    """A group's resource name: ``orders`` is short for ``groups/orders``."""
    return name if "/" in name else f"groups/{name}"


@dataclass(frozen=True)
class Group:
    """A consumer group's configuration and state (GroupService.GetGroup)."""

    name: str
    """The resource name, ``groups/{group}`` or ``callers/{caller}/groups/{group}``."""
    group: str
    """The name subscribers use."""
    caller: str
    """The configured caller whose group it is ('' in open mode)."""
    account_ids: tuple[str, ...]
    payload_prefix: str
    start: str
    """``latest``, ``earliest``, ``after <seq>`` or ``since <ISO time>``."""
    ack_deadline: timedelta
    max_delivery_attempts: int
    connected_members: int
    last_delivered_sequence: int
    backlog: int
    """Postbacks to the group's accounts not yet handed to a member."""
    unacked: int
    redelivered: int
    dead_letters: int
    oldest_unacked_age: timedelta | None

    @classmethod
    def from_proto(cls, g: group_service_pb2.Group) -> Group:
        """Convert the gRPC message."""
        which = g.WhichOneof("start")
        if which == "start_after_sequence":
            start = f"after {g.start_after_sequence}"
        elif which == "start_time":
            start = f"since {_iso(g.start_time)}"
        elif g.start_position == postback_service_pb2.START_POSITION_EARLIEST:
            start = "earliest"
        else:
            start = "latest"
        return cls(
            name=g.name,
            group=g.group,
            caller=g.caller,
            account_ids=tuple(g.account_ids),
            payload_prefix=g.payload_prefix,
            start=start,
            ack_deadline=_delta(g.ack_deadline),
            max_delivery_attempts=g.max_delivery_attempts,
            connected_members=g.connected_member_count,
            last_delivered_sequence=g.last_delivered_sequence,
            backlog=g.backlog_count,
            unacked=g.unacked_count,
            redelivered=g.redelivered_count,
            dead_letters=g.dead_letter_count,
            oldest_unacked_age=(
                _delta(g.oldest_unacked_age) if g.HasField("oldest_unacked_age") else None
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (durations in seconds)."""
        age = self.oldest_unacked_age
        return {
            "name": self.name,
            "group": self.group,
            "caller": self.caller,
            "account_ids": list(self.account_ids),
            "payload_prefix": self.payload_prefix,
            "start": self.start,
            "ack_deadline_seconds": self.ack_deadline.total_seconds(),
            "max_delivery_attempts": self.max_delivery_attempts,
            "connected_members": self.connected_members,
            "last_delivered_sequence": self.last_delivered_sequence,
            "backlog": self.backlog,
            "unacked": self.unacked,
            "redelivered": self.redelivered,
            "dead_letters": self.dead_letters,
            "oldest_unacked_age_seconds": None if age is None else age.total_seconds(),
        }


_REASONS = {
    group_service_pb2.DEAD_LETTER_REASON_EXPIRED: "expired",
    group_service_pb2.DEAD_LETTER_REASON_NACKED: "nacked",
}


@dataclass(frozen=True)
class DeadLetter:
    """A postback a group set aside after its last delivery attempt."""

    postback: Postback
    reason: str
    """``expired`` (its last attempt's deadline passed) or ``nacked``."""
    delivery_attempts: int
    dead_letter_time: datetime

    @classmethod
    def from_proto(cls, d: group_service_pb2.DeadLetter) -> DeadLetter:
        """Convert the gRPC message."""
        wrapped = postback_service_pb2.SubscribePostbacksResponse(postback=d.postback)
        return cls(
            postback=Postback.from_proto(wrapped),
            reason=_REASONS.get(d.reason, "unspecified"),
            delivery_attempts=d.delivery_attempts,
            dead_letter_time=d.dead_letter_time.ToDatetime(tzinfo=UTC),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "sequence": self.postback.sequence,
            "reason": self.reason,
            "delivery_attempts": self.delivery_attempts,
            "dead_letter_time": self.dead_letter_time.isoformat().replace("+00:00", "Z"),
            "postback": self.postback.to_dict(),
        }


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of ListDeadLetters."""

    dead_letters: tuple[DeadLetter, ...]
    next_page_token: str
    """Pass for the next page; empty on the last."""


_WINDOW_STATES = {
    send_service_pb2.MESSAGING_WINDOW_STATE_OPEN: "open",
    send_service_pb2.MESSAGING_WINDOW_STATE_CLOSED: "closed",
    send_service_pb2.MESSAGING_WINDOW_STATE_UNKNOWN: "unknown",
}


@dataclass(frozen=True)
class MessagingWindow:
    """Whether a send to a person is possible now, as igbutton knows it (Meta decides)."""

    state: str
    """``open``, ``closed`` or ``unknown`` (igbutton saw nothing from the person)."""
    close_time: datetime | None
    human_agent_state: str
    """The same for sends with the HUMAN_AGENT tag (7 days)."""
    human_agent_close_time: datetime | None
    last_message_time: datetime | None

    @classmethod
    def from_proto(cls, w: send_service_pb2.GetMessagingWindowResponse) -> MessagingWindow:
        """Convert the gRPC response."""

        def at(value: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
            return value.ToDatetime(tzinfo=UTC) if present else None

        return cls(
            state=_WINDOW_STATES.get(w.state, "unknown"),
            close_time=at(w.close_time, w.HasField("close_time")),
            human_agent_state=_WINDOW_STATES.get(w.human_agent_state, "unknown"),
            human_agent_close_time=at(
                w.human_agent_close_time, w.HasField("human_agent_close_time")
            ),
            last_message_time=at(w.last_message_time, w.HasField("last_message_time")),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "state": self.state,
            "close_time": iso(self.close_time),
            "human_agent_state": self.human_agent_state,
            "human_agent_close_time": iso(self.human_agent_close_time),
            "last_message_time": iso(self.last_message_time),
        }


def seek_request(
    name: str, after_sequence: int | None, time: datetime | None
) -> group_service_pb2.SeekGroupRequest:
    """A SeekGroup request to a sequence or a (timezone-aware) time."""
    if (after_sequence is None) == (time is None):
        raise ValueError("seek to after_sequence or to time, one of them")
    request = group_service_pb2.SeekGroupRequest(name=group_name(name))
    if after_sequence is not None:
        request.after_sequence = after_sequence
    else:
        assert time is not None
        if time.tzinfo is None:
            raise ValueError("time must be timezone-aware")
        request.time.FromDatetime(time.astimezone(UTC))
    return request


def deadline(seconds: float) -> duration_pb2.Duration:
    """A Duration of ``seconds``."""
    value = duration_pb2.Duration()
    value.FromMilliseconds(int(seconds * 1000))
    return value


def _delta(value: duration_pb2.Duration) -> timedelta:
    return value.ToTimedelta()


def _iso(value: timestamp_pb2.Timestamp) -> str:
    return value.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
