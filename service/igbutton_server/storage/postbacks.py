"""The postback log and consumer groups, as every storage engine must provide them.

This module is engine-neutral: it names the operations and their guarantees, and the
values that cross the boundary. ``sqlite.postbacks`` implements it on one SQLite file;
a NATS JetStream engine implements the same contract for many replicas. The mapping
the JetStream engine follows is noted on each operation, so both keep one behaviour:

=====================  ================================================================
contract               JetStream
=====================  ================================================================
log, retention         a stream with ``max_age`` = retention
dedupe (account, mid)  ``Nats-Msg-Id`` = account + mid, duplicate window >= Meta's 36 h
broadcast              an ordered consumer from the requested start
                       (deliver policy all / new / by_start_sequence / by_start_time)
group                  a durable pull consumer: explicit ack, ``AckWait``, ``MaxDeliver``;
                       each member fetches at most its free ``max_unacked`` slots
nack                   ``Nak()`` (redelivered at once)
dead letter            ``MaxDeliver`` reached (the MAX_DELIVERIES advisory is counted)
=====================  ================================================================

Times crossing the interface are wall-clock milliseconds since the epoch (they survive a
restart and mean the same on every replica); durations are seconds. Engines report dead
letters, redeliveries and unacknowledged counts through ``igbutton_server.metrics``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Self, runtime_checkable

GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
"""What a consumer group name may look like (the proto documents the same)."""


@dataclass(frozen=True)
class NewPostback:
    """A postback parsed from a webhook, not yet stored."""

    account_id: str
    """The Instagram account (IG ID) whose message was tapped."""
    sender_id: str
    """The IGSID of the person who tapped."""
    mid: str
    """Meta's id of the postback event; with ``account_id`` its identity."""
    title: str
    """The tapped button's title."""
    payload: str
    """The tapped button's payload, verbatim."""
    tap_time_ms: int
    """When the person tapped, per Meta (0 if Meta gave no time)."""
    raw_json: str
    """Meta's ``messaging`` item as JSON, so fields not modelled here survive."""


@dataclass(frozen=True)
class StoredPostback:
    """A postback in the log."""

    sequence: int
    """Position in the log; strictly increasing, never reused (also after pruning)."""
    account_id: str
    sender_id: str
    mid: str
    title: str
    payload: str
    tap_time_ms: int
    received_ms: int
    """When the store appended it."""
    raw_json: str


@dataclass(frozen=True)
class AppendResult:
    """What an append did."""

    stored: int
    """Postbacks newly added to the log."""
    duplicates: int
    """Postbacks already in the log (or repeated within the same append), not added again."""


@dataclass(frozen=True)
class Filter:
    """Which postbacks a subscription or group wants."""

    account_ids: frozenset[str] = frozenset()
    """Only these accounts; empty means all."""
    payload_prefix: str = ""
    """Only payloads starting with this; empty means all."""

    def matches(self, postback: StoredPostback) -> bool:
        """Whether the postback passes this filter."""
        if self.account_ids and postback.account_id not in self.account_ids:
            return False
        return postback.payload.startswith(self.payload_prefix)


class StartKind(Enum):
    """The kinds of start position."""

    LATEST = "latest"
    EARLIEST = "earliest"
    AFTER_SEQUENCE = "after_sequence"
    SINCE_TIME = "since_time"


@dataclass(frozen=True)
class Start:
    """Where a subscription starts reading the log. Build with the class methods."""

    kind: StartKind = StartKind.LATEST
    after_sequence: int = 0
    since_ms: int = 0

    @classmethod
    def latest(cls) -> Self:
        """Only postbacks appended after the subscription was opened."""
        return cls(StartKind.LATEST)

    @classmethod
    def earliest(cls) -> Self:
        """The oldest postback still retained."""
        return cls(StartKind.EARLIEST)

    @classmethod
    def after(cls, sequence: int) -> Self:
        """The first retained postback with a sequence above ``sequence``."""
        return cls(StartKind.AFTER_SEQUENCE, after_sequence=sequence)

    @classmethod
    def since(cls, time_ms: int) -> Self:
        """The first postback received at or after ``time_ms``."""
        return cls(StartKind.SINCE_TIME, since_ms=time_ms)


@dataclass(frozen=True)
class GroupOptions:
    """How a member takes part in a consumer group.

    ``max_unacked`` is per member on every engine. ``ack_deadline`` and ``max_attempts``
    are per member (per delivery) on SQLite, but JetStream holds them per durable consumer
    (``AckWait``, ``MaxDeliver``), where the latest member's values apply to the whole group.
    Portable clients give every member of a group the same values; the contract tests do.
    """

    ack_deadline: float
    """Seconds a delivery to this member may stay unacknowledged before it is redelivered."""
    max_unacked: int
    """The most deliveries this member holds unacknowledged at once (flow control)."""
    max_attempts: int
    """Deliveries of one postback before it is dead-lettered instead of redelivered."""


