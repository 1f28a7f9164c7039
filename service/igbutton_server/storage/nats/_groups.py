"""Consumer groups on JetStream: one durable pull consumer per group, and an ack ledger.

A group is a durable consumer (explicit ack, ``AckWait`` = ack deadline, ``MaxDeliver`` =
max attempts, filter subjects = the accounts) named after its key (``consumer_name``:
``g_<name>`` in the shared scope of open mode, ``c_<scope>_<name>`` in a caller's); its
filter is kept in the consumer's metadata so a member joining with other filters is
refused, and so is the time of the last join, for the idle sweep. Members on any
replica pull from it; each asks for no more than its free ``max_unacked`` slots.

**Ack ids work from any replica.** An ack id is the tail of the delivery's ``$JS.ACK``
reply subject (``<attempt>.<stream seq>.<consumer seq>.<time>.<pending>``); the stream and
group come from the configuration and the AckPostbacks call, so any replica rebuilds the
subject and publishes ``+ACK``, ``-NAK`` or ``+TERM`` to it. JetStream itself would also
apply an ack from a superseded delivery, so each delivery is recorded in the delivery
ledger (KV key ``<consumer>.<stream seq>`` = attempt) before it is handed out, and an ack
applies only if the ledger still names its attempt; the ledger entry is removed with a
compare-and-set, so of two racing acks exactly one applies. The ledger's change
notifications tell the member holding a delivery that it was settled elsewhere, which
frees its slot.

**Dead letters.** When a delivery's last attempt times out JetStream emits a
MAX_DELIVERIES advisory (while a member is pulling); a nack on the last attempt is
recorded by igbutton and then terminated (``+TERM``). The dead-letter stream keeps both,
so a group's dead-letter count is one subject count away, on every replica. The metric
counts a nack where it is applied, and an advisory on the one replica that receives it
(see ``ExpiredDeadLetters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from igbutton_server import metrics
from igbutton_server.storage import dead_letters
from igbutton_server.storage._events import wait_event
from igbutton_server.storage.nats._codec import AckReply, decode
from igbutton_server.storage.nats._connection import WRONG_LAST_SEQUENCE, NatsConnection
from igbutton_server.storage.nats._pull import HEARTBEAT_SECONDS, PullInbox
from igbutton_server.storage.postbacks import (
    GROUP_KEY_RE,
    AckResult,
    Delivery,
    Filter,
    GroupOptions,
    split_group_key,
)

log = logging.getLogger(__name__)

FILTER_METADATA_KEY = "igbutton_filter"
GENERATION_METADATA_KEY = "igbutton_generation"
"""Consumer metadata: how many times a seek recreated the group's consumer."""
JOINED_METADATA_KEY = "igbutton_joined_ms"
"""Consumer metadata: wall-clock ms of the group's last join (for the idle sweep)."""
_ACK_TIMEOUT_SECONDS = 5.0
_ACK_CONCURRENCY = 64
_MARKER_TTL = "60"
"""Seconds a ledger delete marker lives (long enough for watchers, then gone)."""
_KV_OPERATION = "KV-Operation"
_CLOSE_FLUSH_TIMEOUT_SECONDS = 2
"""How long a member's close waits for the server to confirm its pull request withdrawn."""
_SEEK_GRACE_SECONDS = 2.0
"""How long a member whose consumer vanished waits for it to come back (a seek recreates
it) before it ends as for a deleted group."""
_STALL_MARGIN_SECONDS = 0.2
"""How long before a held delivery's deadline the member counts it as let expire (at most
a quarter of the deadline): JetStream's AckWait started when it sent the message, a bit
before the member's deadline, and a request still waiting then would get the redelivery."""


def consumer_name(group: str) -> str:
    """The durable consumer of a group key. Group names never hold ``=`` and a scope is
    16 hex digits, so this is injective, and the result is a valid consumer name and KV
    key token. Keys of the shared scope keep the names groups had before scopes."""
    scope, name = split_group_key(group)  # raises ValueError for a malformed key
    token = name.replace(".", "=")
    return f"g_{token}" if scope is None else f"c_{scope}_{token}"


def scope_prefix(scope: str | None) -> str:
    """What the consumer names of a scope's groups start with."""
    return "g_" if scope is None else f"c_{scope}_"


