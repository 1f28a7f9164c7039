"""The scale-out postback engine: the PostbackStore contract on NATS JetStream.

Many igbutton replicas share one log: a webhook stored by replica A reaches a subscriber
on replica B, and a group's members may sit on any replica (see ``nats._groups``).

**Stored once.** Each postback is published on its own subject, ``<prefix>.<account>.<mid>``,
with ``Nats-Expected-Last-Subject-Sequence: 0``: the stream leader accepts it only if no
message on that subject is retained, so a retry of the same postback is refused for as long
as the first copy is kept (the retention, which is longer than Meta's 36 hours of retries),
in one atomic step on the leader, whichever replica publishes and however late. The
``Nats-Msg-Id`` (``<account>:<mid>``) and its short duplicate window only make an
immediate retry cheap. A separate "seen" KV bucket was not used: a KV write and a stream
publish are two writes, and a crash between them either loses the postback or, after the
window, stores it twice.

An append is answered only after every publish got its PubAck, i.e. the postback is stored
on a majority of the stream's replicas. Transient failures (a leader election, a node
going away) are retried within a bound; publishing again is safe for the reason above.
While the client is disconnected an append waits at most DISCONNECTED_APPEND_SECONDS for it
to reconnect; once the client has closed (see ``nats._connection``) appends fail at once
until a new client replaced it. A postback too large for one NATS message or subject is
refused before anything is written (the webhook never sends one: see MAX_ID_BYTES).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from igbutton_server import metrics
from igbutton_server.config import Settings
from igbutton_server.storage.groups import (
    DEAD_LETTER_PAGE_MAX,
    DeadLetterPage,
    GroupDetails,
    GroupHasMembers,
    GroupNotFound,
)
from igbutton_server.storage.nats import _group_admin as admin
from igbutton_server.storage.nats._codec import AckReply, encode
from igbutton_server.storage.nats._connection import WRONG_LAST_SEQUENCE, NatsConnection
from igbutton_server.storage.nats._consumers import deliver_policy
from igbutton_server.storage.nats._cursor import BroadcastCursor
from igbutton_server.storage.nats._groups import (
    FILTER_METADATA_KEY,
    GENERATION_METADATA_KEY,
    JOINED_METADATA_KEY,
    AckLedger,
    ExpiredDeadLetters,
    NatsGroupMember,
    ack_group,
    consumer_name,
    filter_from_metadata,
    filter_to_metadata,
    generation_of,
    group_consumers,
    group_of,
    reply_subject,
    scope_prefix,
    split_ack_id,
)
from igbutton_server.storage.nats._tail import SharedTail
from igbutton_server.storage.postbacks import (
    AckResult,
    AppendResult,
    Filter,
    GroupFilterMismatch,
    GroupInfo,
    GroupOptions,
    NewPostback,
    Start,
    StoreClosed,
    TooManyGroups,
    split_group_key,
)

log = logging.getLogger(__name__)

APPEND_TIMEOUT_SECONDS = 20.0
"""How long an append keeps retrying before it fails (and the webhook answers 5xx). Longer
than a JetStream leader election after a node is lost (a few seconds)."""
PUBACK_WAIT_SECONDS = 3.0
"""How long one round waits for its PubAcks before publishing the rest again. An ack is
lost with a connection that drops after the publish was written (a node restarting), and
waiting out the whole append deadline would fail a delivery that a new publish stores at
once; publishing twice is safe (Nats-Msg-Id and the expected subject sequence)."""
DISCONNECTED_APPEND_SECONDS = 5.0
"""How long an append waits for a disconnected client to reconnect before it fails."""
MAX_SUBJECT_BYTES = 3072
"""The longest subject published: NATS refuses a protocol line over 4 KiB by closing the
connection, and the line also holds the reply subject and sizes."""
_CONSUMER_EXISTS = 10148
_API_TIMEOUT_SECONDS = 5.0


def _last_active_ms(info: api.ConsumerInfo) -> int:
    """Wall-clock ms of a group consumer's latest creation, join, delivery or ack."""
    times = [info.created, *(s.last_active for s in (info.delivered, info.ack_floor) if s)]
    latest = max((int(t.timestamp() * 1000) for t in times if t is not None), default=0)
    noted = (info.config.metadata or {}).get(JOINED_METADATA_KEY, "")
    return max(latest, int(noted) if noted.isdigit() else 0)


