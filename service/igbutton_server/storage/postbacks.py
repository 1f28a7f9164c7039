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
                       each member fetches at most its free ``max_unacked`` slots, none
                       while stalled (see GroupMember)
nack                   ``Nak()`` (redelivered at once)
dead letter            ``MaxDeliver`` reached (the MAX_DELIVERIES advisory is kept in the
                       dead-letter stream; see ``storage.groups``)
=====================  ================================================================

Times crossing the interface are wall-clock milliseconds since the epoch (they survive a
restart and mean the same on every replica); durations are seconds. Engines report dead
letters, redeliveries and unacknowledged counts through ``igbutton_server.metrics``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Self, runtime_checkable

GROUP_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
"""What a consumer group name may look like (the proto documents the same)."""
GROUP_SCOPE_RE = re.compile(r"^[0-9a-f]{16}$")
"""What a group scope looks like: a caller's own namespace of group names."""
GROUP_KEY_RE = re.compile(r"^(?:[0-9a-f]{16}/)?[A-Za-z0-9._-]{1,64}$")
"""What the store's key of a group looks like: ``[<scope>/]<name>`` (see ``group_key``)."""


def caller_scope(caller_name: str) -> str:
    """The group scope of a configured caller: a hash of its name, so every caller has a
    namespace of its own whose key is safe in any engine's names (a NATS consumer name,
    a KV key) and stays the same when the caller's token is rotated."""
    return hashlib.sha256(caller_name.encode()).hexdigest()[:16]


def group_key(scope: str | None, name: str) -> str:
    """The store's key of group ``name`` in ``scope``; None is the one shared scope of
    open mode (no callers configured), whose keys are the bare names, as before scopes."""
    if not GROUP_NAME_RE.match(name) or (scope is not None and not GROUP_SCOPE_RE.match(scope)):
        raise ValueError(f"invalid group {name!r} in scope {scope!r}")
    return name if scope is None else f"{scope}/{name}"


def split_group_key(key: str) -> tuple[str | None, str]:
    """(scope, name) of a group key; raises ValueError for anything ``group_key`` never
    returns."""
    if not GROUP_KEY_RE.match(key):
        raise ValueError(f"invalid group key {key!r}")
    scope, _, name = key.rpartition("/")
    return scope or None, name


MAX_ID_BYTES = 512
"""The longest account id, sender id or mid (UTF-8 bytes) a postback may have. Meta's ids
are short: IG ids and IGSIDs are about 17 digits, mids base64 strings of 100 to 200
characters. On NATS the bound keeps a subject ``<prefix>.<account>.<mid>`` (ids base64-
encoded when not plain) far below the server's 4 KiB protocol line."""

MAX_RAW_JSON_BYTES = 64 * 1024
"""The largest ``messaging`` item (``raw_json``, UTF-8 bytes) a postback may have. Meta's
items are a few hundred bytes (a payload is at most 1,000 characters, a title 20); the
stored record (raw item plus its fields, at most about three times this) stays far below
NATS's default ``max_payload`` of 1 MiB."""


@dataclass(frozen=True)
class NewPostback:
    """A postback parsed from a webhook, not yet stored.

    Its ids are at most MAX_ID_BYTES and its ``raw_json`` at most MAX_RAW_JSON_BYTES long
    (the webhook skips larger items); an engine may refuse a larger one.
    """

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
    standby: bool = False
    """Delivered in the entry's ``standby`` array: another app held the conversation (Meta's
    handover protocol), so this app only observed the tap."""
    test: bool = False
    """A test delivery (the App Dashboard's Test button, ``entry[].changes[]`` form, made-up
    ids), not a person's tap."""


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
    standby: bool = False
    """See ``NewPostback.standby``; False for postbacks stored before the field existed."""
    test: bool = False
    """See ``NewPostback.test``; False for postbacks stored before the field existed."""


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
    """Postbacks set aside after ``max_attempts`` deliveries and kept in the group's dead
    letters (not redriven or purged since; see ``storage.groups``)."""


