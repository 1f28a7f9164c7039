"""The embedded postback engine: the PostbackStore contract on one SQLite file.

Writes go through the file's single writer thread (group commit), reads through its reader
pool; both are shared with the other stores in the file (``file``).
Cursors and group members live on the event loop and are woken by the store when something
they wait for happens (an append, an ack or nack in their group); deadlines are waited for
with a timeout, never by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from igbutton_server import metrics
from igbutton_server.storage import dead_letters
from igbutton_server.storage._events import wait_event
from igbutton_server.storage.groups import (
    DEAD_LETTER_PAGE_MAX,
    DeadLetterPage,
    GroupDetails,
    GroupHasMembers,
    GroupNotFound,
)
from igbutton_server.storage.postbacks import (
    AckResult,
    AppendResult,
    Delivery,
    Filter,
    GroupInfo,
    GroupOptions,
    NewPostback,
    Start,
    StoreClosed,
    StoredPostback,
    split_group_key,
)
from igbutton_server.storage.sqlite import _group_admin_sql as admin
from igbutton_server.storage.sqlite import _group_sql as groups
from igbutton_server.storage.sqlite import _postback_sql as sql
from igbutton_server.storage.sqlite._threads import fits
from igbutton_server.storage.sqlite.file import SqliteFile

log = logging.getLogger(__name__)

_PRUNE_BATCH = 5000
"""Rows one prune transaction deletes, so pruning never blocks appends for long."""
_TAIL_SIZE = 4096
"""Postbacks kept in memory after they are committed, so that live subscribers (the common
case: at the tail of the log) are served without a read per wake-up. With 10 subscribers
at 500 postbacks/s that saves 5,000 reads a second through the reader threads."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the postback tables if they do not exist (idempotent)."""
    sql.create_schema(conn)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _append(postbacks: list[NewPostback], conn: sqlite3.Connection) -> sql.Appended:
    """One append by itself: one INSERT for them all when none is in the log yet."""
    now_ms = _now_ms()
    if len(postbacks) > 1:
        with contextlib.suppress(sqlite3.IntegrityError):  # one is: told apart row by row
            return sql.append_new(conn, [postbacks], now_ms)[0]
    return sql.append(conn, postbacks, now_ms)


class _Appends:
    """A batch's appends as one INSERT when none of their postbacks is in the log yet."""

    atomic = True

    def run_all(
        self, conn: sqlite3.Connection, items: Sequence[list[NewPostback]]
    ) -> list[sql.Appended] | None:
        if not fits(conn, sql.APPEND_VALUES * sum(len(item) for item in items)):
            return None
        return sql.append_new(conn, items, _now_ms())


_APPENDS = _Appends()


