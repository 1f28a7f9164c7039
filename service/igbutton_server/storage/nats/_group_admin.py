"""Operating groups on JetStream (``storage.groups``): details from the durable consumer,
seek by recreating it, dead letters from the dead-letter stream, redrive by a copy.

**Details.** The consumer's state gives position (last delivered stream sequence),
backlog (``num_pending``), unacknowledged (``num_ack_pending``) and redelivered
(``num_redelivered``); the oldest unacknowledged postback is the first one of the group's
subjects above the ack floor (everything at or below it is acknowledged).

**Seek.** JetStream cannot move a durable consumer, so a seek deletes it and creates it
again with the same configuration and the new start, drops its ledger entries (old ack ids
become unknown) and tells the members on every replica (``group_notice_subject``), which
keep pulling from the new consumer (a member seeing its consumer gone waits a moment for
it to come back, see ``NatsGroupMember``).

**Redrive.** JetStream delivers a message to a consumer only once per attempt count, and a
dead letter was terminated. A redriven dead letter is published again, as a copy on the
group's own redrive subject (``NatsLayout.redrive_subject``) in the log: only that group's
consumer matches it, delivers it with attempt 1, and members hand it out with the
original's sequence and receive time (``_codec`` headers). A copy is in the log until
retention like any postback.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import api
from nats.js.errors import NotFoundError

from igbutton_server.storage.groups import (
    DeadLetter,
    DeadLetterReason,
    GroupDetails,
)
from igbutton_server.storage.nats._codec import (
    RECEIVED_MS_HEADER,
    REDRIVE_OF_HEADER,
    decode_body,
)
from igbutton_server.storage.nats._connection import NatsConnection
from igbutton_server.storage.nats._groups import FILTER_METADATA_KEY, filter_from_metadata
from igbutton_server.storage.postbacks import Start, StoredPostback


def _ms(moment: object) -> int:
    timestamp = getattr(moment, "timestamp", None)
    return int(timestamp() * 1000) if callable(timestamp) else 0


def start_of(config: api.ConsumerConfig) -> Start:
    """The start a group consumer was created with."""
    policy = api.DeliverPolicy(config.deliver_policy) if config.deliver_policy else None
    if policy is api.DeliverPolicy.ALL:
        return Start.earliest()
    if policy is api.DeliverPolicy.BY_START_SEQUENCE:
        return Start.after(max((config.opt_start_seq or 1) - 1, 0))
    if policy is api.DeliverPolicy.BY_START_TIME:
        return Start.since(_ms(config.opt_start_time))
    return Start.latest()


async def oldest_unacked_ms(
    conn: NatsConnection, info: api.ConsumerInfo, subjects: Sequence[str]
) -> int | None:
    """When the oldest unacknowledged postback of the group was received, or None."""
    if not info.num_ack_pending:
        return None
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    found: list[StoredPostback] = []
    for subject in subjects:
        try:
            msg = await conn.js.get_msg(
                conn.layout.stream, seq=(floor or 0) + 1, subject=subject, next=True, direct=True
            )
        except NotFoundError:
            continue
        found.append(_postback(msg))
    return min((p.received_ms for p in found), default=None)


def _postback(msg: api.RawStreamMsg) -> StoredPostback:
    assert msg.seq is not None
    return decode_body(msg.data or b"{}", msg.seq, _ms(msg.time), msg.headers)


def details(
    group: str, info: api.ConsumerInfo, members: int, dead: int, oldest: int | None
) -> GroupDetails:
    """A group's details from its consumer's info."""
    config = info.config
    return GroupDetails(
        key=group,
        filter=filter_from_metadata((config.metadata or {}).get(FILTER_METADATA_KEY)),
        start=start_of(config),
        ack_deadline=float(config.ack_wait or 0),
        max_attempts=config.max_deliver or 0,
        members=max(members, info.num_waiting or 0),
        position=info.delivered.stream_seq or 0 if info.delivered else 0,
        backlog=info.num_pending or 0,
        unacked=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        dead_lettered=dead,
        oldest_unacked_ms=oldest,
    )


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as the dead-letter stream holds it."""

    record_seqs: tuple[int, ...]
    """Its messages in the dead-letter stream (a delivery may be recorded twice)."""
    letter: DeadLetter
    log_seq: int
    """The log message that was dead-lettered (a redriven copy's own sequence)."""