def group_of(consumer: str) -> str | None:
    """The group key whose durable consumer this is, or None if it is not a group's."""
    if consumer.startswith("g_"):
        group = consumer[2:].replace("=", ".")
    elif consumer.startswith("c_") and consumer[18:19] == "_":
        group = f"{consumer[2:18]}/{consumer[19:].replace('=', '.')}"
    else:
        return None
    if not GROUP_KEY_RE.match(group):
        return None
    return group if consumer_name(group) == consumer else None


async def group_consumers(conn: NatsConnection, prefix: str = "") -> list[str]:
    """The names of the log's group consumers starting with ``prefix`` (all groups: "")."""
    names: list[str] = []
    offset = 0
    while True:
        reply = await conn.client.request(
            f"$JS.API.CONSUMER.NAMES.{conn.layout.stream}",
            json.dumps({"offset": offset}).encode(),
            timeout=_ACK_TIMEOUT_SECONDS,
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises
        page = [str(n) for n in answer.get("consumers") or ()]
        names.extend(n for n in page if n.startswith(prefix) and group_of(n) is not None)
        offset += len(page)
        if not page or offset >= int(answer.get("total", 0)):
            return names


def filter_to_metadata(flt: Filter) -> str:
    """A group's filter as consumer metadata."""
    return json.dumps({"accounts": sorted(flt.account_ids), "payload_prefix": flt.payload_prefix})


def filter_from_metadata(text: str | None) -> Filter:
    """The filter a group was created with."""
    if not text:
        return Filter()
    data = json.loads(text)
    return Filter(frozenset(data["accounts"]), str(data["payload_prefix"]))


class AckLedger:
    """The delivery ledger: ``<consumer>.<stream seq>`` -> ``<attempt>.<consumer seq>`` of
    the current delivery. The consumer sequence tells a delivery from one of the same
    attempt by an earlier consumer of the group (before a seek recreated it); entries
    written before it was kept hold the attempt only, and match any consumer sequence.

    The bucket is read from its leader, never with direct gets (``NatsConnection.bucket``):
    a member records a delivery just before handing it out and the client may ack it at
    once through another replica, whose direct get a lagging replica of the bucket may
    answer without the entry. The ack was then reported unknown while the member went on
    holding the delivery until its deadline (the replicas' group test after a seek: two
    slots held and dead-lettered by the member itself, which then stalled)."""

    def __init__(self, conn: NatsConnection, bucket: KeyValue) -> None:
        self._conn = conn
        self._bucket = bucket
        self._prefix = f"$KV.{conn.layout.delivery_bucket}."

    def watch_subject(self, consumer: str) -> str:
        """Core NATS subject on which every change to a consumer's entries is seen."""
        return f"{self._prefix}{consumer}.*"

    async def record(self, consumer: str, reply: AckReply) -> None:
        """Note the delivery now being handed out (any earlier one is superseded)."""
        await self._conn.js.publish(
            f"{self._prefix}{consumer}.{reply.stream_seq}",
            f"{reply.delivered}.{reply.consumer_seq}".encode(),
        )

    async def current(self, consumer: str, stream_seq: int) -> tuple[int, int] | None:
        """(attempt, revision) of the current delivery, or None if settled or unknown."""
        found = await self._entry(consumer, stream_seq)
        return None if found is None else (found[0], found[2])

    async def revision_of(self, consumer: str, reply: AckReply) -> int | None:
        """The entry's revision if ``reply`` is the current delivery, else None."""
        found = await self._entry(consumer, reply.stream_seq)
        if found is None or found[0] != reply.delivered:
            return None
        if found[1] is not None and found[1] != reply.consumer_seq:
            return None  # the same attempt, from a consumer of the group since replaced
        return found[2]

    async def _entry(self, consumer: str, stream_seq: int) -> tuple[int, int | None, int] | None:
        try:
            entry = await self._bucket.get(f"{consumer}.{stream_seq}")
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        attempt, _, consumer_seq = entry.value.decode().partition(".")
        return int(attempt), int(consumer_seq) if consumer_seq else None, entry.revision

    async def settle(self, consumer: str, stream_seq: int, revision: int) -> bool:
        """Remove the entry if it is still at ``revision``; False if someone else did."""
        try:
            await self._conn.js.publish(
                f"{self._prefix}{consumer}.{stream_seq}",
                b"",
                headers={
                    _KV_OPERATION: "DEL",
                    api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision),
                    api.Header.MSG_TTL: _MARKER_TTL,
                },
            )
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return False
            raise
        return True


