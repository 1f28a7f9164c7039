"""The plain Python values the clients return, converted from the protobuf responses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from igbutton.v1 import postback_service_pb2, send_service_pb2


@dataclass(frozen=True)
class SendResult:
    """A sent message."""

    recipient_id: str
    """The IGSID Meta delivered to."""
    message_id: str
    """Meta's message id (``mid``); the sandbox's tap command takes it."""
    request_id: str
    """The request_id the send used; repeating the send with it never sends twice."""

    @classmethod
    def from_proto(
        cls, response: send_service_pb2.SendButtonTemplateResponse, request_id: str
    ) -> SendResult:
        """Convert the gRPC response."""
        return cls(response.recipient_id, response.message_id, request_id)


@dataclass(frozen=True)
class ValidationResult:
    """The Graph API request igbutton would make for a send."""

    method: str
    """Always ``POST``."""
    url: str
    """The URL, without any access token."""
    body_json: str
    """The exact JSON body."""

    @property
    def body(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body_json)

    @classmethod
    def from_proto(
        cls, response: send_service_pb2.ValidateButtonTemplateResponse
    ) -> ValidationResult:
        """Convert the gRPC response."""
        return cls(response.method, response.url, response.body_json)


@dataclass(frozen=True)
class AckResult:
    """The outcome of acknowledging postbacks."""

    applied_count: int
    """How many ack and nack ids were applied."""
    unknown_ack_ids: tuple[str, ...]
    """Ids not applied: unknown, already acknowledged, or expired and redelivered."""

    @classmethod
    def from_proto(cls, response: postback_service_pb2.AckPostbacksResponse) -> AckResult:
        """Convert the gRPC response."""
        return cls(response.applied_count, tuple(response.unknown_ack_ids))


@dataclass(frozen=True)
class Postback:
    """One tap of a postback button, as delivered on a subscription."""

    sequence: int
    """Position in igbutton's log; strictly increasing. Resume after it with ``after_sequence``."""
    account_id: str
    """The Instagram account (IG ID) whose message was tapped."""
    sender_id: str
    """The IGSID of the person who tapped."""
    mid: str
    """Meta's id of the postback event, unique per tap."""
    title: str
    """The title of the tapped button."""
    payload: str
    """The payload of the tapped button, verbatim."""
    tap_time: datetime | None
    """When the person tapped, as Meta reports it (UTC)."""
    receive_time: datetime | None
    """When igbutton stored it (UTC)."""
    raw_json: str
    """Meta's raw ``messaging`` item, so unmodelled fields are not lost."""
    ack_id: str = ""
    """Groups only: the id to acknowledge; empty on a broadcast subscription."""
    delivery_attempt: int = 0
    """Groups only: 1 on the first delivery, then 2, 3, ..."""
    standby: bool = False
    """Meta delivered it in ``standby``: another app held the conversation (handover
    protocol), so this one only observed the tap."""
    test: bool = False
    """A test delivery (the App Dashboard's Test button, made-up ids), not a person's tap:
    do not act on it."""

    @classmethod
    def from_proto(cls, response: postback_service_pb2.SubscribePostbacksResponse) -> Postback:
        """Convert one event of the subscription stream."""
        p = response.postback
        return cls(
            sequence=p.sequence,
            account_id=p.account_id,
            sender_id=p.sender_id,
            mid=p.mid,
            title=p.title,
            payload=p.payload,
            tap_time=_time(p.tap_time) if p.HasField("tap_time") else None,
            receive_time=_time(p.receive_time) if p.HasField("receive_time") else None,
            raw_json=p.raw_json,
            ack_id=response.ack_id,
            delivery_attempt=response.delivery_attempt,
            standby=p.standby,
            test=p.test,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: times in ISO 8601, ``raw`` parsed from ``raw_json``."""
        raw: Any
        try:
            raw = json.loads(self.raw_json) if self.raw_json else None
        except ValueError:
            raw = self.raw_json
        out: dict[str, Any] = {
            "sequence": self.sequence,
            "account_id": self.account_id,
            "sender_id": self.sender_id,
            "mid": self.mid,
            "title": self.title,
            "payload": self.payload,
            "tap_time": _iso(self.tap_time),
            "receive_time": _iso(self.receive_time),
            "standby": self.standby,
            "test": self.test,
        }
        if self.ack_id:
            out["ack_id"] = self.ack_id
            out["delivery_attempt"] = self.delivery_attempt
        out["raw"] = raw
        return out


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")