class StoreClosed(Exception):
    """The store is closing or closed; callers should end what they are doing."""


class StorageUnavailable(Exception):
    """The storage engine cannot write now (locked, full, read-only, corrupt, its file
    removed or replaced). The message says why, naming the store."""


class StorageCorrupt(Exception):
    """At start: the storage file is not a usable database. The message names the file."""


class GroupFilterMismatch(Exception):
    """A member tried to join a group with filters other than the group's own.

    ``group`` is the group's key; the group and its filters are of the joining member's
    own scope, so telling them to that member reveals nothing of another caller's."""

    def __init__(self, group: str, existing: Filter) -> None:
        super().__init__(f"group {group} exists with other filters")
        self.group = group
        self.existing = existing


class TooManyGroups(Exception):
    """Joining would create a group in a scope that already holds its most groups."""

    def __init__(self, group: str, limit: int) -> None:
        super().__init__(f"group {group} not created: its scope holds {limit} groups already")
        self.group = group
        self.limit = limit


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

    **Stalled members.** A member is stalled from the moment one of its deliveries passes
    its deadline unacknowledged until an ack call names one of its deliveries (an ack or
    nack id of a delivery it holds or let expire, applied or not: a late ack of one
    redelivered meanwhile shows the member alive too); a new member (a reconnect) is not
    stalled. A stalled member gets no deliveries, new or redelivered, so a member that is
    hung but connected leaves them to live members instead of using up their attempts.
    Expired last attempts are still dead-lettered while only stalled members are there.
    SQLite: the member does not claim (a claim of limit 0 only dead-letters). JetStream:
    the member withdraws its waiting pull request and sends none, returns (``Nak``) what
    reaches it meanwhile, counts a delivery as expired a little before its deadline
    (JetStream's AckWait started when the message was sent), and dead-letters an expired
    last attempt itself (JetStream would do so only for a waiting pull request); every
    ack call is announced on ``NatsLayout.acks_subject`` so a member on any replica hears
    a late ack of its own.
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
        self,
        group: str,
        flt: Filter,
        start: Start,
        options: GroupOptions,
        max_groups: int | None = None,
    ) -> GroupMember:
        """Join (creating if needed) a consumer group; ``group`` is a ``group_key``.

        ``flt`` and ``start`` define a new group; an existing group keeps its position and
        raises GroupFilterMismatch if ``flt`` differs from its own. A new group is refused
        with TooManyGroups when its scope already holds ``max_groups`` groups (None: no
        limit); on JetStream the count is read before the create, so joins racing on
        several replicas may overshoot it by as many as race. Each postback goes to one
        member at a time; unacknowledged ones are redelivered to any member when their
        deadline passes, up to ``options.max_attempts`` deliveries in all. The group's
        position and unacknowledged deliveries survive a restart.
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

    async def delete_group(self, group: str) -> bool:
        """Remove the group and all it holds: position, unacknowledged deliveries, dead-letter
        records (on JetStream: the durable consumer, its ledger entries and dead letters)
        and its metric series. Its members, on any replica, end (StopAsyncIteration, as on
        close; a client that joins again creates it afresh). The postbacks stay in the
        log. True if the group existed."""
        ...

    async def delete_idle_groups(self, idle_since_ms: int) -> list[str]:
        """Delete (as ``delete_group``) every group that has no member connected and that
        nobody joined or acknowledged in since ``idle_since_ms``; return their keys."""
        ...

    def unready_reason(self) -> str | None:
        """None while the store can take appends, else a short reason (for /readyz)."""
        ...

    def unhealthy_reason(self) -> str | None:
        """None unless the store cannot recover on its own and the process should be
        restarted, else a short reason (for /healthz). A passing outage (NATS restarting,
        a leader election) is only unready."""
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