class SqlitePostbackStore:
    """PostbackStore on SQLite (WAL, synchronous=FULL). Build with :meth:`open`."""

    def __init__(self, file: SqliteFile) -> None:
        file.attach()
        self._file = file
        self._writer = file.writer
        self._readers = file.readers
        self._cursors: set[_SqliteSubscription] = set()
        self._members: dict[str, set[_SqliteGroupMember]] = {}
        self._deletions = 0
        """Groups deleted by this store so far: a read of a group's details that a deletion
        overtook must not set its gauges again (that would bring back its series)."""
        self._closed = False
        self._tail: deque[StoredPostback] = deque()
        self._tail_floor = 0
        """Every postback with a sequence above this is in the log and in ``_tail``."""

    @classmethod
    async def open(cls, file: SqliteFile | Path) -> SqlitePostbackStore:
        """The store on a shared :class:`SqliteFile` (opened with :func:`create_schema`
        among its schemas), or on a file of its own at a path. Creates the file's folder and
        tables if needed and starts the threads."""
        if isinstance(file, Path):
            file = SqliteFile(file, (create_schema,))
        store = cls(file)
        try:
            await file.start()
            # Before any append: everything committed from now on also lands in the tail.
            store._tail_floor = await store._writer.run(sql.last_sequence)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def commits(self) -> int:
        """Write transactions of the file committed so far (several appends may share one)."""
        return self._file.commits

    def unready_reason(self) -> str | None:
        """None while open and the file takes writes, else why not."""
        return "postback store closed" if self._closed else self._file.unready_reason()

    def unhealthy_reason(self) -> str | None:
        """None: a SQLite store has nothing to recover (a failing disk fails each append)."""
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the postback store is closed")

    # --- the log ---

    async def append(self, postbacks: Sequence[NewPostback]) -> AppendResult:
        """See PostbackStore.append."""
        self._check_open()
        batch = list(postbacks)
        if not batch:
            return AppendResult(0, 0)
        # One postback is one statement, atomic by itself: no savepoint (two statements
        # fewer in the writer's transaction, each a hand-over of the GIL to and from the
        # event loop). Several must be all or none.
        result, _ = await self._writer.run(
            functools.partial(_append, batch),
            self._on_appended,
            savepoint=len(batch) > 1,
            merge=(_APPENDS, batch),
        )
        return result

    def _on_appended(self, appended: sql.Appended) -> None:
        # Called in commit order, so the tail stays in sequence order.
        _, stored = appended
        if not stored:
            return
        for postback in stored:
            if len(self._tail) >= _TAIL_SIZE:
                self._tail_floor = self._tail.popleft().sequence
            self._tail.append(postback)
        for cursor in self._cursors:
            cursor.wake()
        for members in self._members.values():
            for member in members:
                member.wake()

    async def subscribe(self, flt: Filter, start: Start) -> _SqliteSubscription:
        """See PostbackStore.subscribe."""
        self._check_open()
        position = await self._readers.run(lambda conn: sql.start_cursor(conn, start))
        cursor = _SqliteSubscription(self, flt, position)
        self._cursors.add(cursor)
        return cursor

    async def read_page(self, after: int) -> list[StoredPostback]:
        """The next page of the log after ``after``, from the tail in memory when it holds
        it. For this module's subscriptions; not part of PostbackStore."""
        if after >= self._tail_floor:
            return self._tail_page(after)
        return await self._readers.run(lambda conn: sql.read_page(conn, after))

    def _tail_page(self, after: int) -> list[StoredPostback]:
        # Walk back from the newest: a live cursor is only a few postbacks behind.
        newer: list[StoredPostback] = []
        for postback in reversed(self._tail):
            if postback.sequence <= after:
                break
            newer.append(postback)
        newer.reverse()
        return newer[: sql.PAGE_SIZE]

    async def prune(self, older_than_ms: int) -> int:
        """See PostbackStore.prune."""
        total = 0
        while True:
            self._check_open()
            deleted = await self._writer.run(
                lambda conn: sql.prune(conn, older_than_ms, _PRUNE_BATCH)
            )
            if deleted and self._tail:
                # Pruned postbacks must not be served from memory: start the tail afresh
                # (cursors read the log until new appends refill it; pruning is rare).
                self._tail_floor = self._tail[-1].sequence
                self._tail.clear()
            total += deleted
            if deleted < _PRUNE_BATCH:
                return total

    # --- consumer groups ---

    async def join_group(
        self,
        group: str,
        flt: Filter,
        start: Start,
        options: GroupOptions,
        max_groups: int | None = None,
    ) -> _SqliteGroupMember:
        """See PostbackStore.join_group."""
        self._check_open()
        split_group_key(group)  # raises ValueError for a key no scope gives
        await self._writer.run(
            lambda conn: groups.join_group(conn, group, flt, start, options, _now_ms(), max_groups)
        )
        member = _SqliteGroupMember(self, group, options)
        self._members.setdefault(group, set()).add(member)
        metrics.GROUPS.set(len(self._members))
        return member

    async def claim(self, member: _SqliteGroupMember, limit: int) -> groups.Claim:
        """Claim up to ``limit`` deliveries for ``member``, due its ack deadline after the
        claim runs on the writer (``Claim.deadline_ms``). For this module's group members;
        not part of PostbackStore."""
        ack_deadline_ms = int(member.options.ack_deadline * 1000)
        claim = await self._writer.run(
            lambda conn: groups.claim(
                conn, member.group, member.id, limit, ack_deadline_ms, _now_ms()
            )
        )
        if member.group in self._members:  # not for a group deleted meanwhile
            metrics.UNACKED.labels(group=member.group).set(claim.unacked)
        redelivered = sum(1 for d in claim.deliveries if d.attempt > 1)
        if redelivered:
            metrics.REDELIVERIES.labels(group=member.group).inc(redelivered)
        dead_letters.report(member.group, claim.dead_lettered, "its last attempt expired")
        return claim

    async def ack(self, group: str, ack_ids: Sequence[str], nack_ids: Sequence[str]) -> AckResult:
        """See PostbackStore.ack."""
        self._check_open()
        acks, nacks = list(ack_ids), list(nack_ids)
        outcome = await self._writer.run(
            lambda conn: groups.ack(conn, group, acks, nacks, _now_ms())
        )
        if outcome.unacked is None:
            return outcome.result  # no such group: no metric series for a name made up
        metrics.UNACKED.labels(group=group).set(outcome.unacked)
        dead_letters.report(group, outcome.dead_lettered, "nacked on its last attempt")
        named = frozenset((*acks, *nacks))
        for member in self._members.get(group, ()):
            member.settle(named)
            member.wake()  # a nacked delivery is due at once, for any member
        return outcome.result

    async def group_info(self, group: str) -> GroupInfo | None:
        """See PostbackStore.group_info."""
        self._check_open()
        return await self._readers.run(lambda conn: groups.group_info(conn, group))

    async def delete_group(self, group: str) -> bool:
        """See PostbackStore.delete_group."""
        self._check_open()
        existed = await self._writer.run(lambda conn: groups.delete_group(conn, group))
        # Its series go the moment the group does: a reader that already finds no group
        # must find no series either (the members' closing below takes its time).
        self._deletions += 1
        metrics.forget_group(group)
        for member in list(self._members.pop(group, ())):
            await member.close()
        metrics.GROUPS.set(len(self._members))
        return existed

    async def delete_idle_groups(self, idle_since_ms: int) -> list[str]:
        """See PostbackStore.delete_idle_groups. One process owns the file, so the groups
        with a member connected are the ones with a member in this store."""
        self._check_open()
        idle = await self._readers.run(lambda conn: groups.idle_groups(conn, idle_since_ms))
        # A group with a member here is in use, whatever its active_ms says.
        return [g for g in idle if g not in self._members and await self.delete_group(g)]

    # --- operating groups (storage.groups.GroupOperations) ---

    def _member_count(self, group: str) -> int:
        return len(self._members.get(group, ()))

    async def list_groups(self) -> list[GroupDetails]:
        """See GroupOperations.list_groups."""
        self._check_open()

        def read(conn: sqlite3.Connection) -> list[GroupDetails]:
            found = (admin.details(conn, key, 0) for key in admin.group_keys(conn))
            return [d for d in found if d is not None]

        # Members are counted here, on the loop that owns them, not in the reader thread.
        deletions = self._deletions
        every = [
            dataclasses.replace(d, members=self._member_count(d.key))
            for d in await self._readers.run(read)
        ]
        if deletions == self._deletions:
            for details in every:
                metrics.observe_group(details)
        return every

    async def get_group(self, group: str) -> GroupDetails:
        """See GroupOperations.get_group."""
        self._check_open()
        members = self._member_count(group)
        deletions = self._deletions
        found = await self._readers.run(lambda conn: admin.details(conn, group, members))
        if found is None:
            raise GroupNotFound(group)
        if deletions == self._deletions:
            metrics.observe_group(found)
        return found

    async def remove_group(self, group: str, *, force: bool = False) -> None:
        """See GroupOperations.remove_group."""
        self._check_open()
        members = self._member_count(group)
        if members and not force:
            raise GroupHasMembers(group, members)
        if not await self.delete_group(group):
            raise GroupNotFound(group)

    async def seek_group(self, group: str, to: Start) -> None:
        """See GroupOperations.seek_group."""
        self._check_open()
        if not await self._writer.run(lambda conn: admin.seek(conn, group, to)):
            raise GroupNotFound(group)
        metrics.UNACKED.labels(group=group).set(0)
        for member in self._members.get(group, ()):
            member.reset()

    async def list_dead_letters(
        self, group: str, after: int = 0, limit: int = 100
    ) -> DeadLetterPage:
        """See GroupOperations.list_dead_letters."""
        self._check_open()
        size = max(1, min(limit, DEAD_LETTER_PAGE_MAX))

        def read(conn: sqlite3.Connection) -> DeadLetterPage | None:
            if not admin.exists(conn, group):
                return None
            return admin.dead_letter_page(conn, group, after, size)

        page = await self._readers.run(read)
        if page is None:
            raise GroupNotFound(group)
        return page

    async def redrive_dead_letters(self, group: str, sequences: Sequence[int] | None) -> int:
        """See GroupOperations.redrive_dead_letters."""
        self._check_open()
        chosen = None if sequences is None else list(sequences)

        def write(conn: sqlite3.Connection) -> int | None:
            if not admin.exists(conn, group):
                return None
            return admin.redrive(conn, group, chosen)

        moved = await self._writer.run(write)
        if moved is None:
            raise GroupNotFound(group)
        if moved:
            metrics.DEAD_LETTERS_REDRIVEN.labels(group=group).inc(moved)
            for member in self._members.get(group, ()):
                member.wake()
        return moved

    async def purge_dead_letters(self, group: str) -> int:
        """See GroupOperations.purge_dead_letters."""
        self._check_open()

        def write(conn: sqlite3.Connection) -> int | None:
            return admin.purge(conn, group) if admin.exists(conn, group) else None

        purged = await self._writer.run(write)
        if purged is None:
            raise GroupNotFound(group)
        return purged

    async def modify_ack_deadline(
        self, group: str, ack_ids: Sequence[str], seconds: float
    ) -> AckResult:
        """See GroupOperations.modify_ack_deadline."""
        self._check_open()
        ids = list(ack_ids)
        if seconds <= 0:
            return await self.ack(group, [], ids)
        deadline_ms = _now_ms() + int(seconds * 1000)

        def write(conn: sqlite3.Connection) -> admin.Extended | None:
            if not admin.exists(conn, group):
                return None
            return admin.set_deadlines(conn, group, ids, deadline_ms)

        outcome = await self._writer.run(write)
        if outcome is None:
            raise GroupNotFound(group)
        for member in self._members.get(group, ()):
            member.extend(outcome.applied)
        return AckResult(len(outcome.applied), outcome.unknown)

    def forget(self, cursor: _SqliteSubscription) -> None:
        """A subscription closed: stop waking it. For this module's cursors; not part of
        PostbackStore."""
        self._cursors.discard(cursor)

    async def leave(self, member: _SqliteGroupMember) -> None:
        """A group member closed: stop waking it; when it was the group's last, note the
        time (the idle sweep counts from it). For this module's members; not part of
        PostbackStore."""
        members = self._members.get(member.group)
        if members is None or member not in members:
            return
        members.discard(member)
        if members:
            return
        del self._members[member.group]
        metrics.GROUPS.set(len(self._members))
        if not self._closed:
            group, now_ms = member.group, _now_ms()
            with contextlib.suppress(StoreClosed):
                await self._writer.run(lambda conn: groups.touch(conn, [group], now_ms))

    async def close(self) -> None:
        """See PostbackStore.close."""
        if self._closed:
            return
        self._closed = True
        for cursor in list(self._cursors):
            await cursor.close()
        live, now_ms = list(self._members), _now_ms()
        with contextlib.suppress(Exception):  # best effort: only shortens an idle window
            await self._writer.run(lambda conn: groups.touch(conn, live, now_ms))
        for members in list(self._members.values()):
            for member in list(members):
                await member.close()
        await self._file.release()


