"""Turns the clients' keyword arguments into request messages, shared by sync and async."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from igbutton.buttons import Button, ButtonTemplate, as_template, tag_value
from igbutton.v1 import postback_service_pb2, send_service_pb2

StartSpec = str | datetime | None
"""``"latest"``, ``"earliest"``, a :class:`datetime`, or None (latest)."""

_POSITIONS: dict[str, postback_service_pb2.StartPosition.ValueType] = {
    "latest": postback_service_pb2.START_POSITION_LATEST,
    "earliest": postback_service_pb2.START_POSITION_EARLIEST,
}


def new_request_id() -> str:
    """A fresh request_id: a random UUID (AIP-155)."""
    return str(uuid.uuid4())


def send_request(
    recipient_id: str,
    text_or_template: str | ButtonTemplate,
    buttons: Iterable[Button],
    *,
    account_id: str | None,
    request_id: str,
    tag: str | None,
) -> send_service_pb2.SendButtonTemplateRequest:
    """The SendButtonTemplateRequest for a send."""
    return send_service_pb2.SendButtonTemplateRequest(
        account_id=account_id or "",
        recipient_id=recipient_id,
        template=as_template(text_or_template, buttons).to_proto(),
        request_id=request_id,
        tag=tag_value(tag),
    )


def validate_request(
    recipient_id: str,
    text_or_template: str | ButtonTemplate,
    buttons: Iterable[Button],
    *,
    account_id: str | None,
    tag: str | None,
) -> send_service_pb2.ValidateButtonTemplateRequest:
    """The ValidateButtonTemplateRequest for a dry run."""
    return send_service_pb2.ValidateButtonTemplateRequest(
        account_id=account_id or "",
        recipient_id=recipient_id,
        template=as_template(text_or_template, buttons).to_proto(),
        tag=tag_value(tag),
    )


@dataclass(frozen=True)
class SubscribeOptions:
    """Everything a subscription asks for; resumes are built from it."""

    account_ids: tuple[str, ...] = ()
    payload_prefix: str = ""
    start: StartSpec = None
    after_sequence: int | None = None
    group: str | None = None
    ack_deadline: float | timedelta | None = None
    max_unacked: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.account_ids, str):
            raise TypeError("account_ids must be a list of ids, not one string")
        if self.start is not None and self.after_sequence is not None:
            raise ValueError("give either start or after_sequence, not both")
        if isinstance(self.start, str) and self.start not in _POSITIONS:
            raise ValueError(
                f"start must be 'latest', 'earliest' or a datetime, not {self.start!r}"
            )
        if self.after_sequence is not None and self.after_sequence < 0:
            raise ValueError("after_sequence must be >= 0")

    def request(
        self, *, resume_after: int | None = None, resume_since: datetime | None = None
    ) -> postback_service_pb2.SubscribePostbacksRequest:
        """The request for the first connection, or for a resume after the given sequence
        (or, when nothing was seen yet, since the given time)."""
        req = postback_service_pb2.SubscribePostbacksRequest(
            account_ids=list(self.account_ids),
            payload_prefix=self.payload_prefix,
            group=self.group or "",
        )
        if resume_after is not None:
            req.after_sequence = resume_after
        elif resume_since is not None:
            req.since_time.CopyFrom(_timestamp(resume_since))
        elif self.after_sequence is not None:
            req.after_sequence = self.after_sequence
        elif isinstance(self.start, datetime):
            req.since_time.CopyFrom(_timestamp(self.start))
        elif isinstance(self.start, str):
            req.position = _POSITIONS[self.start]
        if self.ack_deadline is not None:
            req.ack_deadline.CopyFrom(_duration(self.ack_deadline))
        if self.max_unacked is not None:
            req.max_unacked = self.max_unacked
        return req

    @property
    def starts_latest(self) -> bool:
        """Whether the subscription starts at the end of the log."""
        return self.after_sequence is None and self.start in (None, "latest")


def ack_request(
    group: str, ack_ids: Iterable[str], nack_ids: Iterable[str]
) -> postback_service_pb2.AckPostbacksRequest:
    """The AckPostbacksRequest."""
    return postback_service_pb2.AckPostbacksRequest(
        group=group, ack_ids=list(ack_ids), nack_ids=list(nack_ids)
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        raise ValueError("start times must be timezone-aware (for example datetime.now(UTC))")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def _duration(value: float | timedelta) -> duration_pb2.Duration:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d