@dataclass(frozen=True)
class Delivery:
    """A postback handed to one group member."""

    postback: StoredPostback
    ack_id: str
    """Opaque; names this delivery (a redelivery gets a new one)."""
    attempt: int
    """1 on the first delivery, then 2, 3, ..."""


@dataclass(frozen=True)
class AckResult:
    """What an ack call did."""

    applied: int
    """Ack and nack ids applied."""
    unknown: tuple[str, ...]
    """Ids not applied: unknown, already acknowledged, superseded by a redelivery, or
    dead-lettered."""


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group's state, for operators and tests."""

    name: str
    filter: Filter
    unacked: int
    """Deliveries waiting for an ack (including expired ones not yet redelivered)."""
    dead_lettered: int
    """Postbacks set aside after ``max_attempts`` deliveries."""


class StoreClosed(Exception):
    """The store is closing or closed; callers should end what they are doing."""


class StorageUnavailable(Exception):
    """The storage engine cannot write now (locked, full, read-only, corrupt, its file
    removed or replaced). The message says why, naming the store."""


class StorageCorrupt(Exception):
    """At start: the storage file is not a usable database. The message names the file."""


class GroupFilterMismatch(Exception):
    """A member tried to join a group with filters other than the group's own."""

    def __init__(self, group: str, existing: Filter) -> None:
        super().__init__(f"group {group} exists with other filters")
        self.group = group
        self.existing = existing


@runtime_checkable
class Subscription(Protocol):
    """A broadcast cursor over the log: every matching postback, in sequence order.

    Iteration waits for new postbacks (a live tail) and ends only when the subscription
    or the store is closed. Reading is paged: a subscriber far behind costs no memory.
    """

    def __aiter__(self) -> AsyncIterator[StoredPostback]: ...

    async def __anext__(self) -> StoredPostback: ...

    async def close(self) -> None:
        """Stop the cursor; a pending ``__anext__`` ends with StopAsyncIteration."""


@runtime_checkable
class GroupMember(Protocol):
    """One member of a consumer group, yielding the deliveries assigned to it.

    A member holds at most ``max_unacked`` unexpired, unacknowledged deliveries; it gets
    more as acks arrive or its deliveries expire. Closing a member does not release its
    deliveries: like a crashed member's, they are redelivered once their deadline passes.
    """

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def __anext__(self) -> Delivery: ...

    async def close(self) -> None:
        """Leave the group; a pending ``__anext__`` ends with StopAsyncIteration."""


class PostbackStore(Protocol):
    """The durable postback log with broadcast cursors and consumer groups.

    Every method may be called concurrently from one event loop. Any state a method
    changes is durable when it returns.
    """

    async def append(self, postbacks: Sequence[NewPostback]) -> AppendResult:
        """Add postbacks to the log in the given order; durable (fsynced) on return.

        A postback whose (account_id, mid) is already in the log is not added again; this
        holds for at least as long as Meta retries a delivery (36 h) and for at most the
        retention. Concurrent appends may be committed together. On failure nothing of
        this call is guaranteed stored and it raises (the webhook then answers 5xx).
        """
        ...

    async def subscribe(self, flt: Filter, start: Start) -> Subscription:
        """Open a broadcast cursor. Its start is fixed on return: a postback appended
        after this returns is always seen (with start LATEST too)."""
        ...

    async def join_group(
        self, group: str, flt: Filter, start: Start, options: GroupOptions
    ) -> GroupMember:
        """Join (creating if needed) a consumer group.

        ``flt`` and ``start`` define a new group; an existing group keeps its position and
        raises GroupFilterMismatch if ``flt`` differs from its own. Each postback goes to
        one member at a time; unacknowledged ones are redelivered to any member when
        their deadline passes, up to ``options.max_attempts`` deliveries in all. The
        group's position and unacknowledged deliveries survive a restart.
        """
        ...

    async def ack(self, group: str, ack_ids: Sequence[str], nack_ids: Sequence[str]) -> AckResult:
        """Acknowledge deliveries (never delivered again) and nack others (delivered again
        at once, or dead-lettered if that was their last attempt). An id delivered past its
        deadline but not yet redelivered still applies; once it is dead-lettered it is
        unknown."""
        ...

    async def group_info(self, group: str) -> GroupInfo | None:
        """The group's state, or None if no such group exists."""
        ...

    def unready_reason(self) -> str | None:
        """None while the store can take appends, else a short reason (for /readyz)."""
        ...

    async def prune(self, older_than_ms: int) -> int:
        """Remove postbacks received before ``older_than_ms`` (and their group
        deliveries); return how many were removed. Engines with native expiry
        (JetStream ``max_age``) may do nothing and return 0."""
        ...

    async def close(self) -> None:
        """End every subscription and member, finish appends in flight, release the
        engine. Calls after close raise StoreClosed."""
        ...
