"""The GroupOperations contract (storage/groups.py), run on every engine.

Like test_store_contract, these use only the engine-neutral interfaces and open stores
through ``open_storage``; every member of a group uses the same ack deadline and max
attempts. The numbers GetGroup shows are checked against the traffic the test made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from igbutton_server.storage.backends import Storage, open_storage
from igbutton_server.storage.groups import (
    DeadLetterReason,
    GroupHasMembers,
    GroupNotFound,
)
from igbutton_server.storage.postbacks import (
    Delivery,
    Filter,
    GroupOptions,
    NewPostback,
    Start,
    StoredPostback,
    caller_scope,
    group_key,
)
from tests.conftest import SettingsFactory
from tests.postbacks.conftest import WAIT, eventually

T = TypeVar("T")


@pytest.fixture
async def storage(engine_settings: SettingsFactory) -> AsyncIterator[Storage]:
    """The engine's stores, closed after the test."""
    opened = await open_storage(engine_settings())
    try:
        yield opened
    finally:
        await opened.close()


def new(i: int, *, account: str = "acct-1") -> NewPostback:
    return NewPostback(account, "sender-1", f"m{i}", "Buy", f"P{i}", 1_700_000_000_000 + i, "{}")


def options(
    ack_deadline: float = 30.0, max_unacked: int = 100, max_attempts: int = 5
) -> GroupOptions:
    return GroupOptions(
        ack_deadline=ack_deadline, max_unacked=max_unacked, max_attempts=max_attempts
    )


async def next_of(source: AsyncIterator[T], within: float = WAIT) -> T:
    return await asyncio.wait_for(anext(source), within)


async def take(source: AsyncIterator[T], count: int) -> list[T]:
    return [await next_of(source) for _ in range(count)]


async def logged(storage: Storage, count: int) -> list[StoredPostback]:
    """The first ``count`` postbacks of the log (with their sequences and times)."""
    sub = await storage.postbacks.subscribe(Filter(), Start.earliest())
    try:
        return await take(sub, count)
    finally:
        await sub.close()


async def test_list_and_get_reflect_the_traffic(storage: Storage) -> None:
    store, groups = storage.postbacks, storage.groups
    await store.append([new(i) for i in range(5)] + [new(9, account="acct-2")])
    log = await logged(storage, 6)
    flt = Filter(frozenset({"acct-1"}))
    member = await store.join_group(
        "g", flt, Start.earliest(), options(max_unacked=3, max_attempts=4)
    )
    first = await take(member, 3)
    assert [d.postback.mid for d in first] == ["m0", "m1", "m2"]
    await store.ack("g", [], [first[1].ack_id])
    again = await next_of(member)  # its one free slot: the nacked one, before anything new
    assert (again.postback.mid, again.attempt) == ("m1", 2)
    await store.ack("g", [first[0].ack_id], [])
    other_scope = group_key(caller_scope("other"), "g")
    other = await store.join_group(other_scope, Filter(), Start.latest(), options())

    details = await groups.get_group("g")
    assert details.key == "g"
    assert details.filter == flt
    assert details.start == Start.earliest()
    assert (details.ack_deadline, details.max_attempts) == (30.0, 4)
    assert details.members == 1
    assert details.position == log[2].sequence  # m2, the last one handed out
    assert details.backlog == 2  # m3 and m4 (acct-2's postback is not the group's)
    assert (details.unacked, details.redelivered, details.dead_lettered) == (2, 1, 0)
    assert details.oldest_unacked_ms == log[1].received_ms  # m1, nacked and held again

    listed = await groups.list_groups()
    assert [d.key for d in listed] == sorted(["g", other_scope])
    assert next(d for d in listed if d.key == "g") == details
    fresh = next(d for d in listed if d.key == other_scope)
    assert (fresh.start, fresh.backlog, fresh.unacked, fresh.oldest_unacked_ms) == (
        Start.latest(),
        0,
        0,
        None,
    )
    await member.close()
    await other.close()


async def test_delete_refuses_while_members_are_connected_unless_forced(
    storage: Storage,
) -> None:
    store, groups = storage.postbacks, storage.groups
    member = await store.join_group("g", Filter(), Start.latest(), options())
    waiting = asyncio.create_task(next_of(member))

    async def connected() -> bool:
        return (await groups.get_group("g")).members == 1

    await eventually(connected)
    with pytest.raises(GroupHasMembers) as refused:
        await groups.remove_group("g")
    assert refused.value.members == 1
    assert (await groups.get_group("g")).members == 1  # still there
    await groups.remove_group("g", force=True)
    with pytest.raises(StopAsyncIteration):
        await waiting  # the member ended
    with pytest.raises(GroupNotFound):
        await groups.get_group("g")
    # Without members no force is needed.
    idle = await store.join_group("h", Filter(), Start.latest(), options())
    await idle.close()

    async def left() -> bool:
        return (await groups.get_group("h")).members == 0

    await eventually(left)
    await groups.remove_group("h")
    assert [d.key for d in await groups.list_groups()] == []
    with pytest.raises(GroupNotFound):
        await groups.remove_group("h")