class _Retry(Exception):
    """A publish failed in a way a retry may cure."""


class NatsClientClosed(OSError):
    """The NATS client closed; a new one is being opened (the append is not stored)."""


class _Publisher:
    """Pipelined publishes with their PubAcks matched up on one wildcard inbox.

    (nats-py's ``publish_async`` leaves the future pending when JetStream answers with
    an error, which is exactly the answer a duplicate gets.)
    """

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._prefix = ""
        self._sub: NatsSubscription | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, object]]] = {}
        self._counter = 0

    async def open(self) -> None:
        self._prefix = self._conn.client.new_inbox() + "."
        self._sub = await self._conn.client.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if (msg.headers or {}).get("Status") == "503":
            future.set_exception(_Retry("no responders (stream leader unavailable)"))
            return
        try:
            future.set_result(json.loads(msg.data))
        except ValueError as exc:
            future.set_exception(exc)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, object]]:
        """Publish now (in call order); the future gets JetStream's answer."""
        self._counter += 1
        token = str(self._counter)
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._conn.client.publish(
                subject, payload, reply=self._prefix + token, headers=headers
            )
        except Exception:
            self._waiting.pop(token, None)
            raise
        return future

    def fail_all(self, error: Exception) -> None:
        """End every wait with ``error`` (the client closed: no answer will come)."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()

    def forget(self, futures: Sequence[asyncio.Future[dict[str, object]]]) -> None:
        """Stop waiting for these (timed out)."""
        for token, future in list(self._waiting.items()):
            if future in futures:
                del self._waiting[token]
                future.cancel()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


@dataclass
class _Outcome:
    stored: int = 0
    duplicates: int = 0
    unanswered: set[tuple[str, str]] = field(default_factory=set)
    """Postbacks published in this append whose PubAck never came: the publish may have
    been stored, so a "duplicate" answer to a later round is most likely that copy."""

    def already_stored(self, postback: NewPostback) -> None:
        if (postback.account_id, postback.mid) in self.unanswered:
            self.stored += 1  # our own earlier publish, not a delivery Meta repeated
        else:
            self.duplicates += 1


def _needs_retry(
    postback: NewPostback, future: asyncio.Future[dict[str, object]], outcome: _Outcome
) -> bool:
    """Count one publish's answer in ``outcome``; True if it is to be published again.
    Raises if JetStream refused it for good."""
    if future.cancelled():
        outcome.unanswered.add((postback.account_id, postback.mid))
        return True
    error = future.exception()
    if isinstance(error, _Retry):
        return True
    if error is not None:
        raise error
    answer = future.result()
    if "error" in answer:
        err = answer["error"]
        assert isinstance(err, dict)
        if err.get("err_code") in WRONG_LAST_SEQUENCE:
            outcome.already_stored(postback)  # in the log, however long ago
        elif int(err.get("code", 0)) >= 500:
            return True
        else:
            raise OSError(f"NATS refused a postback: {err.get('description')}")
    elif answer.get("duplicate"):
        outcome.already_stored(postback)
    else:
        outcome.stored += 1
    return False


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _answered(
    operation: Callable[Concatenate[NatsPostbackStore, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[NatsPostbackStore, _P], Coroutine[Any, Any, _T]]:
    """The store's operation, with NATS not answering raised as StorageUnavailable (see
    ``NatsConnection.answering``): an ack or a group call while a node is lost is
    UNAVAILABLE, which clients retry, not INTERNAL."""

    @functools.wraps(operation)
    async def answered(self: NatsPostbackStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        self._check_open()
        with self.conn.answering(f"NATS postback store (stream {self.conn.layout.stream})"):
            return await operation(self, *args, **kwargs)

    return answered


class NatsPostbackStore:
    """PostbackStore on NATS JetStream. Build with :meth:`open`."""

    def __init__(self, conn: NatsConnection, ledger: AckLedger) -> None:
        self.conn = conn
        self.ledger = ledger
        self._publisher = _Publisher(conn)
        self._dead_letters = ExpiredDeadLetters(conn, ledger)
        self._cursors: set[BroadcastCursor] = set()
        self.tail = SharedTail(conn)
        """The newest postbacks, read once for every broadcast cursor of this process."""
        self._members: dict[str, set[NatsGroupMember]] = {}
        self._deletions = 0
        """Groups this store deleted so far; a group_info read that a deletion overtook
        leaves the metrics alone."""
        self._ending: set[asyncio.Task[None]] = set()
        conn.on_lost = self._on_lost
        conn.on_revived = self._on_revived

    def _on_lost(self) -> None:
        """The client closed: what waits on it fails now, and the streams reading through it
        end (UNAVAILABLE: clients resume from their last sequence, or rejoin their group)."""
        self._publisher.fail_all(NatsClientClosed("the NATS client closed"))
        task = asyncio.create_task(self._end_readers(), name="nats-end-readers")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_readers(self) -> None:
        for cursor in list(self._cursors):
            await cursor.close()
        for members in list(self._members.values()):
            for member in list(members):
                await member.close()

    async def _on_revived(self) -> None:
        """Rebuild on the new client what lived on the closed one."""
        await asyncio.gather(*self._ending)
        ledger_bucket = self.conn.bucket(self.conn.layout.delivery_bucket, direct=False)
        self.ledger = AckLedger(self.conn, ledger_bucket)
        await self._dead_letters.close()
        self._dead_letters = ExpiredDeadLetters(self.conn, self.ledger)
        await self._publisher.close()
        self._publisher = _Publisher(self.conn)
        await self._publisher.open()
        await self._dead_letters.open()

    def unhealthy_reason(self) -> str | None:
        """See PostbackStore.unhealthy_reason."""
        if self.closed:
            return None
        return self.conn.unhealthy_reason()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.conn.closing

    def unready_reason(self) -> str | None:
        """None while open and connected to NATS (the client reconnects on its own)."""
        if self.closed:
            return "postback store closed"
        return None if self.conn.connected else "not connected to NATS"

    @classmethod
    async def open(cls, settings: Settings) -> NatsPostbackStore:
        """Connect, create or update the streams and ledger, and start."""
        conn = await NatsConnection.open(settings)
        try:
            store = cls(conn, AckLedger(conn, await conn.ensure_postback_layout()))
            await store._publisher.open()
            await store._dead_letters.open()
        except BaseException:
            await conn.close()
            raise
        return store

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosed("the postback store is closed")

    # --- the log ---

    async def append(self, postbacks: Sequence[NewPostback]) -> AppendResult:
        """See PostbackStore.append."""
        self._check_open()
        seen: set[tuple[str, str]] = set()
        batch: list[NewPostback] = []
        repeated = 0
        for postback in postbacks:
            key = (postback.account_id, postback.mid)
            if key in seen:
                repeated += 1
            else:
                seen.add(key)
                batch.append(postback)
        for postback in batch:
            self._check_fits(postback)
        outcome = _Outcome()
        deadline = time.monotonic() + APPEND_TIMEOUT_SECONDS
        delay = 0.05
        while batch:
            deadline = self._check_connection(deadline)
            batch = await self._publish_round(batch, outcome, deadline)
            if batch:
                deadline = self._check_connection(deadline)
                if time.monotonic() + delay >= deadline:
                    raise OSError(f"NATS did not store {len(batch)} postbacks in time")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return AppendResult(outcome.stored, outcome.duplicates + repeated)

    def _check_fits(self, postback: NewPostback) -> None:
        """Raise ValueError if the postback cannot be one NATS message: publishing it would
        fail on every retry, or make the server close the connection."""
        subject = self.conn.layout.postback_subject(postback.account_id, postback.mid)
        if len(subject.encode()) > MAX_SUBJECT_BYTES:
            raise ValueError(f"a postback's subject is over {MAX_SUBJECT_BYTES} bytes")
        size = len(encode(postback)) + len(postback.account_id) + len(postback.mid) + 512
        limit = self.conn.client.max_payload  # the server's, from its INFO
        if size > limit:  # the body, plus room for the headers
            raise ValueError(f"a postback of {size} bytes is over NATS's max_payload ({limit})")

    def _check_connection(self, deadline: float) -> float:
        """The append's deadline, shortened while disconnected; raises if the client closed."""
        self._check_open()
        if self.conn.lost or self.conn.client.is_closed:
            raise NatsClientClosed("the NATS client closed; a new one is being opened")
        if self.conn.connected:
            return deadline
        return min(deadline, time.monotonic() + DISCONNECTED_APPEND_SECONDS)

    async def _publish_round(
        self, batch: list[NewPostback], outcome: _Outcome, deadline: float
    ) -> list[NewPostback]:
        """Publish every postback once; return those to try again."""
        futures = await self._publish_each(batch, outcome)
        if futures is None:
            return batch
        if futures:
            wait = min(max(deadline - time.monotonic(), 0.05), PUBACK_WAIT_SECONDS)
            _, late = await asyncio.wait(futures, timeout=wait)
            if late:
                log.info("no PubAck in time for %d postbacks; publishing them again", len(late))
            self._publisher.forget(list(late))
        return [
            postback
            for postback, future in zip(batch, futures, strict=True)
            if _needs_retry(postback, future, outcome)
        ]

    async def _publish_each(
        self, batch: list[NewPostback], outcome: _Outcome
    ) -> list[asyncio.Future[dict[str, object]]] | None:
        """Publish every postback, in order, without waiting for the PubAcks: their futures,
        or None if the connection failed (then the whole batch is to be tried again)."""
        layout = self.conn.layout
        futures: list[asyncio.Future[dict[str, object]]] = []
        for postback in batch:
            try:
                futures.append(
                    await self._publisher.publish(
                        layout.postback_subject(postback.account_id, postback.mid),
                        encode(postback),
                        {
                            api.Header.MSG_ID: f"{postback.account_id}:{postback.mid}",
                            api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
                            api.Header.EXPECTED_STREAM: layout.stream,
                        },
                    )
                )
            except (nats.errors.Error, OSError) as exc:
                log.warning("publishing a postback failed: %s", exc)
                # The connection is down: try the whole batch again. What was published
                # before it went down may have been stored.
                outcome.unanswered.update((p.account_id, p.mid) for p in batch[: len(futures)])
                self._publisher.forget(futures)
                return None
        return futures

    @_answered
    async def subscribe(self, flt: Filter, start: Start) -> BroadcastCursor:
        """See PostbackStore.subscribe."""
        cursor = await BroadcastCursor.open(self.conn, self.tail, flt, start, self.forget)
        self._cursors.add(cursor)
        return cursor

    # The argument keeps its name: PostbackStore.prune may be called with it by keyword.
    async def prune(self, older_than_ms: int) -> int:  # noqa: ARG002
        """See PostbackStore.prune: the stream's max_age expires postbacks on its own."""
        self._check_open()
        return 0

    # --- consumer groups ---

    @_answered
    async def join_group(
        self,
        group: str,
        flt: Filter,
        start: Start,
        options: GroupOptions,
        max_groups: int | None = None,
    ) -> NatsGroupMember:
        """See PostbackStore.join_group."""
        layout = self.conn.layout
        consumer = consumer_name(group)
        joined = {JOINED_METADATA_KEY: str(int(time.time() * 1000))}
        config = deliver_policy(start)
        config.durable_name = consumer
        config.ack_policy = api.AckPolicy.EXPLICIT
        config.ack_wait = options.ack_deadline
        config.max_deliver = options.max_attempts
        config.max_ack_pending = -1  # members cap themselves (max_unacked)
        config.filter_subjects = layout.group_subjects(consumer, flt.account_ids)
        config.metadata = {FILTER_METADATA_KEY: filter_to_metadata(flt), **joined}
        info = await self._existing_consumer(consumer)
        created = info is None
        if info is None:
            if max_groups is not None:
                scope = scope_prefix(split_group_key(group)[0])
                if len(await group_consumers(self.conn, scope)) >= max_groups:
                    raise TooManyGroups(group, max_groups)
            info = await self._create_consumer(consumer, config)
        existing = filter_from_metadata((info.config.metadata or {}).get(FILTER_METADATA_KEY))
        if existing != flt:
            raise GroupFilterMismatch(group, existing)
        if not created or info.config.max_deliver != options.max_attempts:
            # As with SQLite, the latest member's max attempts applies to the group; the
            # join's time is noted for the idle sweep (one consumer update per join).
            info.config.max_deliver = options.max_attempts
            info.config.metadata = {**(info.config.metadata or {}), **joined}
            # Groups made before redrive existed gain its subject (see group_subjects).
            info.config.filter_subjects = layout.group_subjects(consumer, existing.account_ids)
            info.config.filter_subject = None
            info = await self.conn.js.add_consumer(layout.stream, info.config)
        member = await NatsGroupMember.open(
            self.conn,
            self.ledger,
            group,
            flt,
            options,
            ack_wait=info.config.ack_wait or options.ack_deadline,
            on_close=self.forget,
            generation=generation_of(info),
        )
        self._members.setdefault(group, set()).add(member)
        metrics.GROUPS.set(len(self._members))
        return member

    async def _existing_consumer(self, name: str) -> api.ConsumerInfo | None:
        try:
            info: api.ConsumerInfo = await self.conn.js.consumer_info(self.conn.layout.stream, name)
        except NotFoundError:
            return None
        return info

    async def _create_consumer(self, name: str, config: api.ConsumerConfig) -> api.ConsumerInfo:
        """Create the durable consumer only if it does not exist (never update it here:
        an existing group keeps its position and filter)."""
        stream = self.conn.layout.stream
        request = {"stream_name": stream, "config": config.as_dict(), "action": "create"}
        reply = await self.conn.client.request(
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
            json.dumps(request).encode(),
            timeout=_API_TIMEOUT_SECONDS,
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is None:
            created: api.ConsumerInfo = api.ConsumerInfo.from_response(answer)
            return created
        if error.get("err_code") != _CONSUMER_EXISTS:
            APIError.from_error(error)  # raises
        existing: api.ConsumerInfo = await self.conn.js.consumer_info(stream, name)
        return existing

    @_answered
    async def ack(self, group: str, ack_ids: Sequence[str], nack_ids: Sequence[str]) -> AckResult:
        """See PostbackStore.ack."""
        outcome = await ack_group(self.conn, self.ledger, group, ack_ids, nack_ids)
        for member in self._members.get(group, ()):
            member.settle(outcome.settled)
        return outcome.result

    @_answered
    async def group_info(self, group: str) -> GroupInfo | None:
        """See PostbackStore.group_info."""
        layout = self.conn.layout
        deletions = self._deletions
        try:
            consumer = consumer_name(group)
            info = await self.conn.js.consumer_info(layout.stream, consumer)
        except (ValueError, NotFoundError):
            return None
        dead = await self.conn.js.stream_info(
            layout.dead_letter_stream, subjects_filter=layout.dead_letter_filter(consumer)
        )
        # A deletion while this read was on its way removed the group's series: setting the
        # gauge now would bring back a series for a group that no longer exists.
        if deletions == self._deletions:
            metrics.UNACKED.labels(group=group).set(info.num_ack_pending or 0)
        return GroupInfo(
            name=group,
            filter=filter_from_metadata((info.config.metadata or {}).get(FILTER_METADATA_KEY)),
            unacked=info.num_ack_pending or 0,
            dead_lettered=sum((dead.state.subjects or {}).values()),
        )

    @_answered
    async def delete_group(self, group: str) -> bool:
        """See PostbackStore.delete_group."""
        layout = self.conn.layout
        consumer = consumer_name(group)
        try:
            await self.conn.js.delete_consumer(layout.stream, consumer)
            existed = True
        except NotFoundError:
            existed = False
        # Its series go the moment the group does, before the purges' round trips: a reader
        # that already finds no group must find no series either.
        self._deletions += 1
        metrics.forget_group(group)
        # Then what the consumer leaves behind, so a group made again under the same name
        # starts clean (and an old ack id cannot match a new delivery).
        await self.conn.js.purge_stream(
            f"KV_{layout.delivery_bucket}", subject=self.ledger.watch_subject(consumer)
        )
        await self.conn.js.purge_stream(
            layout.dead_letter_stream, subject=layout.dead_letter_filter(consumer)
        )
        # Redriven copies too: a group made again from EARLIEST must not get them.
        await self.conn.js.purge_stream(layout.stream, subject=layout.redrive_subject(consumer))
        for member in list(self._members.pop(group, ())):
            await member.close()
        metrics.GROUPS.set(len(self._members))
        return existed

    @_answered
    async def delete_idle_groups(self, idle_since_ms: int) -> list[str]:
        """See PostbackStore.delete_idle_groups. A member connected on any replica keeps a
        pull request waiting while it has room for more; activity is the latest of the
        group's creation, last join (consumer metadata), last delivery and last ack."""
        deleted: list[str] = []
        for consumer in await group_consumers(self.conn):
            group = group_of(consumer)
            info = await self._existing_consumer(consumer)
            if group is None or info is None or group in self._members:
                continue
            if (info.num_waiting or 0) > 0:
                continue
            if _last_active_ms(info) < idle_since_ms and await self.delete_group(group):
                deleted.append(group)
        return deleted

    # --- operating groups (storage.groups.GroupOperations; see nats._group_admin) ---

    async def _group_consumer(self, group: str) -> tuple[str, api.ConsumerInfo]:
        try:
            consumer = consumer_name(group)
        except ValueError:
            raise GroupNotFound(group) from None
        info = await self._existing_consumer(consumer)
        if info is None:
            raise GroupNotFound(group)
        return consumer, info

    async def _details(
        self, group: str, consumer: str, info: api.ConsumerInfo, deletions: int
    ) -> GroupDetails:
        """The group's details from ``info``, read when ``deletions`` groups had been
        deleted by this store."""
        layout = self.conn.layout
        dead = await self.conn.js.stream_info(
            layout.dead_letter_stream, subjects_filter=layout.dead_letter_filter(consumer)
        )
        subjects = info.config.filter_subjects or [
            s for s in (info.config.filter_subject,) if s is not None
        ]
        oldest = await admin.oldest_unacked_ms(self.conn, info, subjects)
        found = admin.details(
            group,
            info,
            len(self._members.get(group, ())),
            sum((dead.state.subjects or {}).values()),
            oldest,
        )
        # As in group_info: a deletion while this was read removed the group's series, and
        # setting the gauges now would bring them back for a group that no longer exists.
        if deletions == self._deletions:
            metrics.observe_group(found)
        return found

    @_answered
    async def list_groups(self) -> list[GroupDetails]:
        """See GroupOperations.list_groups."""
        found: list[GroupDetails] = []
        for consumer in sorted(await group_consumers(self.conn)):
            group = group_of(consumer)
            deletions = self._deletions
            info = await self._existing_consumer(consumer)
            if group is not None and info is not None:
                found.append(await self._details(group, consumer, info, deletions))
        return sorted(found, key=lambda d: d.key)

    @_answered
    async def get_group(self, group: str) -> GroupDetails:
        """See GroupOperations.get_group."""
        deletions = self._deletions
        consumer, info = await self._group_consumer(group)
        return await self._details(group, consumer, info, deletions)

    async def remove_group(self, group: str, *, force: bool = False) -> None:
        """See GroupOperations.remove_group."""
        found = await self.get_group(group)
        if found.members and not force:
            raise GroupHasMembers(group, found.members)
        await self.delete_group(group)

    @_answered
    async def seek_group(self, group: str, to: Start) -> None:
        """See GroupOperations.seek_group."""
        layout = self.conn.layout
        consumer, info = await self._group_consumer(group)
        config = info.config
        generation = str(int(generation_of(info)) + 1)
        config.metadata = {**(config.metadata or {}), GENERATION_METADATA_KEY: generation}
        moved = deliver_policy(to)
        config.deliver_policy = moved.deliver_policy
        config.opt_start_seq = moved.opt_start_seq
        config.opt_start_time = moved.opt_start_time
        delivered = info.delivered.stream_seq if info.delivered else 0
        await self.conn.js.delete_consumer(layout.stream, consumer)
        await self.conn.js.purge_stream(
            f"KV_{layout.delivery_bucket}", subject=self.ledger.watch_subject(consumer)
        )
        # Redriven copies already handed out: their originals after the new start come
        # again anyway. Copies not yet delivered stay (they are owed to the group).
        if delivered:
            await self.conn.js.purge_stream(
                layout.stream, seq=delivered + 1, subject=layout.redrive_subject(consumer)
            )
        await self._create_consumer(consumer, config)
        notice = b"reset\n" + generation.encode()
        await self.conn.client.publish(layout.group_notice_subject(consumer), notice)
        metrics.UNACKED.labels(group=group).set(0)

    @_answered
    async def list_dead_letters(
        self, group: str, after: int = 0, limit: int = 100
    ) -> DeadLetterPage:
        """See GroupOperations.list_dead_letters."""
        consumer, _ = await self._group_consumer(group)
        size = max(1, min(limit, DEAD_LETTER_PAGE_MAX))
        records = [
            r
            for r in await admin.dead_letter_records(self.conn, consumer)
            if r.letter.postback.sequence > after
        ]
        letters = [r.letter for r in records[:size]]
        more = len(records) > size
        return DeadLetterPage(letters, letters[-1].postback.sequence if more else None)

    @_answered
    async def redrive_dead_letters(self, group: str, sequences: Sequence[int] | None) -> int:
        """See GroupOperations.redrive_dead_letters."""
        consumer, info = await self._group_consumer(group)
        subject = self.conn.layout.redrive_subject(consumer)
        if subject not in (info.config.filter_subjects or ()):
            # A group made before redrive existed: its consumer gains the subject.
            flt = filter_from_metadata((info.config.metadata or {}).get(FILTER_METADATA_KEY))
            info.config.filter_subjects = self.conn.layout.group_subjects(consumer, flt.account_ids)
            info.config.filter_subject = None
            await self.conn.js.add_consumer(self.conn.layout.stream, info.config)
        wanted = None if sequences is None else set(sequences)
        redriven = 0
        for record in await admin.dead_letter_records(self.conn, consumer):
            if wanted is None or record.letter.postback.sequence in wanted:
                await admin.redrive_copy(self.conn, consumer, record)
                redriven += 1
        if redriven:
            metrics.DEAD_LETTERS_REDRIVEN.labels(group=group).inc(redriven)
        return redriven

    @_answered
    async def purge_dead_letters(self, group: str) -> int:
        """See GroupOperations.purge_dead_letters."""
        consumer, _ = await self._group_consumer(group)
        layout = self.conn.layout
        count = len(await admin.dead_letter_records(self.conn, consumer))
        await self.conn.js.purge_stream(
            layout.dead_letter_stream, subject=layout.dead_letter_filter(consumer)
        )
        return count

    @_answered
    async def modify_ack_deadline(
        self, group: str, ack_ids: Sequence[str], seconds: float
    ) -> AckResult:
        """See GroupOperations.modify_ack_deadline: checked against the ledger (the
        delivery is current), then the member holding it, on any replica, is told."""
        consumer, info = await self._group_consumer(group)
        if seconds <= 0:
            return await self.ack(group, [], ack_ids)
        layout = self.conn.layout
        deadline_ms = admin.wall_ms() + int(seconds * 1000)
        lines: list[tuple[int, int, int]] = []
        unknown: list[str] = []
        generation = generation_of(info)
        for ack_id in ack_ids:
            reply = AckReply.parse(reply_subject(layout.stream, consumer, ack_id))
            current = None
            if (
                reply is not None
                and reply.consumer == consumer
                and (split_ack_id(ack_id)[1] == generation)
            ):
                current = await self.ledger.revision_of(consumer, reply)
            if reply is None or current is None:
                unknown.append(ack_id)
                continue
            lines.append((reply.stream_seq, reply.delivered, deadline_ms))
            if seconds > (info.config.ack_wait or 0) / 2:
                # Restart JetStream's AckWait now; the member keeps it running after.
                await self.conn.client.publish(reply.subject, b"+WPI")
        if lines:
            await self.conn.client.publish(
                layout.group_notice_subject(consumer), admin.deadline_notice(lines)
            )
        return AckResult(len(lines), tuple(unknown))

    def forget(self, source: BroadcastCursor | NatsGroupMember) -> None:
        """A cursor or member closed."""
        if isinstance(source, BroadcastCursor):
            self._cursors.discard(source)
            return
        members = self._members.get(source.group)
        if members is not None:
            members.discard(source)
            if not members:
                del self._members[source.group]
                metrics.GROUPS.set(len(self._members))

    async def close(self) -> None:
        """See PostbackStore.close."""
        if self.closed:
            return
        self.conn.closing = True
        for cursor in list(self._cursors):
            await cursor.close()
        for members in list(self._members.values()):
            for member in list(members):
                await member.close()
        await self._dead_letters.close()
        await self.tail.close()
        await self._publisher.close()
        await self.conn.close()
