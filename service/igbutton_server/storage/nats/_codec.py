"""How a postback travels in the JetStream log, and how its position and time are read back.

The body is compact JSON of the postback's fields (``standby`` and ``test`` only when true, so a
message written before the field existed reads as false); the sequence number is the stream
sequence and the received time is the stream's own timestamp (so ``Start.since`` and
``received_ms`` agree on every replica). Both come from the ``$JS.ACK`` reply subject
JetStream puts on every message a consumer delivers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nats.aio.msg import Msg

from igbutton_server.storage.postbacks import NewPostback, StoredPostback

_V1_TOKENS = 9
"""``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``"""
_V2_MIN_TOKENS = 11
"""``$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>...``"""


def encode(postback: NewPostback) -> bytes:
    """The message body of a postback."""
    fields: dict[str, object] = {
        "account_id": postback.account_id,
        "sender_id": postback.sender_id,
        "mid": postback.mid,
        "title": postback.title,
        "payload": postback.payload,
        "tap_time_ms": postback.tap_time_ms,
        "raw_json": postback.raw_json,
    }
    if postback.standby:
        fields["standby"] = True
    if postback.test:
        fields["test"] = True
    return json.dumps(
        fields,
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class AckReply:
    """What a ``$JS.ACK`` reply subject says about one delivery."""

    subject: str
    stream: str
    consumer: str
    delivered: int
    """How many times this message was delivered to the consumer (the attempt)."""
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    """When the message was stored in the stream."""
    pending: int = 0
    """Messages the consumer had left to deliver after this one."""

    @classmethod
    def parse(cls, subject: str) -> AckReply | None:
        """The reply's fields, or None if it is not a JetStream ack subject."""
        tokens = subject.split(".")
        if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
            return None
        if len(tokens) >= _V2_MIN_TOKENS:
            tokens = tokens[:2] + tokens[4:]  # drop domain and account hash
        try:
            return cls(
                subject=subject,
                stream=tokens[2],
                consumer=tokens[3],
                delivered=int(tokens[4]),
                stream_seq=int(tokens[5]),
                consumer_seq=int(tokens[6]),
                timestamp_ns=int(tokens[7]),
                pending=int(tokens[8]),
            )
        except ValueError:
            return None


REDRIVE_OF_HEADER = "Igbutton-Redrive-Of"
"""On a redriven copy of a postback (see ``nats._group_admin``): the original's sequence."""
RECEIVED_MS_HEADER = "Igbutton-Received-Ms"
"""On a redriven copy: when the original was received (ms since the epoch)."""


def decode(msg: Msg, reply: AckReply) -> StoredPostback:
    """The stored postback a consumer delivered (a redriven copy as its original)."""
    return decode_body(msg.data, reply.stream_seq, reply.timestamp_ns // 1_000_000, msg.headers)


def decode_body(
    data: bytes, sequence: int, received_ms: int, headers: dict[str, str] | None
) -> StoredPostback:
    """The stored postback of a message body at ``sequence`` stored at ``received_ms``."""
    body = json.loads(data)
    original = (headers or {}).get(REDRIVE_OF_HEADER, "")
    if original.isdigit():
        sequence = int(original)
        received = (headers or {}).get(RECEIVED_MS_HEADER, "")
        received_ms = int(received) if received.isdigit() else received_ms
    return StoredPostback(
        sequence=sequence,
        account_id=str(body["account_id"]),
        sender_id=str(body["sender_id"]),
        mid=str(body["mid"]),
        title=str(body["title"]),
        payload=str(body["payload"]),
        tap_time_ms=int(body["tap_time_ms"]),
        received_ms=received_ms,
        raw_json=str(body["raw_json"]),
        standby=body.get("standby") is True,
        test=body.get("test") is True,
    )
