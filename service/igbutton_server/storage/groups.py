"""Operating consumer groups, as every storage engine must provide it: inspect, delete,
seek, dead letters and ack deadlines.

Engine-neutral like ``postbacks``: the values here cross the boundary, the operations are
``GroupOperations``, which both postback stores implement (``Storage.groups`` is the store
itself). The GroupService and the web console call it directly. Every operation takes a
``group_key`` and does not check who asks: callers are checked above it.

=======================  ===========================  =====================================
operation                SQLite                       JetStream
=======================  ===========================  =====================================
members connected        members in this process      pull requests waiting on the consumer
                                                      (a member holding ``max_unacked``
                                                      deliveries waits for none), at least
                                                      this replica's members
backlog                  postbacks after the          ``num_pending``
                         position to the group's
                         accounts
seek                     move the position, drop      recreate the durable consumer at the
                         every pending delivery       new start, drop its ledger entries
dead letters             a table                      the ``<stream>_DEAD_LETTERS`` stream
redrive                  a pending delivery at        a copy of the postback in the log on
                         attempt 0, due at once       the group's own redrive subject,
                                                      delivered with the original sequence
ModifyAckDeadline        the delivery's deadline      the member holding it (on any replica)
                                                      moves its deadline and keeps
                                                      JetStream's AckWait running (``+WPI``)
=======================  ===========================  =====================================

The backlog counts the postbacks to the group's accounts that no member was handed yet; a
``payload_prefix`` is applied as they are delivered, so it may count some the group skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from igbutton_server.storage.postbacks import AckResult, Filter, Start, StoredPostback

DEAD_LETTER_PAGE_MAX = 1000
"""The most dead letters one ``list_dead_letters`` call returns."""


@dataclass(frozen=True)
class GroupDetails:
    """A consumer group's configuration and state, read at one moment."""

    key: str
    """The store's key of the group (``group_key``)."""
    filter: Filter
    """The accounts and payload prefix the group was created with."""
    start: Start
    """Where the group started reading the log when it was created (or last sought)."""
    ack_deadline: float
    """Seconds a delivery may stay unacknowledged (the latest member's value)."""
    max_attempts: int
    """Deliveries of a postback before it is dead-lettered (the latest member's value)."""
    members: int
    """Members connected now (see the module's table for JetStream)."""
    position: int
    """The sequence of the last postback the group was handed (0: none yet)."""
    backlog: int
    """Postbacks after the position not yet handed to a member (see the module)."""
    unacked: int
    """Deliveries waiting for an ack."""
    redelivered: int
    """Of those, deliveries on their second or later attempt."""
    dead_lettered: int
    """Dead letters kept for the group (until redriven, purged or past retention)."""
    oldest_unacked_ms: int | None
    """When the oldest unacknowledged postback was received (ms since the epoch), or None."""


class DeadLetterReason(Enum):
    """Why a delivery was dead-lettered."""

    EXPIRED = "expired"
    """Its last attempt's ack deadline passed."""
    NACKED = "nacked"
    """It was nacked on its last attempt."""


@dataclass(frozen=True)
class DeadLetter:
    """A postback a group set aside after its last attempt."""

    postback: StoredPostback
    """The postback, with its sequence in the log."""
    reason: DeadLetterReason
    attempts: int
    """Deliveries it had."""
    dead_ms: int
    """When it was dead-lettered (ms since the epoch)."""


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of a group's dead letters, in sequence order."""

    dead_letters: list[DeadLetter]
    next_after: int | None
    """Pass as ``after`` for the next page; None when this is the last."""


class GroupNotFound(Exception):
    """No group has this key."""

    def __init__(self, group: str) -> None:
        super().__init__(f"no group {group}")
        self.group = group


class GroupHasMembers(Exception):
    """A group with members connected is not deleted unless forced."""

    def __init__(self, group: str, members: int) -> None:
        super().__init__(f"group {group} has {members} members connected")
        self.group = group
        self.members = members


class GroupOperations(Protocol):
    """What an operator can see and do with the consumer groups of one postback log.

    Every method may be called from any replica; what it changes is durable on return and
    seen by the members on every replica. Methods naming a group raise GroupNotFound when
    it does not exist.
    """

    async def list_groups(self) -> list[GroupDetails]:
        """Every group of the log, of every scope, ordered by key."""
        ...

    async def get_group(self, group: str) -> GroupDetails:
        """One group's details."""
        ...

    async def remove_group(self, group: str, *, force: bool = False) -> None:
        """Delete the group as ``PostbackStore.delete_group`` does; with members connected
        only when ``force`` (they end), else GroupHasMembers."""
        ...

    async def seek_group(self, group: str, to: Start) -> None:
        """Move the group to ``to`` (``Start.after(seq)`` or ``Start.since(ms)``, like
        Pub/Sub Seek): every postback after it is delivered again, from attempt 1, and
        none before it; deliveries members hold become unknown to acks. Dead letters stay."""
        ...

    async def list_dead_letters(
        self, group: str, after: int = 0, limit: int = 100
    ) -> DeadLetterPage:
        """Up to ``limit`` (at most DEAD_LETTER_PAGE_MAX) dead letters with a sequence above
        ``after``, in sequence order. A dead letter whose postback left the log (retention)
        is not listed."""
        ...

    async def redrive_dead_letters(self, group: str, sequences: Sequence[int] | None) -> int:
        """Deliver these dead letters (None: all) to the group again, from attempt 1, and
        remove them from the dead letters; return how many were redriven (unknown
        sequences are skipped)."""
        ...

    async def purge_dead_letters(self, group: str) -> int:
        """Remove every dead letter of the group; return how many there were."""
        ...

    async def modify_ack_deadline(
        self, group: str, ack_ids: Sequence[str], seconds: float
    ) -> AckResult:
        """Give deliveries a new deadline ``seconds`` from now (longer or shorter than
        their ack deadline); 0 nacks them (delivered again at once, or dead-lettered on
        their last attempt). Ids not held by a member are unknown."""
        ...