class _SqliteSubscription:
    """A broadcast cursor: reads pages after its position, waits for appends at the end."""

    def __init__(self, store: SqlitePostbackStore, flt: Filter, position: int) -> None:
        self._store = store
        self._filter = flt
        self._position = position
        self._buffer: deque[StoredPostback] = deque()
        self._wake = asyncio.Event()
        self._closed = False

    def wake(self) -> None:
        """Something was appended: look again."""
        self._wake.set()

    def __aiter__(self) -> _SqliteSubscription:
        return self

    async def __anext__(self) -> StoredPostback:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            # Cleared before reading, so an append that lands during the read wakes us.
            self._wake.clear()
            try:
                page = await self._store.read_page(self._position)
            except StoreClosed:
                raise StopAsyncIteration from None
            if page:
                self._position = page[-1].sequence
                self._buffer.extend(p for p in page if self._filter.matches(p))
            elif not self._closed:
                await self._wake.wait()
        return self._buffer.popleft()

    async def close(self) -> None:
        """See Subscription.close."""
        self._closed = True
        self._buffer.clear()
        self._wake.set()
        self._store.forget(self)


class _SqliteGroupMember:
    """One member of a group: claims deliveries while it has free unacked slots and is not
    stalled (see GroupMember)."""

    def __init__(self, store: SqlitePostbackStore, group: str, options: GroupOptions) -> None:
        self._store = store
        self.group = group
        self.options = options
        self.id = uuid.uuid4().hex
        self._buffer: deque[Delivery] = deque()
        self._held: dict[str, int] = {}
        """ack id -> deadline (ms) of deliveries this member holds unacknowledged."""
        self._expired: set[str] = set()
        """Ack ids of this member's deliveries whose deadline passed unacknowledged since
        an ack or nack last named one of its deliveries: while any is, it is stalled."""
        self._wake = asyncio.Event()
        self._closed = False

    def wake(self) -> None:
        """Something changed (an append, an ack or nack in the group): look again."""
        self._wake.set()

    def reset(self) -> None:
        """The group was sought: what this member held is gone (nothing to ack, nothing
        it let expire), and the log is to be read again from the group's new position."""
        self._held.clear()
        self._expired.clear()
        self._buffer.clear()
        self._wake.set()

    def extend(self, deadlines: dict[str, int]) -> None:
        """Deliveries got new deadlines (ModifyAckDeadline): those this member holds, or
        let expire without another member taking them, are its own again until then."""
        for ack_id, deadline_ms in deadlines.items():
            if ack_id in self._held or ack_id in self._expired:
                self._expired.discard(ack_id)
                self._held[ack_id] = deadline_ms
        self._wake.set()

    def settle(self, named: frozenset[str]) -> None:
        """An ack call named these ids (acked or nacked, applied or not): the slots of
        those this member holds are free, and if it named any of this member's deliveries
        (held or expired, in time or too late) the member is alive: no longer stalled."""
        mine = named & self._held.keys()
        if mine or not named.isdisjoint(self._expired):
            self._expired.clear()
        for ack_id in mine:
            del self._held[ack_id]

    def _free_slots(self, now_ms: int) -> int:
        # An expired delivery may go to another member; it no longer takes a slot here,
        # but the member is stalled until it is heard from (an ack or nack naming one).
        for ack_id in [a for a, deadline in self._held.items() if deadline <= now_ms]:
            del self._held[ack_id]
            self._expired.add(ack_id)
        if self._expired:
            return 0
        return self.options.max_unacked - len(self._held)

    def __aiter__(self) -> _SqliteGroupMember:
        return self

    async def __anext__(self) -> Delivery:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            now_ms = _now_ms()
            free = self._free_slots(now_ms)
            wait_until: int | None
            if free > 0 or self._expired:
                # Stalled (free 0), the claim only dead-letters expired last attempts.
                try:
                    claim = await self._store.claim(self, free)
                except StoreClosed:
                    raise StopAsyncIteration from None
                for delivery in claim.deliveries:
                    self._held[delivery.ack_id] = claim.deadline_ms
                self._buffer.extend(claim.deliveries)
                if claim.deliveries or claim.more:
                    continue
                wait_until = claim.next_deadline_ms
            else:  # full: an ack (which wakes us) or an expiry frees a slot
                wait_until = min(self._held.values())
            if self._closed:
                raise StopAsyncIteration
            timeout = None if wait_until is None else max(wait_until - _now_ms() + 1, 1) / 1000
            await wait_event(self._wake, timeout)
        return self._buffer.popleft()

    async def close(self) -> None:
        """See GroupMember.close."""
        self._closed = True
        self._buffer.clear()
        self._wake.set()
        await self._store.leave(self)
