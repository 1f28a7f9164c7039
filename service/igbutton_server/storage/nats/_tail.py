"""The newest postbacks, read once per process and shared by every live broadcast cursor.

With a consumer per cursor, nats-server delivers, nats-py parses and ``decode`` builds every
postback once per subscriber: at 500/s and 10 subscribers that was most of the process's
CPU. Here one ephemeral consumer on the whole log feeds a ring of the last ``TAIL_SIZE``
postbacks, decoded once; cursors at the tail read the ring by index and filter in memory.

The ring holds every message of the log with a stream sequence above ``floor`` up to the
newest one read, without holes: the reader recovers the way a cursor does (a gap in the
consumer sequence, a lost consumer or a silent server recreate the consumer right after
the last stream sequence read). So a cursor whose position is at or above ``floor`` may
continue from the ring with nothing skipped or repeated. The ring is bounded: a cursor that
falls more than ``TAIL_SIZE`` behind goes back to a consumer of its own.

**Paced by its readers.** The reader asks for more only while some attached cursor has room
for it: when every cursor on the ring is behind (a lone subscriber slower than the posters
for a while, as in the bench's ``max-b50``), reading on would only push them out of the ring
onto consumers of their own, and then every postback would be delivered, parsed and decoded
twice in this process (once for the ring that nobody reads, once for the cursor), which on a
busy machine is what kept such a cursor from ever catching up. So the reader waits, the
backlog stays in JetStream, and the cursors go on from the ring. A cursor that keeps up
(at the end of the ring) is never held back: with one on the ring the reader reads on, and
slower ones fall out as before. A cursor opened while the reader is held back, more than a
ring ahead of it (at "latest", say), does not wait on the ring for the reader to get there: it
reads a consumer of its own until the ring is near, then joins it. Pacing is bounded
(``PACE_LIMIT_TAILS``): once the reader is that far behind the log's end (the consumer's
pending count) it reads on regardless, so subscribers that stopped reading altogether cannot
hold the ring behind the log forever.

The reader runs only while some broadcast cursor is open (:meth:`SharedTail.acquire` /
:meth:`SharedTail.release`): a replica nobody subscribes to does not read and decode every
postback of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from igbutton_server.storage._events import wait_event
from igbutton_server.storage.nats._codec import decode
from igbutton_server.storage.nats._connection import NatsConnection
from igbutton_server.storage.nats._consumers import add_reader
from igbutton_server.storage.nats._pull import HEARTBEAT_SECONDS, PullInbox
from igbutton_server.storage.postbacks import Start, StoredPostback

log = logging.getLogger(__name__)

TAIL_SIZE = 4096
"""Postbacks kept in memory: how far behind a cursor may be and still share the reader."""
READ_BATCH = 1024
"""Messages the reader asks for at once."""
START_WAIT_SECONDS = 5.0
"""How long the first subscriber waits for the reader's consumer before going without."""
PACE_LIMIT_TAILS = 16
"""Pacing stops once the reader is this many ring sizes behind the log's end (see above)."""


class TailReader(Protocol):
    """A cursor reading the ring: its next ring index, and how to wake it."""

    @property
    def tail_index(self) -> int | None:
        """The next ring index it reads (None while it reads a consumer of its own)."""

    def wake(self) -> None:
        """Postbacks were added (or the reader closed)."""