async def test_seek_to_a_sequence_and_to_a_time_delivers_exactly_what_follows(
    storage: Storage,
) -> None:
    store, groups = storage.postbacks, storage.groups
    member = await store.join_group("g", Filter(), Start.earliest(), options())
    for i in range(6):  # one append each, so the receive times can differ
        await store.append([new(i)])
    log = await logged(storage, 6)
    first = await take(member, 6)
    await store.ack("g", [d.ack_id for d in first[:5]], [])
    held = first[5]  # unacknowledged when the group is sought

    await groups.seek_group("g", Start.after(log[2].sequence))
    again = await take(member, 3)
    assert [(d.postback.mid, d.attempt) for d in again] == [("m3", 1), ("m4", 1), ("m5", 1)]
    assert [d.postback.sequence for d in again] == [p.sequence for p in log[3:]]
    stale = await store.ack("g", [held.ack_id], [])
    assert stale.unknown == (held.ack_id,)  # what was held before the seek is gone
    await store.ack("g", [d.ack_id for d in again], [])
    await store.append([new(6)])
    assert (await next_of(member)).postback.mid == "m6"  # nothing else came back first

    since = log[4].received_ms
    expected = [p.mid for p in log if p.received_ms >= since] + ["m6"]
    await groups.seek_group("g", Start.since(since))
    by_time = await take(member, len(expected))
    assert [(d.postback.mid, d.attempt) for d in by_time] == [(m, 1) for m in expected]
    await store.ack("g", [d.ack_id for d in by_time], [])
    details = await groups.get_group("g")
    assert (details.unacked, details.backlog) == (0, 0)
    await member.close()


async def test_dead_letters_by_expiry_and_by_nack_are_listed_and_redriven(
    storage: Storage,
) -> None:
    store, groups = storage.postbacks, storage.groups
    opts = options(ack_deadline=0.3, max_attempts=2)
    # m1: both attempts expire, each with a member that then leaves.
    for _ in range(2):
        member = await store.join_group("g", Filter(), Start.latest(), opts)
        if _ == 0:
            await store.append([new(1)])
        assert (await next_of(member)).postback.mid == "m1"
        await member.close()
    member = await store.join_group("g", Filter(), Start.latest(), opts)
    # m2: nacked on both attempts.
    await store.append([new(2)])
    for attempt in (1, 2):
        delivery = await next_of(member)
        assert (delivery.postback.mid, delivery.attempt) == ("m2", attempt)
        await store.ack("g", [], [delivery.ack_id])
    log = await logged(storage, 2)

    async def two_dead() -> bool:
        return (await groups.get_group("g")).dead_lettered == 2

    looking = asyncio.create_task(next_of(member))  # m1 is dead-lettered as members look
    await eventually(two_dead)
    looking.cancel()
    await asyncio.gather(looking, return_exceptions=True)

    page = await groups.list_dead_letters("g")
    assert page.next_after is None
    assert [
        (d.postback.sequence, d.postback.mid, d.reason, d.attempts) for d in page.dead_letters
    ] == [
        (log[0].sequence, "m1", DeadLetterReason.EXPIRED, 2),
        (log[1].sequence, "m2", DeadLetterReason.NACKED, 2),
    ]
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < d.dead_ms <= now_ms + 1000 for d in page.dead_letters)
    assert page.dead_letters[1].postback == log[1]
    first_page = await groups.list_dead_letters("g", limit=1)
    assert [d.postback.mid for d in first_page.dead_letters] == ["m1"]
    assert first_page.next_after == log[0].sequence
    second_page = await groups.list_dead_letters("g", after=log[0].sequence, limit=1)
    assert ([d.postback.mid for d in second_page.dead_letters], second_page.next_after) == (
        ["m2"],
        None,
    )

    redriven_before = _redriven("g")
    assert await groups.redrive_dead_letters("g", [log[0].sequence, 999_999]) == 1
    assert _redriven("g") - redriven_before == 1
    redriven = await next_of(member)
    assert (redriven.postback, redriven.attempt) == (log[0], 1)
    remaining = await groups.list_dead_letters("g")
    assert [d.postback.mid for d in remaining.dead_letters] == ["m2"]
    assert await groups.redrive_dead_letters("g", None) == 1
    assert _redriven("g") - redriven_before == 2
    other = await next_of(member)
    assert (other.postback, other.attempt) == (log[1], 1)
    done = await store.ack("g", [redriven.ack_id, other.ack_id], [])
    assert (done.applied, done.unknown) == (2, ())
    assert (await groups.list_dead_letters("g")).dead_letters == []
    assert (await groups.get_group("g")).dead_lettered == 0
    # A redriven postback is delivered once more, not to broadcast readers again.
    assert [p.mid for p in await logged(storage, 2)] == ["m1", "m2"]
    # A group made again under the name starts clean: the log once, no redriven copies.
    await groups.remove_group("g", force=True)
    anew = await store.join_group("g", Filter(), Start.earliest(), options())
    await store.append([new(3)])
    assert [d.postback.mid for d in await take(anew, 3)] == ["m1", "m2", "m3"]
    await anew.close()


