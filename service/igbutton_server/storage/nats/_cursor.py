"""A broadcast subscription on JetStream: the process's shared tail, or a consumer of its own.

A cursor whose position is inside the shared tail (``nats._tail``: the newest postbacks, read
and decoded once per process) reads it by index and filters in memory. Otherwise (a start
before the tail, or a reader that fell more than the tail's size behind) it reads an
ordered, ephemeral consumer of its own in pages until its position reaches the tail, then
drops that consumer. Either way every postback after the last one handed out comes next:
the tail holds every message above its floor without holes, so the switch skips nothing
and repeats nothing.

Its own consumer (memory storage, one replica, no acks) filters by account on the server;
the payload prefix is checked here. At most one page of messages is requested at a time,
so a subscriber that lags costs a page of memory (or nothing, at the tail), not its lag.
Like the clients' "ordered consumer", any gap in the consumer sequence, a lost consumer
(its node died, or it sat idle past its inactivity threshold) or a silent server makes the
cursor recreate its consumer right after the last stream sequence it handed out: nothing
is skipped and nothing repeats. The shared tail recovers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js.errors import Error as JetStreamError

from igbutton_server.storage._events import wait_event
from igbutton_server.storage.nats._codec import decode
from igbutton_server.storage.nats._connection import NatsConnection
from igbutton_server.storage.nats._consumers import add_reader
from igbutton_server.storage.nats._pull import HEARTBEAT_SECONDS, PullInbox
from igbutton_server.storage.nats._tail import SharedTail
from igbutton_server.storage.postbacks import Filter, Start, StartKind, StoredPostback

log = logging.getLogger(__name__)

PAGE_SIZE = 256
"""Messages requested at once: what a cursor holds in memory at most."""


class BroadcastCursor:
    """See PostbackStore.subscribe. Build with :meth:`open`."""

    def __init__(
        self,
        conn: NatsConnection,
        tail: SharedTail,
        flt: Filter,
        start: Start,
        on_close: Callable[[BroadcastCursor], None],
    ) -> None:
        self._conn = conn
        self._tail = tail
        self._on_close = on_close
        self._filter = flt
        self._start = start
        self._consumer = ""
        self._inbox: PullInbox | None = None
        self._consumer_seq = 0
        self._index: int | None = None
        """The next ring index while reading the shared tail, else None."""
        self._event = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(
        cls,
        conn: NatsConnection,
        tail: SharedTail,
        flt: Filter,
        start: Start,
        on_close: Callable[[BroadcastCursor], None],
    ) -> BroadcastCursor:
        """Fix the start: at the shared tail if it holds it, else on a consumer of its own.
        ``on_close`` is told when the cursor closes."""
        await tail.acquire()
        try:
            if start.kind is StartKind.LATEST:
                # "Latest" means latest now, wherever the shared reader has got to.
                info = await conn.js.stream_info(conn.layout.stream)
                start = Start.after(info.state.last_seq)
            cursor = cls(conn, tail, flt, start, on_close)
            if not cursor._attach():
                await cursor._create()
        except BaseException:
            tail.release()
            raise
        return cursor

    @property
    def tail_index(self) -> int | None:
        """See TailReader: the next ring index, None while on a consumer of its own."""
        return self._index

    def wake(self) -> None:
        """See TailReader."""
        self._event.set()

    def _attach(self) -> bool:
        """Continue from the shared tail if it holds everything after the position."""
        if self._start.kind is not StartKind.AFTER_SEQUENCE:
            return False
        index = self._tail.index_after(self._start.after_sequence)
        if index is None:
            return False
        self._index = index
        self._tail.listen(self)
        return True

    def _detach(self) -> None:
        self._index = None
        self._tail.unlisten(self)

    async def _create(self) -> None:
        conn = self._conn
        name = await add_reader(conn, "b", self._start, self._filter.account_ids)
        self._consumer = name
        self._consumer_seq = 0
        inbox = PullInbox(conn.client, conn.layout.stream, name, self._event.set)
        await inbox.open()
        self._inbox = inbox

    async def _drop_consumer(self) -> None:
        old, self._inbox = self._inbox, None
        if old is not None:
            await old.close()
        if self._consumer and not self._conn.closing:
            with contextlib.suppress(JetStreamError, TimeoutError, OSError):
                await self._conn.js.delete_consumer(self._conn.layout.stream, self._consumer)
        self._consumer = ""

    def __aiter__(self) -> BroadcastCursor:
        return self

    async def __anext__(self) -> StoredPostback:
        while True:
            if self._closed or self._conn.closing:
                raise StopAsyncIteration
            if self._index is not None:
                found = self._from_tail()
                if found is not None:
                    return found
                if self._index is not None:
                    await self._event.wait()
                continue
            if self._attach():
                # Caught up: the tail holds everything after the last postback handed out.
                await self._drop_consumer()
                continue
            inbox = self._inbox
            if inbox is None or inbox.gone:
                await self._recover()
                continue
            found = await self._from_consumer(inbox)
            if found is not None:
                return found

    async def _from_consumer(self, inbox: PullInbox) -> StoredPostback | None:
        """The next matching postback its own consumer has delivered; None after asking for
        the next page and waiting for it (or when the consumer is gone)."""
        self._event.clear()
        while (taken := inbox.take_next(self._consumer_seq)) is not None:
            msg, reply = taken
            self._consumer_seq = reply.consumer_seq
            self._start = Start.after(reply.stream_seq)
            postback = decode(msg, reply)
            if self._filter.matches(postback):
                return postback
        if inbox.gone:
            return None
        inbox.check_alive()
        if inbox.outstanding <= PAGE_SIZE // 2:
            await inbox.pull(PAGE_SIZE - inbox.outstanding)
        await wait_event(self._event, HEARTBEAT_SECONDS)
        return None

    def _from_tail(self) -> StoredPostback | None:
        """The next matching postback in the ring; None to wait (or, detached, to read a
        consumer of its own)."""
        assert self._index is not None
        tail = self._tail
        self._event.clear()
        while self._index < tail.end:
            if self._index < tail.oldest:
                # Fell behind the ring: read on a consumer of its own until caught up again.
                log.info("broadcast cursor fell behind the shared tail")
                self._detach()
                return None
            postback = tail.at(self._index)
            self._index += 1
            if self._index >= tail.resume_index:
                tail.resume()  # the reader waits for this cursor to make room
            if postback.sequence <= self._start.after_sequence:
                continue  # attached while the reader was behind this cursor's position
            self._start = Start.after(postback.sequence)
            if self._filter.matches(postback):
                return postback
        return None

    async def _recover(self) -> None:
        try:
            await self._drop_consumer()
            await self._create()
        except (JetStreamError, TimeoutError, OSError) as exc:
            # NATS may be electing a leader or reconnecting: try again shortly.
            log.warning("cannot recreate broadcast consumer: %s", exc)
            await wait_event(self._event, HEARTBEAT_SECONDS)

    async def close(self) -> None:
        """See Subscription.close."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._tail.release()
        self._event.set()
        self._on_close(self)
        await self._drop_consumer()