class SharedTail:
    """One reader of the log's newest postbacks per store, running while cursors hold it
    (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, conn: NatsConnection, size: int = 0) -> None:
        self._conn = conn
        self._size = size or TAIL_SIZE
        self._slots: list[StoredPostback | None] = [None] * self._size
        self.end = 0
        """Ring index after the newest postback (ring indexes only grow)."""
        self.floor: int | None = None
        """Every message above this stream sequence, up to the newest read, is in the ring;
        None until the reader's first consumer exists."""
        self._head = 0
        """The last stream sequence read."""
        self._listeners: set[TailReader] = set()
        self.resume_index: float = float("inf")
        """While the reader waits for room (every attached cursor is behind): the ring index
        a cursor reaching it calls :meth:`resume` at; infinity otherwise."""
        self._pending = 0
        """Messages the consumer had left after the last one read (its pending count)."""
        self._wake = asyncio.Event()
        self._consumer = ""
        self._consumer_seq = 0
        self._inbox: PullInbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._created: asyncio.Future[None] | None = None
        self._closed = False
        self._users = 0
        self._base = 0
        """Ring index of the first postback the current reader added."""
        self._stopping: asyncio.Task[None] | None = None

    @property
    def oldest(self) -> int:
        """Ring index of the oldest postback still held."""
        return max(self.end - self._size, self._base)

    def at(self, index: int) -> StoredPostback:
        """The postback at a ring index in [oldest, end)."""
        postback = self._slots[index % self._size]
        assert postback is not None
        return postback

    def index_after(self, position: int) -> int | None:
        """The ring index of the first postback above stream sequence ``position``, or None
        if the ring does not hold everything after it (or the reader is more than a ring
        behind ``position``)."""
        if self.floor is None or position < self.floor:
            return None
        if position > self._head + self._size:
            return None  # the reader is held back far behind: not worth waiting for
        low, high = self.oldest, self.end
        while low < high:
            mid = (low + high) // 2
            if self.at(mid).sequence <= position:
                low = mid + 1
            else:
                high = mid
        return low

    def listen(self, reader: TailReader) -> None:
        """Wake ``reader`` whenever postbacks are added; it reads the ring from now on."""
        self._listeners.add(reader)
        self.resume()  # a new cursor may have room the others had not

    def unlisten(self, reader: TailReader) -> None:
        self._listeners.discard(reader)

    def resume(self) -> None:
        """A cursor moved up to ``resume_index``: the reader may have room to read again."""
        self.resume_index = float("inf")
        self._wake.set()

    def _room(self, outstanding: int) -> int:
        """How many more messages the reader may ask for without pushing the nearest
        attached cursor out of the ring (see the module's docstring)."""
        if self._pending >= PACE_LIMIT_TAILS * self._size:
            return READ_BATCH - outstanding  # too far behind the log's end to wait
        oldest = self.oldest
        nearest = max(
            (i for r in self._listeners if (i := r.tail_index) is not None and i >= oldest),
            default=None,
        )
        # Nobody on the ring (a cursor already pushed out of it does not count): keep it at
        # the log's end, with pulls of at most a ring, so that a cursor joining at its end is
        # not pushed out by what is already on its way.
        behind = 0 if nearest is None else self.end - nearest
        return min(READ_BATCH, self._size - behind) - outstanding

    async def acquire(self) -> None:
        """Count a cursor in and start the reader if it is the first (see ensure_started)."""
        self._users += 1
        try:
            await self.ensure_started()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Count a cursor out; the last one out stops the reader and empties the ring."""
        self._users -= 1
        if self._users == 0 and self._task is not None and not self._closed:
            self._stopping = asyncio.create_task(self._stop(), name="nats-shared-tail-stop")

    async def _stop(self) -> None:
        task, self._task = self._task, None
        self._created = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_consumer()
        # No cursor holds a ring index now; the next reader starts afresh at the log's end.
        self._slots = [None] * self._size
        self._base = self.end
        self.floor = None
        self._head = 0
        self._pending = 0
        self.resume_index = float("inf")

    async def ensure_started(self) -> None:
        """Start the reader if needed and wait (bounded) until its consumer exists: a cursor
        opened after that can start at the tail."""
        stopping = self._stopping
        if stopping is not None:
            await stopping  # the previous reader is gone before a new one starts
            if self._stopping is stopping:
                self._stopping = None
        if self._closed:
            return
        if self._task is None:
            self._created = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="nats-shared-tail")
        assert self._created is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._created), START_WAIT_SECONDS)

    async def _create(self) -> None:
        first = self.floor is None
        # The first reader starts right after a sequence read from the stream, not after
        # whatever a "deliver new" consumer reports it started at: the ring's floor is then
        # exact by construction, whichever server hosts the consumer.
        start_after = (
            (await self._conn.js.stream_info(self._conn.layout.stream)).state.last_seq
            if first
            else self._head
        )
        name = await add_reader(self._conn, "t", Start.after(start_after), frozenset())
        if first:
            self._head = self.floor = start_after
        self._consumer = name
        self._consumer_seq = 0
        self._pending = 0
        inbox = PullInbox(self._conn.client, self._conn.layout.stream, name, self._wake.set)
        await inbox.open()
        self._inbox = inbox
        if self._created is not None and not self._created.done():
            self._created.set_result(None)

    async def _drop_consumer(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.close()
        if self._consumer:
            with contextlib.suppress(JetStreamError, TimeoutError, OSError):
                await self._conn.js.delete_consumer(self._conn.layout.stream, self._consumer)
            self._consumer = ""

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except (JetStreamError, TimeoutError, OSError) as exc:
                # NATS may be electing a leader or reconnecting: try again shortly.
                log.warning("shared tail reader: %s", exc)
                await self._pause()
            except Exception:
                log.exception("shared tail reader failed; recreating its consumer")
                if self._inbox is not None:
                    self._inbox.gone = True
                await self._pause()

    async def _pause(self) -> None:
        self._wake.clear()
        await wait_event(self._wake, HEARTBEAT_SECONDS)

    async def _step(self) -> None:
        inbox = self._inbox
        if inbox is None or inbox.gone:
            await self._drop_consumer()
            await self._create()
            return
        self._wake.clear()
        added = False
        while (taken := inbox.take_next(self._consumer_seq)) is not None:
            msg, reply = taken
            self._consumer_seq = reply.consumer_seq
            self._pending = reply.pending
            self._add(decode(msg, reply))
            added = True
        if added:
            for reader in self._listeners:
                reader.wake()
        if inbox.gone:
            return
        inbox.check_alive()
        if inbox.outstanding <= READ_BATCH // 2:
            room = self._room(inbox.outstanding)
            quantum = max(min(READ_BATCH // 2, self._size // 4), 1)
            if room >= quantum:
                self.resume_index = float("inf")
                await inbox.pull(room)
            elif inbox.outstanding == 0 and not inbox.messages:
                await self._wait_for_room(quantum)
                return
        if not inbox.messages:
            await wait_event(self._wake, HEARTBEAT_SECONDS)

    async def _wait_for_room(self, quantum: int) -> None:
        """Every cursor on the ring is behind: wait until the nearest one has read far
        enough for a pull of ``quantum`` (or a cursor joins at the end); meanwhile, once a
        heartbeat, learn how far behind the log's end the reader is (``PACE_LIMIT_TAILS``)."""
        self.resume_index = self.end + quantum - self._size
        if await wait_event(self._wake, HEARTBEAT_SECONDS):
            return
        try:
            info = await self._conn.js.consumer_info(self._conn.layout.stream, self._consumer)
        except NotFoundError:
            # Idle past its inactivity threshold: the server removed it (recreated next).
            if self._inbox is not None:
                self._inbox.gone = True
            return
        self._pending = info.num_pending or 0

    def _add(self, postback: StoredPostback) -> None:
        slot = self.end % self._size
        evicted = self._slots[slot]
        if evicted is not None:
            self.floor = evicted.sequence
        self._slots[slot] = postback
        self.end += 1
        self._head = postback.sequence

    async def close(self) -> None:
        """Stop reading and delete the consumer (if NATS is still there)."""
        self._closed = True
        if self._stopping is not None:
            await self._stopping
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop_consumer()
        for reader in self._listeners:
            reader.wake()
        self._listeners.clear()