def generation_of(info: api.ConsumerInfo) -> str:
    """The generation of a group's consumer: "0" until a seek first recreated it."""
    return (info.config.metadata or {}).get(GENERATION_METADATA_KEY) or "0"


def split_ack_id(ack_id: str) -> tuple[str, str]:
    """(the delivery's reply tail, the consumer generation it was handed out by)."""
    tail, sep, generation = ack_id.rpartition("~")
    return (tail, generation) if sep else (ack_id, "0")


def reply_subject(stream: str, consumer: str, ack_id: str) -> str:
    """The ``$JS.ACK`` subject an ack id stands for."""
    tail = split_ack_id(ack_id)[0]
    if tail.startswith("$JS.ACK."):
        return tail
    return f"$JS.ACK.{stream}.{consumer}.{tail}"


def ack_id_of(reply: AckReply, generation: str = "0") -> str:
    """The ack id of a delivery: the reply subject without what the group already says, and
    the consumer's generation when a seek recreated it (a delivery of the new consumer can
    have the same attempt and consumer sequence as one of the old)."""
    prefix = f"$JS.ACK.{reply.stream}.{reply.consumer}."
    tail = reply.subject.removeprefix(prefix)
    return tail if generation == "0" else f"{tail}~{generation}"


class ExpiredDeadLetters:
    """Counts the deliveries JetStream dead-letters when their last attempt's ack wait runs
    out, and settles their ledger entries so a late ack of one is unknown (see ack).

    JetStream, not a replica, gives up on such a delivery and says so once, in a
    MAX_DELIVERIES advisory on core NATS. Every replica listens in one queue group, so
    each advisory reaches exactly one of them and is counted there once: summed over the
    replicas the metric equals the dead-letter stream's count, whatever their number. (A
    plain subscription would count it on every replica; counting in the member that held
    the delivery would miss those of closed members and crashed replicas.) An advisory
    sent while no replica is connected is not counted, like any counter of a process that
    is down; ``group_info`` still counts it from the stream.
    """

    QUEUE = "igbutton_dead_letters"

    def __init__(self, conn: NatsConnection, ledger: AckLedger) -> None:
        self._conn = conn
        self._ledger = ledger
        self._sub: NatsSubscription | None = None

    async def open(self) -> None:
        """Start listening."""
        self._sub = await self._conn.client.subscribe(
            self._conn.layout.max_deliveries_subject(), queue=self.QUEUE, cb=self._on_advisory
        )

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            consumer = str(advisory["consumer"])
            stream_seq = int(advisory["stream_seq"])
            deliveries = int(advisory["deliveries"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed MAX_DELIVERIES advisory")
            return
        group = group_of(consumer)
        if group is None:
            return
        try:  # settled first, so once the metric shows it an ack of it is unknown
            current = await self._ledger.current(consumer, stream_seq)
            if current is not None and current[0] == deliveries:
                await self._ledger.settle(consumer, stream_seq, current[1])
        except Exception as exc:  # noqa: BLE001 - the dead letter is reported regardless
            log.warning("cannot settle a dead-lettered delivery in the ledger: %s", exc)
        dead_letters.report(group, (stream_seq,), "its last attempt expired")

    async def close(self) -> None:
        """Stop listening."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


@dataclass(frozen=True)
class AckOutcome:
    """What an ack call did, and which stream sequences it settled."""

    result: AckResult
    settled: frozenset[int]


async def ack_group(
    conn: NatsConnection,
    ledger: AckLedger,
    group: str,
    ack_ids: Sequence[str],
    nack_ids: Sequence[str],
) -> AckOutcome:
    """See PostbackStore.ack."""
    every = (*ack_ids, *nack_ids)
    try:
        consumer = consumer_name(group)
        info = await conn.js.consumer_info(conn.layout.stream, consumer)
    except (ValueError, NotFoundError):
        return AckOutcome(AckResult(0, every), frozenset())
    max_deliver = info.config.max_deliver or 0
    generation = generation_of(info)
    gate = asyncio.Semaphore(_ACK_CONCURRENCY)
    await _announce(conn, consumer, every)

    async def one(ack_id: str, nack: bool) -> int | None:
        if split_ack_id(ack_id)[1] != generation:
            return None  # handed out by the group's consumer before a seek replaced it
        reply = AckReply.parse(reply_subject(conn.layout.stream, consumer, ack_id))
        if reply is None or reply.stream != conn.layout.stream or reply.consumer != consumer:
            return None
        async with gate:
            revision = await ledger.revision_of(consumer, reply)
            if revision is None or not await ledger.settle(consumer, reply.stream_seq, revision):
                return None
            if not nack:
                await conn.client.request(reply.subject, b"+ACK", timeout=_ACK_TIMEOUT_SECONDS)
            elif max_deliver > 0 and reply.delivered >= max_deliver:
                await _dead_letter(conn, consumer, reply, "nacked on the last attempt", nacked=True)
                dead_letters.report(group, (reply.stream_seq,), "nacked on its last attempt")
            else:
                await conn.client.request(reply.subject, b"-NAK", timeout=_ACK_TIMEOUT_SECONDS)
            return reply.stream_seq

    results = await asyncio.gather(
        *(one(a, nack=False) for a in ack_ids), *(one(n, nack=True) for n in nack_ids)
    )
    unknown = tuple(i for i, r in zip(every, results, strict=True) if r is None)
    settled = frozenset(r for r in results if r is not None)
    return AckOutcome(AckResult(len(settled), unknown), settled)


async def _announce(conn: NatsConnection, consumer: str, ids: Sequence[str]) -> None:
    """Tell the members of the group, on every replica, which deliveries an ack call
    names, applied or not (see ``NatsLayout.acks_subject``): a stalled member whose
    expired delivery is acked late hears that it is alive."""
    named = []
    for ack_id in ids:
        reply = AckReply.parse(reply_subject(conn.layout.stream, consumer, ack_id))
        if reply is not None and reply.stream == conn.layout.stream and reply.consumer == consumer:
            named.append(f"{reply.stream_seq}.{reply.delivered}")
    if named:
        await conn.client.publish(conn.layout.acks_subject(consumer), "\n".join(named).encode())


async def _dead_letter(
    conn: NatsConnection, consumer: str, reply: AckReply, reason: str, *, nacked: bool
) -> None:
    """Record igbutton's own dead letter of a delivery (settled in the ledger) and end it."""
    record = {
        "stream": reply.stream,
        "consumer": consumer,
        "stream_seq": reply.stream_seq,
        "deliveries": reply.delivered,
        "reason": reason,
        "kind": "nacked" if nacked else "expired",
    }
    await conn.js.publish(
        conn.layout.nacked_dead_letter_subject(consumer),
        json.dumps(record).encode(),
        headers={api.Header.MSG_ID: f"{consumer}:{reply.stream_seq}:{reply.delivered}"},
    )
    await conn.client.request(reply.subject, b"+TERM", timeout=_ACK_TIMEOUT_SECONDS)


@dataclass
class _Held:
    reply: str
    attempt: int
    deadline: float
    """Monotonic time when this member's ack deadline passes."""
    server_expiry: float
    """When JetStream's AckWait for it runs out, unless told it is still in progress."""


class NatsGroupMember:
    """See PostbackStore.join_group. Build with :meth:`open`."""

    def __init__(
        self,
        conn: NatsConnection,
        ledger: AckLedger,
        group: str,
        flt: Filter,
        options: GroupOptions,
        ack_wait: float,
        on_close: Callable[[NatsGroupMember], None],
        generation: str = "0",
    ) -> None:
        self._conn = conn
        self._generation = generation
        """The generation of the consumer this member pulls from (see ack_id_of)."""
        self._ledger = ledger
        self._on_close = on_close
        self.group = group
        self.consumer = consumer_name(group)
        self._filter = flt
        self._options = options
        self._ack_wait = ack_wait
        self._held: dict[int, _Held] = {}
        """Stream sequence -> delivery handed out and not yet settled or expired."""
        self._to_give_back: list[str] = []
        """Reply subjects of expired deliveries to NAK once the waiting request is withdrawn."""
        self._expired: set[tuple[int, int]] = set()
        """(stream sequence, attempt) of this member's deliveries whose deadline passed
        unacknowledged since an ack or nack last named one of its deliveries: while any
        is, the member is stalled (pulls nothing; see GroupMember)."""
        self._event = asyncio.Event()
        self._inbox = PullInbox(conn.client, conn.layout.stream, self.consumer, self._event.set)
        self._watch: NatsSubscription | None = None
        self._acks: NatsSubscription | None = None
        self._notices: NatsSubscription | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        conn: NatsConnection,
        ledger: AckLedger,
        group: str,
        flt: Filter,
        options: GroupOptions,
        ack_wait: float,
        on_close: Callable[[NatsGroupMember], None],
        generation: str = "0",
    ) -> NatsGroupMember:
        """Start pulling for the group; ``on_close`` is told when the member leaves."""
        member = cls(conn, ledger, group, flt, options, ack_wait, on_close, generation)
        await member._inbox.open()
        member._watch = await conn.client.subscribe(
            ledger.watch_subject(member.consumer), cb=member._on_ledger
        )
        member._acks = await conn.client.subscribe(
            conn.layout.acks_subject(member.consumer), cb=member._on_acks
        )
        member._notices = await conn.client.subscribe(
            conn.layout.group_notice_subject(member.consumer), cb=member._on_notice
        )
        return member

    async def _on_notice(self, msg: Msg) -> None:
        """An operation on the group (see ``NatsLayout.group_notice_subject``)."""
        kind, _, rest = msg.data.partition(b"\n")
        if kind == b"reset":
            # A member that saw its consumer vanish has already read the new one's
            # generation (``_consumer_deleted``) and pulled from it: what its inbox holds
            # and the request it has out are the new consumer's. Dropping them would leave
            # deliveries never handed out nor given back (JetStream waits out their AckWait,
            # and dead-letters a last attempt), and a second request would bring more than
            # its free slots.
            switched = rest.decode() == self._generation
            if rest.isdigit():
                self._generation = rest.decode()
            # Sought: the consumer was made afresh and its ledger entries dropped, so what
            # this member held from the old one is gone. A delivery of the new consumer it
            # may hold already (it pulls again as soon as the consumer is back) is in the
            # ledger under its own consumer sequence: that one is kept.
            self._expired.clear()
            if not switched:
                self._inbox.messages.clear()
                self._inbox.outstanding = 0
            for seq, held in list(self._held.items()):
                reply = AckReply.parse(held.reply)
                current = None
                if reply is not None:
                    with contextlib.suppress(Exception):  # unknown: treat it as gone
                        current = await self._ledger.revision_of(self.consumer, reply)
                if current is None:
                    self._held.pop(seq, None)
        elif kind == b"deadline":
            self._extend(rest)
        self._event.set()

    def _extend(self, lines: bytes) -> None:
        """New deadlines (wall-clock ms) for deliveries, by ModifyAckDeadline: those this
        member holds keep them (JetStream's AckWait is kept running by ``_tend``)."""
        now, wall_ms = time.monotonic(), time.time() * 1000
        for line in lines.split(b"\n"):
            seq, attempt, deadline_ms = (int(t) if t.isdigit() else -1 for t in line.split(b"."))
            held = self._held.get(seq)
            if held is None or held.attempt != attempt:
                continue
            held.deadline = now + (deadline_ms - wall_ms) / 1000
            self._expired.discard((seq, attempt))

    def settle(self, stream_seqs: frozenset[int], *, acked: bool = True) -> None:
        """These deliveries were acked or nacked (``acked``), or handed to another member:
        their slots are free. An ack or nack of one it holds means the member is alive: no
        longer stalled."""
        mine = stream_seqs & self._held.keys()
        for seq in mine:
            del self._held[seq]
        if mine and acked:
            self._expired.clear()
        self._event.set()

    async def _on_ledger(self, msg: Msg) -> None:
        seq_text = msg.subject.rsplit(".", 1)[-1]
        held = self._held.get(int(seq_text)) if seq_text.isdigit() else None
        if held is None:
            return
        operation = (msg.headers or {}).get(_KV_OPERATION)
        if operation in ("DEL", "PURGE"):
            self.settle(frozenset({int(seq_text)}))
        elif (attempt := msg.data.partition(b".")[0]).isdigit() and int(attempt) > held.attempt:
            self.settle(frozenset({int(seq_text)}), acked=False)

    async def _on_acks(self, msg: Msg) -> None:
        if not self._expired:
            return
        for line in msg.data.split(b"\n"):
            seq, _, attempt = line.partition(b".")
            if not (seq.isdigit() and attempt.isdigit()):
                continue
            if (int(seq), int(attempt)) in self._expired:
                # One of its expired deliveries was acked or nacked, maybe too late (an ack
                # of one it holds is heard as it is settled): the member is alive.
                self._expired.clear()
                self._event.set()
                return

    def __aiter__(self) -> NatsGroupMember:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._closed or self._conn.closing:
                raise StopAsyncIteration
            self._event.clear()
            wake_at = await self._tend(time.monotonic())
            if self._expired:
                # Withdraw the waiting request before giving expired deliveries back: a NAK
                # first would have JetStream redeliver into that request, an attempt burnt
                # on this member; and accept nothing while stalled, since a message can
                # arrive while the withdrawal is on its way (seen under load).
                await self._hold_back()
            await self._give_back_expired()
            if not self._expired:
                while self._inbox.messages:
                    delivery = await self._accept(self._inbox.messages.popleft())
                    if delivery is not None:
                        return delivery
            if self._inbox.gone:
                if await self._consumer_deleted():
                    # Deleted by an operator: end; the client rejoins and recreates it.
                    log.warning("consumer of group %s was deleted", self.group)
                    raise StopAsyncIteration
                # Only unreachable for now (its leader moving after a node was lost).
                self._inbox.gone = False
                self._inbox.outstanding = 0
                await wait_event(self._event, HEARTBEAT_SECONDS / 4)
                continue
            self._inbox.check_alive()
            await self._ask()
            timeout = HEARTBEAT_SECONDS
            if wake_at is not None:
                timeout = min(timeout, max(wake_at - time.monotonic(), 0.001))
            await wait_event(self._event, timeout)

    async def _ask(self) -> None:
        """Ask JetStream for as many messages as this member has free slots (none while
        stalled), unless a request is outstanding."""
        free = 0 if self._expired else self._options.max_unacked - len(self._held)
        if self._inbox.outstanding == 0 and free > 0:
            # Like a claim: take what is there now, up to the free slots; when nothing
            # is, wait for the next one only. A member never holds a request for more
            # than it is about to hand out, so postbacks go to members that ask.
            if self._inbox.exhausted:
                await self._inbox.pull(1)
            else:
                await self._inbox.pull(free, wait=False)

    async def _hold_back(self) -> None:
        """Stalled: withdraw the waiting request (else JetStream hands it the next
        delivery, an attempt burnt on a member that may be hung) and give back at once
        what came before the withdrawal."""
        if self._inbox.outstanding:
            await self._inbox.withdraw()
        while self._inbox.messages:
            msg = self._inbox.messages.popleft()
            if msg.reply:
                await self._conn.client.publish(msg.reply, b"-NAK")

    async def _accept(self, msg: Msg) -> Delivery | None:
        reply = AckReply.parse(msg.reply or "")
        if reply is None:
            return None
        postback = decode(msg, reply)
        client = self._conn.client
        if not self._filter.matches(postback):
            await client.publish(reply.subject, b"+ACK")  # not this group's: done with it
            return None
        if not await self._record(reply):
            # Not handed out: let another member (or this one) have it again at once.
            await client.publish(reply.subject, b"-NAK")
            return None
        now = time.monotonic()
        self._held[reply.stream_seq] = _Held(
            reply=reply.subject,
            attempt=reply.delivered,
            deadline=now + self._options.ack_deadline,
            server_expiry=now + self._ack_wait,
        )
        if reply.delivered > 1:
            metrics.REDELIVERIES.labels(group=self.group).inc()
        return Delivery(postback, ack_id_of(reply, self._generation), reply.delivered)

    async def _consumer_deleted(self) -> bool:
        conn = self._conn
        # A seek deletes the consumer and creates it again at once: only a consumer still
        # missing a moment later was deleted for good.
        give_up = time.monotonic() + _SEEK_GRACE_SECONDS
        while True:
            try:
                info = await conn.js.consumer_info(conn.layout.stream, self.consumer)
            except NotFoundError:
                if self._closed or time.monotonic() >= give_up:
                    return True
                await asyncio.sleep(0.05)  # a bounded retry, not a synchronisation
                continue
            except Exception as exc:  # noqa: BLE001 - any other failure: not known to be deleted
                log.info("group %s consumer unreachable: %s", self.group, exc)
            else:
                self._generation = generation_of(info)  # a seek may have made it anew
            return False

    async def _record(self, reply: AckReply) -> bool:
        """Note the delivery in the ledger, retrying while NATS elects a leader (a node
        went away) for up to half the group's AckWait."""
        give_up = time.monotonic() + max(self._ack_wait / 2, 1.0)
        delay = 0.1
        while True:
            try:
                await self._ledger.record(self.consumer, reply)
                return True
            except Exception as exc:  # noqa: BLE001 - whatever failed, retry, then give it back
                if self._closed or time.monotonic() + delay > give_up:
                    log.warning("cannot record a delivery (%s); it goes back to the group", exc)
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _tend(self, now: float) -> float | None:
        """Free the slots of expired deliveries, and make JetStream's timer follow this
        member's own deadline where it differs from the group's AckWait. Returns when to
        look again."""
        client = self._conn.client
        wait = self._ack_wait
        wake_at: float | None = None
        margin = min(_STALL_MARGIN_SECONDS, self._options.ack_deadline / 4)
        for seq, held in list(self._held.items()):
            if now >= held.deadline - margin:
                self._expired.add((seq, held.attempt))  # stalled: pull no more
                if held.attempt >= self._options.max_attempts:
                    del self._held[seq]
                    await self._dead_letter_expired(seq, held)
                    continue
            if now >= held.deadline:
                del self._held[seq]
                # A deadline before the group's AckWait (a shorter ack_deadline, or one
                # ModifyAckDeadline shortened): redeliver now rather than at AckWait. Not
                # within the margin of AckWait, whose timer started a little earlier: a
                # NAK after JetStream redelivered would apply to the redelivery.
                if held.deadline < held.server_expiry - _STALL_MARGIN_SECONDS:
                    self._to_give_back.append(held.reply)
                continue
            due = held.deadline if (seq, held.attempt) in self._expired else held.deadline - margin
            if held.server_expiry < held.deadline:  # this member allows longer than AckWait
                touch_at = min(held.server_expiry - wait / 2, held.deadline - wait)
                if now >= touch_at:
                    await client.publish(held.reply, b"+WPI")  # restarts JetStream's AckWait
                    held.server_expiry = now + wait
                    touch_at = min(held.server_expiry - wait / 2, held.deadline - wait)
                if held.server_expiry < held.deadline:
                    due = min(due, max(touch_at, now))
            wake_at = due if wake_at is None else min(wake_at, due)
        return wake_at

    async def _give_back_expired(self) -> None:
        """NAK the deliveries ``_tend`` found past this member's deadline (after
        ``_hold_back`` when it is stalled), so the group redelivers them now."""
        replies, self._to_give_back = self._to_give_back, []
        for reply in replies:
            await self._conn.client.publish(reply, b"-NAK")

    async def _dead_letter_expired(self, seq: int, held: _Held) -> None:
        """Dead-letter a last attempt this member let expire. JetStream would do so only
        when it next finds a pull request waiting, and a stalled member sends none; done
        just before the deadline (the margin), so JetStream's own timer has not run out.
        The ledger's compare-and-set decides between this and a racing ack."""
        reply = AckReply.parse(held.reply)
        if reply is None:
            return
        try:
            revision = await self._ledger.revision_of(self.consumer, reply)
            if revision is None or not await self._ledger.settle(self.consumer, seq, revision):
                return
            await _dead_letter(
                self._conn, self.consumer, reply, "its last attempt expired", nacked=False
            )
        except Exception as exc:  # noqa: BLE001 - JetStream dead-letters it later instead
            log.warning("cannot dead-letter an expired last attempt: %s", exc)
            return
        dead_letters.report(self.group, (seq,), "its last attempt expired")

    async def close(self) -> None:
        """See GroupMember.close."""
        if self._closed:
            return
        self._closed = True
        self._event.set()
        self._on_close(self)
        # Unsubscribing withdraws the outstanding pull requests (the server checks interest
        # before it delivers); the flush below makes sure the server has seen it.
        await self._inbox.close()
        for sub in (self._watch, self._acks, self._notices):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        unhanded = list(self._inbox.messages)
        self._inbox.messages.clear()
        if not self._conn.closing:
            for msg in unhanded:  # received but never handed out: let another member have it
                if msg.reply:
                    with contextlib.suppress(Exception):
                        await self._conn.client.publish(msg.reply, b"-NAK")
            # Return only once the server has seen the unsubscribe: until then JetStream may
            # still hand the waiting request a postback appended after close returned, an
            # attempt burnt on an inbox nobody reads (with max attempts, maybe its last).
            try:
                await self._conn.client.flush(_CLOSE_FLUSH_TIMEOUT_SECONDS)
            except Exception:  # disconnected (the server dropped its interest) or slow
                log.debug("flush on leaving group %s failed", self.group, exc_info=True)