def _parse_record(msg: api.RawStreamMsg) -> tuple[int, int, DeadLetterReason] | None:
    """(log sequence, attempts, reason) of one dead-letter message."""
    try:
        body = json.loads(msg.data or b"")
        log_seq, attempts = int(body["stream_seq"]), int(body["deliveries"])
    except (ValueError, KeyError, TypeError):
        return None
    # JetStream's advisory has no kind: it is always an expired last attempt.
    kind = str(body.get("kind") or ("nacked" if "nack" in str(body.get("reason", "")) else ""))
    reason = DeadLetterReason.NACKED if kind == "nacked" else DeadLetterReason.EXPIRED
    return log_seq, attempts, reason


async def dead_letter_records(conn: NatsConnection, consumer: str) -> list[DeadLetterRecord]:
    """Every dead letter of the group whose postback is retained, by original sequence.

    Read with one direct get per message: dead letters are few next to the log, and this
    needs no consumer (nothing to clean up on any replica)."""
    layout = conn.layout
    by_log_seq: dict[int, tuple[list[int], int, DeadLetterReason, int]] = {}
    seq = 1
    while True:
        try:
            msg = await conn.js.get_msg(
                layout.dead_letter_stream,
                seq=seq,
                subject=layout.dead_letter_filter(consumer),
                next=True,
                direct=True,
            )
        except NotFoundError:
            break
        assert msg.seq is not None
        seq = msg.seq + 1
        parsed = _parse_record(msg)
        if parsed is None:
            continue
        log_seq, attempts, reason = parsed
        seen = by_log_seq.get(log_seq)
        record_seqs = [*(seen[0] if seen else []), msg.seq]
        by_log_seq[log_seq] = (record_seqs, attempts, reason, _ms(msg.time))
    records: list[DeadLetterRecord] = []
    for log_seq, (record_seqs, attempts, reason, dead_ms) in by_log_seq.items():
        try:
            postback = _postback(await conn.js.get_msg(layout.stream, seq=log_seq, direct=True))
        except NotFoundError:
            continue  # left the log (retention)
        letter = DeadLetter(postback, reason, attempts, dead_ms)
        records.append(DeadLetterRecord(tuple(record_seqs), letter, log_seq))
    records.sort(key=lambda r: (r.letter.postback.sequence, r.letter.dead_ms))
    # The same postback dead-lettered again after a redrive: its latest record counts.
    latest: dict[int, DeadLetterRecord] = {}
    for record in records:
        sequence = record.letter.postback.sequence
        earlier = latest.get(sequence)
        merged = record
        if earlier is not None:
            merged = DeadLetterRecord(
                (*earlier.record_seqs, *record.record_seqs), record.letter, record.log_seq
            )
        latest[sequence] = merged
    return [latest[s] for s in sorted(latest)]


async def redrive_copy(conn: NatsConnection, consumer: str, record: DeadLetterRecord) -> None:
    """Publish a copy of a dead letter's postback on the group's redrive subject."""
    layout = conn.layout
    original = await conn.js.get_msg(layout.stream, seq=record.log_seq, direct=True)
    postback = record.letter.postback
    await conn.js.publish(
        layout.redrive_subject(consumer, postback.sequence),
        original.data or b"",
        stream=layout.stream,
        headers={
            REDRIVE_OF_HEADER: str(postback.sequence),
            RECEIVED_MS_HEADER: str(postback.received_ms),
            # A retried publish of the same redrive is stored once.
            api.Header.MSG_ID: f"redrive:{consumer}:{max(record.record_seqs)}",
        },
    )
    for record_seq in record.record_seqs:
        with contextlib.suppress(NotFoundError):  # removed meanwhile (a racing purge)
            await conn.js.delete_msg(layout.dead_letter_stream, record_seq)


def deadline_notice(lines: Sequence[tuple[int, int, int]]) -> bytes:
    """The notice telling members the new deadlines of (stream seq, attempt, ms)."""
    return b"deadline\n" + "\n".join(f"{s}.{a}.{d}" for s, a, d in lines).encode()


def wall_ms() -> int:
    """Now, in wall-clock ms."""
    return int(time.time() * 1000)