def _redriven(group: str) -> float:
    """The process-global redrive counter of ``group`` (0 before its first increment)."""
    value = REGISTRY.get_sample_value(
        "igbutton_postbacks_dead_letters_redriven_total", {"group": group}
    )
    return value or 0.0


async def test_purge_empties_the_dead_letters(storage: Storage) -> None:
    store, groups = storage.postbacks, storage.groups
    member = await store.join_group("g", Filter(), Start.latest(), options(max_attempts=1))
    await store.append([new(1), new(2)])
    for delivery in await take(member, 2):
        await store.ack("g", [], [delivery.ack_id])  # the last attempt: dead-lettered
    assert len((await groups.list_dead_letters("g")).dead_letters) == 2
    assert await groups.purge_dead_letters("g") == 2
    assert (await groups.list_dead_letters("g")).dead_letters == []
    assert (await groups.get_group("g")).dead_lettered == 0
    assert await groups.redrive_dead_letters("g", None) == 0
    await member.close()


async def test_modify_ack_deadline_extends_shortens_and_zero_nacks(storage: Storage) -> None:
    store, groups = storage.postbacks, storage.groups
    opts = options(ack_deadline=1.0, max_unacked=1)
    slow = await store.join_group("g", Filter(), Start.latest(), opts)
    await store.append([new(1)])
    held = await next_of(slow)
    # A connected member keeps looking for work (as every gRPC stream does): on JetStream
    # that is when it keeps the group's AckWait running for what it holds.
    busy = asyncio.create_task(next_of(slow))
    extended = await groups.modify_ack_deadline("g", [held.ack_id, "nonsense"], 5.0)
    assert (extended.applied, extended.unknown) == (1, ("nonsense",))
    live = await store.join_group("g", Filter(), Start.latest(), opts)
    looking = asyncio.create_task(next_of(live))
    # Past the original deadline (time itself is what is tested here), then a new postback:
    # the live member gets it, not m1, which is still the slow member's.
    await asyncio.sleep(1.5)
    await store.append([new(2)])
    assert (await looking).postback.mid == "m2"
    acked = await store.ack("g", [held.ack_id], [])
    assert (acked.applied, acked.unknown) == (1, ())
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)

    # Shortened: back to the group well before its 60 s deadline, to the other member.
    long = options(ack_deadline=60, max_unacked=1)
    holder = await store.join_group("s", Filter(), Start.latest(), long)
    await store.append([new(3)])
    taken: Delivery = await next_of(holder)
    assert taken.postback.mid == "m3"
    busy = asyncio.create_task(next_of(holder))  # connected, and stalled once m3 expires
    other = await store.join_group("s", Filter(), Start.latest(), long)
    assert (await groups.modify_ack_deadline("s", [taken.ack_id], 0.5)).applied == 1
    back = await next_of(other, 10)
    assert (back.postback.mid, back.attempt) == ("m3", 2)
    await store.ack("s", [back.ack_id], [])
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)

    # 0: a nack, delivered again at once.
    fresh = await store.join_group("z", Filter(), Start.latest(), options(ack_deadline=60))
    await store.append([new(4)])
    first = await next_of(fresh)
    assert (await groups.modify_ack_deadline("z", [first.ack_id], 0)).applied == 1
    again = await next_of(fresh, 5)
    assert (again.postback.mid, again.attempt) == ("m4", 2)
    for member in (slow, live, holder, other, fresh):
        await member.close()


async def test_operations_on_a_group_that_does_not_exist(storage: Storage) -> None:
    groups = storage.groups
    for call in (
        groups.get_group("nope"),
        groups.seek_group("nope", Start.earliest()),
        groups.list_dead_letters("nope"),
        groups.redrive_dead_letters("nope", None),
        groups.purge_dead_letters("nope"),
        groups.modify_ack_deadline("nope", ["x"], 10),
    ):
        with pytest.raises(GroupNotFound):
            await call


async def test_an_ack_id_from_before_a_seek_never_acks_what_the_seek_delivers(
    storage: Storage,
) -> None:
    store, groups = storage.postbacks, storage.groups
    member = await store.join_group("g", Filter(), Start.earliest(), options())
    await store.append([new(1)])
    before = await next_of(member)
    # Sought back over it: the same postback, the same attempt number, and on JetStream the
    # same consumer sequence, as the delivery the member still holds.
    await groups.seek_group("g", Start.after(before.postback.sequence - 1))
    after = await next_of(member)
    assert (after.postback.mid, after.attempt) == ("m1", 1)
    assert after.ack_id != before.ack_id
    stale = await store.ack("g", [before.ack_id], [])
    assert (stale.applied, stale.unknown) == (0, (before.ack_id,))
    assert (await groups.modify_ack_deadline("g", [before.ack_id], 5)).applied == 0
    done = await store.ack("g", [after.ack_id], [])
    assert (done.applied, done.unknown) == (1, ())
    await member.close()
