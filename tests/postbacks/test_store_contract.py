"""The PostbackStore contract, run on every engine (the ``engine`` fixture's params).

These tests use only the interface in igbutton_server/storage/postbacks.py and open stores
through ``open_storage``, so every engine passes one suite. Deadlines here are short
(fractions of a second): the store accepts any; the gRPC API enforces its 1 s minimum. All
members of one group use the same ack deadline and max attempts (see GroupOptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from igbutton_server.storage.backends import Storage, open_storage
from igbutton_server.storage.postbacks import (
    Delivery,
    Filter,
    GroupFilterMismatch,
    GroupOptions,
    NewPostback,
    PostbackStore,
    Start,
    StoreClosed,
    StoredPostback,
    TooManyGroups,
    caller_scope,
    group_key,
)
from tests.conftest import SettingsFactory
from tests.postbacks.conftest import WAIT, eventually

T = TypeVar("T")
Reopen = Callable[[], Awaitable[PostbackStore]]


@pytest.fixture
async def reopen(engine_settings: SettingsFactory) -> AsyncIterator[Reopen]:
    """Opens the engine on the same underlying data each time (a restart)."""
    settings = engine_settings()
    opened: list[Storage] = []

    async def open_store() -> PostbackStore:
        storage = await open_storage(settings)
        opened.append(storage)
        return storage.postbacks

    yield open_store
    for storage in opened:
        await storage.close()


@pytest.fixture
async def store(reopen: Reopen) -> PostbackStore:
    """A fresh store."""
    return await reopen()


def new(i: int, *, account: str = "acct-1", payload: str | None = None) -> NewPostback:
    """A postback with mid ``m<i>`` and payload ``P<i>`` unless given."""
    return NewPostback(
        account_id=account,
        sender_id="sender-1",
        mid=f"m{i}",
        title="Buy",
        payload=f"P{i}" if payload is None else payload,
        tap_time_ms=1_700_000_000_000 + i,
        raw_json=f'{{"i": {i}}}',
    )


async def next_of(source: AsyncIterator[T], within: float = WAIT) -> T:
    """The next item, failing after ``within`` seconds."""
    return await asyncio.wait_for(anext(source), within)


async def take(source: AsyncIterator[T], count: int) -> list[T]:
    """The next ``count`` items."""
    return [await next_of(source) for _ in range(count)]


def mids(items: list[StoredPostback]) -> list[str]:
    return [p.mid for p in items]


def options(
    ack_deadline: float = 30.0, max_unacked: int = 100, max_attempts: int = 5
) -> GroupOptions:
    return GroupOptions(
        ack_deadline=ack_deadline, max_unacked=max_unacked, max_attempts=max_attempts
    )


# --- the log ---


async def test_the_standby_mark_is_kept_live_from_the_log_and_after_a_restart(
    reopen: Reopen,
) -> None:
    store = await reopen()
    live = await store.subscribe(Filter(), Start.latest())
    standby = dataclasses.replace(new(2), standby=True)
    await store.append([new(1), standby])
    assert [(p.mid, p.standby) for p in await take(live, 2)] == [("m1", False), ("m2", True)]
    await live.close()
    again = await (await reopen()).subscribe(Filter(), Start.earliest())
    assert [(p.mid, p.standby) for p in await take(again, 2)] == [("m1", False), ("m2", True)]
    await again.close()


async def test_append_stores_each_postback_once(store: PostbackStore) -> None:
    first = await store.append([new(1), new(2), new(1)])
    assert (first.stored, first.duplicates) == (2, 1)
    again = await store.append([new(2), new(3)])
    assert (again.stored, again.duplicates) == (1, 1)
    # The same mid for another account is another postback.
    other = await store.append([new(1, account="acct-2")])
    assert other.stored == 1

    sub = await store.subscribe(Filter(), Start.earliest())
    got = await take(sub, 4)
    assert [(p.account_id, p.mid) for p in got] == [
        ("acct-1", "m1"),
        ("acct-1", "m2"),
        ("acct-1", "m3"),
        ("acct-2", "m1"),
    ]
    assert [p.sequence for p in got] == sorted({p.sequence for p in got})
    assert got[0].payload == "P1"
    assert got[0].tap_time_ms == 1_700_000_000_001
    assert got[0].raw_json == '{"i": 1}'
    assert abs(got[0].received_ms - time.time() * 1000) < 60_000


async def test_broadcast_subscribers_see_every_postback_in_order(store: PostbackStore) -> None:
    subs = [await store.subscribe(Filter(), Start.latest()) for _ in range(3)]
    await asyncio.gather(*(store.append([new(i)]) for i in range(20)))
    await store.append([new(i) for i in range(20, 30)])
    seen = [await take(sub, 30) for sub in subs]
    for got in seen:
        assert [p.sequence for p in got] == sorted(p.sequence for p in got)
        assert sorted(mids(got)) == sorted(f"m{i}" for i in range(30))
    assert seen[0] == seen[1] == seen[2]


async def test_latest_starts_after_what_is_stored(store: PostbackStore) -> None:
    await store.append([new(1)])
    sub = await store.subscribe(Filter(), Start.latest())
    await store.append([new(2)])
    assert (await next_of(sub)).mid == "m2"


async def test_start_positions(store: PostbackStore) -> None:
    await store.append([new(i) for i in range(5)])
    everything = await take(await store.subscribe(Filter(), Start.earliest()), 5)
    assert mids(everything) == [f"m{i}" for i in range(5)]

    after = await store.subscribe(Filter(), Start.after(everything[2].sequence))
    assert mids(await take(after, 2)) == ["m3", "m4"]
    after_seq = everything[-1].sequence

    await store.append([new(5)])
    everything += [await next_of(await store.subscribe(Filter(), Start.after(after_seq)))]
    cutoff = everything[-1].received_ms
    # The first postback received at or after the cutoff, and all after it.
    first = next(i for i, p in enumerate(everything) if p.received_ms >= cutoff)
    since = await store.subscribe(Filter(), Start.since(cutoff))
    assert mids(await take(since, 6 - first)) == mids(everything[first:])
    since_start = await store.subscribe(Filter(), Start.since(0))
    assert mids(await take(since_start, 6)) == [f"m{i}" for i in range(6)]


async def test_resume_after_the_last_sequence_has_no_gap_and_no_duplicate(
    store: PostbackStore,
) -> None:
    sub = await store.subscribe(Filter(), Start.earliest())
    await store.append([new(i) for i in range(10)])
    first = await take(sub, 4)
    await sub.close()
    await store.append([new(i) for i in range(10, 15)])  # while disconnected
    resumed = await store.subscribe(Filter(), Start.after(first[-1].sequence))
    rest = await take(resumed, 11)
    assert mids(first + rest) == [f"m{i}" for i in range(15)]


async def test_filters_by_account_and_payload_prefix(store: PostbackStore) -> None:
    by_account = await store.subscribe(Filter(account_ids=frozenset({"acct-2"})), Start.latest())
    by_prefix = await store.subscribe(Filter(payload_prefix="ORDER:"), Start.latest())
    both = await store.subscribe(
        Filter(account_ids=frozenset({"acct-1"}), payload_prefix="ORDER:"), Start.latest()
    )
    await store.append(
        [
            new(1, account="acct-1", payload="ORDER:1"),
            new(2, account="acct-2", payload="ORDER:2"),
            new(3, account="acct-2", payload="HELP"),
            new(4, account="acct-1", payload="HELP"),
            new(5, account="acct-1", payload="ORDER:5"),
        ]
    )
    assert mids(await take(by_account, 2)) == ["m2", "m3"]
    assert mids(await take(by_prefix, 3)) == ["m1", "m2", "m5"]
    assert mids(await take(both, 2)) == ["m1", "m5"]


async def test_a_waiting_subscriber_wakes_on_append(store: PostbackStore) -> None:
    sub = await store.subscribe(Filter(), Start.latest())
    waiting = asyncio.create_task(next_of(sub))
    await asyncio.sleep(0)  # let it start waiting (not needed for correctness)
    await store.append([new(1)])
    assert (await waiting).mid == "m1"


async def test_prune_removes_old_postbacks_and_never_reuses_sequences(
    store: PostbackStore,
) -> None:
    await store.append([new(i) for i in range(3)])
    before = await take(await store.subscribe(Filter(), Start.earliest()), 3)
    removed = await store.prune(int(time.time() * 1000) + 1000)
    assert removed in (0, 3)  # engines with native expiry may do nothing here
    if removed:
        await store.append([new(9)])
        sub = await store.subscribe(Filter(), Start.earliest())
        first = await next_of(sub)
        assert first.mid == "m9"
        assert first.sequence > before[-1].sequence


async def test_close_ends_subscriptions_and_refuses_calls(reopen: Reopen) -> None:
    store = await reopen()
    sub = await store.subscribe(Filter(), Start.latest())
    member = await store.join_group("g", Filter(), Start.latest(), options())
    waiting = [asyncio.create_task(next_of(sub)), asyncio.create_task(next_of(member))]
    await store.close()
    for task in waiting:
        with pytest.raises(StopAsyncIteration):
            await task
    with pytest.raises(StoreClosed):
        await store.append([new(1)])


# --- consumer groups ---


async def test_group_members_divide_the_postbacks(store: PostbackStore) -> None:
    members = [
        await store.join_group("g", Filter(), Start.latest(), options(max_unacked=2))
        for _ in range(3)
    ]
    await store.append([new(i) for i in range(30)])
    received: list[list[Delivery]] = [[] for _ in members]

    async def work(index: int) -> None:
        member = members[index]
        while sum(len(r) for r in received) < 30:
            try:
                delivery = await next_of(member, 0.5)
            except TimeoutError:
                continue
            received[index].append(delivery)
            await store.ack("g", [delivery.ack_id], [])

    await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(3))), WAIT)
    everything = [d.postback.mid for r in received for d in r]
    assert sorted(everything) == sorted(f"m{i}" for i in range(30))  # each exactly once
    assert all(received), "every member got a share"
    assert all(d.attempt == 1 for r in received for d in r)
    info = await store.group_info("g")
    assert info is not None
    assert info.unacked == 0


async def test_unacked_delivery_is_redelivered_after_its_deadline(store: PostbackStore) -> None:
    member = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.3))
    await store.append([new(1)])
    first = await next_of(member)
    assert first.attempt == 1
    # Nobody acked: back after 0.3 s, to another member (the first one is stalled).
    other = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.3))
    again = await next_of(other)
    assert (again.postback.mid, again.attempt) == ("m1", 2)
    assert again.ack_id != first.ack_id
    stale = await store.ack("g", [first.ack_id], [])
    assert stale.unknown == (first.ack_id,)
    done = await store.ack("g", [again.ack_id], [])
    assert (done.applied, done.unknown) == (1, ())


async def test_a_closed_members_deliveries_go_to_another_member(store: PostbackStore) -> None:
    doomed = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.3))
    await store.append([new(1), new(2)])
    taken = await take(doomed, 2)
    await doomed.close()
    survivor = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.3))
    redelivered = await take(survivor, 2)
    assert sorted(d.postback.mid for d in redelivered) == ["m1", "m2"]
    assert all(d.attempt == 2 for d in redelivered)
    assert {d.ack_id for d in redelivered}.isdisjoint(d.ack_id for d in taken)


async def test_nack_redelivers_at_once(store: PostbackStore) -> None:
    member = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=60))
    await store.append([new(1)])
    first = await next_of(member)
    result = await store.ack("g", [], [first.ack_id])
    assert result.applied == 1
    again = await next_of(member, 5)  # far sooner than the 60 s deadline
    assert (again.postback.mid, again.attempt) == ("m1", 2)


def dead_letter_lines(caplog: pytest.LogCaptureFixture, group: str) -> list[tuple[int, str]]:
    """(sequence, reason) of each dead-letter line logged for ``group``."""
    return [
        (r.__dict__["sequence"], r.__dict__["reason"])
        for r in caplog.records
        if r.name == "igbutton_server.storage.dead_letters" and r.__dict__.get("group") == group
    ]


async def test_dead_letter_after_max_attempts(
    store: PostbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    opts = options(ack_deadline=0.2, max_attempts=3)
    await store.append([new(1)])
    attempts: list[Delivery] = []
    for _ in range(3):  # each attempt to a client that reconnects after letting it expire
        member = await store.join_group("g", Filter(), Start.earliest(), opts)
        attempts.append(await next_of(member))
        await member.close()
    assert [d.attempt for d in attempts] == [1, 2, 3]
    member = await store.join_group("g", Filter(), Start.earliest(), opts)
    await store.append([new(2)])
    after = await next_of(member)  # m1 is not delivered a fourth time
    assert (after.postback.mid, after.attempt) == ("m2", 1)
    await store.ack("g", [after.ack_id], [])

    async def dead_lettered() -> bool:
        info = await store.group_info("g")
        return info is not None and info.dead_lettered == 1 and bool(dead_letter_lines(caplog, "g"))

    # Dead-lettering happens when a member looks for work after m1's last deadline.
    looking = asyncio.create_task(next_of(member))
    await eventually(dead_lettered)
    looking.cancel()
    await asyncio.gather(looking, return_exceptions=True)
    # The line names the postback, so an operator can read it again from the log.
    sequence = attempts[0].postback.sequence
    assert dead_letter_lines(caplog, "g") == [(sequence, "its last attempt expired")]
    again = await store.subscribe(Filter(), Start.after(sequence - 1))
    assert (await take(again, 1))[0].mid == "m1"


async def test_nack_on_the_last_attempt_dead_letters(
    store: PostbackStore, caplog: pytest.LogCaptureFixture
) -> None:
    member = await store.join_group("g", Filter(), Start.latest(), options(max_attempts=2))
    await store.append([new(1)])
    first = await next_of(member)
    await store.ack("g", [], [first.ack_id])
    second = await next_of(member)
    assert second.attempt == 2
    await store.ack("g", [], [second.ack_id])
    info = await store.group_info("g")
    assert info is not None
    assert (info.dead_lettered, info.unacked) == (1, 0)
    assert dead_letter_lines(caplog, "g") == [
        (first.postback.sequence, "nacked on its last attempt")
    ]
    await store.append([new(2)])
    assert (await next_of(member)).postback.mid == "m2"


def dead_letter_metric(group: str) -> float:
    """The process-global dead-letter counter of ``group`` (0 before its first increment)."""
    value = REGISTRY.get_sample_value("igbutton_postbacks_dead_lettered_total", {"group": group})
    return value or 0.0


async def test_every_dead_letter_is_counted_once_in_the_metric(store: PostbackStore) -> None:
    # The registry is process-global: a group name of its own, and before/after values.
    group = f"dlq-{uuid.uuid4().hex[:8]}"
    before = dead_letter_metric(group)
    opts = options(ack_deadline=0.2, max_attempts=2)
    member = await store.join_group(group, Filter(), Start.latest(), opts)
    await store.append([new(1), new(2)])
    expired = await take(member, 2)  # never acked: the member is stalled, and reconnects
    for _ in range(2):
        await member.close()
        member = await store.join_group(group, Filter(), Start.latest(), opts)
        if len(expired) < 4:
            expired += await take(member, 2)
    assert sorted((d.postback.mid, d.attempt) for d in expired) == [
        ("m1", 1),
        ("m1", 2),
        ("m2", 1),
        ("m2", 2),
    ]

    async def counted(expected: int) -> bool:
        info = await store.group_info(group)
        assert info is not None
        assert dead_letter_metric(group) - before <= expected, "counted more than once"
        return info.dead_lettered == expected and dead_letter_metric(group) - before == expected

    # Dead-lettering happens when a member looks for work after the last deadlines.
    looking = asyncio.create_task(next_of(member))
    await eventually(lambda: counted(2))
    looking.cancel()
    await asyncio.gather(looking, return_exceptions=True)
    # A delivery dead-lettered after its deadline is no longer acknowledged (see ack).
    last = [d.ack_id for d in expired if d.attempt == 2]
    late = await store.ack(group, last, [])
    assert (late.applied, sorted(late.unknown)) == (0, sorted(last))

    # A nack on the last attempt is counted as well, once.
    await store.append([new(3)])
    first = await next_of(member)
    await store.ack(group, [], [first.ack_id])
    second = await next_of(member)
    assert (second.postback.mid, second.attempt) == ("m3", 2)
    await store.ack(group, [], [second.ack_id])
    await eventually(lambda: counted(3))


async def test_max_unacked_holds_back_deliveries(store: PostbackStore) -> None:
    small = await store.join_group("g", Filter(), Start.latest(), options(max_unacked=2))
    await store.append([new(i) for i in range(5)])
    held = await take(small, 2)
    # The other three wait for a member with room: a second member gets exactly them.
    roomy = await store.join_group("g", Filter(), Start.latest(), options(max_unacked=3))
    rest = await take(roomy, 3)
    assert sorted(d.postback.mid for d in held + rest) == [f"m{i}" for i in range(5)]
    # Both are full. An ack frees one slot of the small member: it gets one more, no more.
    await store.ack("g", [held[0].ack_id], [])
    await store.append([new(5), new(6)])
    assert (await next_of(small)).postback.mid == "m5"
    await store.ack("g", [rest[0].ack_id], [])
    assert (await next_of(roomy)).postback.mid == "m6"


async def test_group_filters_are_fixed_by_the_first_member(store: PostbackStore) -> None:
    flt = Filter(account_ids=frozenset({"acct-1"}), payload_prefix="ORDER:")
    member = await store.join_group("g", flt, Start.latest(), options())
    with pytest.raises(GroupFilterMismatch):
        await store.join_group("g", Filter(), Start.latest(), options())
    await store.append([new(1, payload="HELP"), new(2, payload="ORDER:2")])
    assert (await next_of(member)).postback.mid == "m2"
    info = await store.group_info("g")
    assert info is not None
    assert info.filter == flt
    assert await store.group_info("nope") is None


async def test_group_start_applies_only_when_the_group_is_created(store: PostbackStore) -> None:
    await store.append([new(1), new(2)])
    member = await store.join_group("g", Filter(), Start.earliest(), options(max_unacked=1))
    first = await next_of(member)
    await store.ack("g", [first.ack_id], [])
    await member.close()
    # Joining again with another start resumes from the group's own position.
    again = await store.join_group("g", Filter(), Start.latest(), options())
    assert (await next_of(again)).postback.mid == "m2"


async def test_unknown_ack_ids_and_groups(store: PostbackStore) -> None:
    assert (await store.ack("nope", ["x"], ["y"])).unknown == ("x", "y")
    await store.join_group("g", Filter(), Start.latest(), options())
    result = await store.ack("g", ["x"], [])
    assert (result.applied, result.unknown) == (0, ("x",))


async def test_group_state_survives_a_restart(reopen: Reopen) -> None:
    store = await reopen()
    member = await store.join_group("g", Filter(), Start.earliest(), options(ack_deadline=0.5))
    await store.append([new(i) for i in range(4)])
    got = await take(member, 4)
    await store.ack("g", [got[0].ack_id, got[1].ack_id], [])
    await store.close()  # m2, m3 unacked, their member gone with the process

    store = await reopen()
    await store.append([new(4)])
    member = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.5))
    after: list[Delivery] = []
    for _ in range(3):  # acked as they come: a member that lets one expire gets no more
        after.append(await next_of(member))
        await store.ack("g", [after[-1].ack_id], [])
    by_mid = {d.postback.mid: d.attempt for d in after}
    assert by_mid == {"m4": 1, "m2": 2, "m3": 2}


# --- group scopes, limits and deletion ---


def unacked_metric(group: str) -> float | None:
    """The unacked gauge of ``group``, or None when it has no series."""
    return REGISTRY.get_sample_value("igbutton_postbacks_unacked", {"group": group})


def fresh_scope() -> str:
    """A scope no other test uses (the metric registry is process-global)."""
    return caller_scope(f"caller-{uuid.uuid4()}")


async def test_each_scope_has_its_own_group_names(store: PostbackStore) -> None:
    a, b = group_key(fresh_scope(), "g"), group_key(fresh_scope(), "g")
    a_filter = Filter(account_ids=frozenset({"acct-a"}))
    b_filter = Filter(account_ids=frozenset({"acct-b"}), payload_prefix="B:")
    a_member = await store.join_group(a, a_filter, Start.latest(), options())
    b_member = await store.join_group(b, b_filter, Start.latest(), options())  # not refused
    await store.append([new(1, account="acct-a"), new(2, account="acct-b", payload="B:2")])
    assert (await next_of(a_member)).postback.mid == "m1"
    assert (await next_of(b_member)).postback.mid == "m2"  # never A's m1
    with pytest.raises(GroupFilterMismatch) as caught:
        await store.join_group(b, Filter(), Start.latest(), options())
    assert caught.value.existing == b_filter  # its own scope's filter, nothing of A's
    info_a, info_b = await store.group_info(a), await store.group_info(b)
    assert info_a is not None
    assert info_a.filter == a_filter
    assert info_b is not None
    assert info_b.filter == b_filter
    assert await store.group_info("g") is None  # the open scope has none of them


async def test_a_scope_holds_at_most_max_groups(store: PostbackStore) -> None:
    scope, other = fresh_scope(), fresh_scope()
    for name in ("g1", "g2"):
        await store.join_group(group_key(scope, name), Filter(), Start.latest(), options(), 2)
    with pytest.raises(TooManyGroups):
        await store.join_group(group_key(scope, "g3"), Filter(), Start.latest(), options(), 2)
    assert await store.group_info(group_key(scope, "g3")) is None
    # An existing group may always be joined, and other scopes have their own count.
    await store.join_group(group_key(scope, "g1"), Filter(), Start.latest(), options(), 2)
    await store.join_group(group_key(other, "g1"), Filter(), Start.latest(), options(), 2)
    await store.join_group("g1", Filter(), Start.latest(), options(), 2)
    await store.join_group("g2", Filter(), Start.latest(), options(), 2)
    with pytest.raises(TooManyGroups):
        await store.join_group("g3", Filter(), Start.latest(), options(), 2)
    # Deleting one makes room.
    assert await store.delete_group(group_key(scope, "g2"))
    await store.join_group(group_key(scope, "g3"), Filter(), Start.latest(), options(), 2)


async def test_delete_group_removes_it_and_ends_its_members(store: PostbackStore) -> None:
    group = group_key(fresh_scope(), "doomed")
    member = await store.join_group(group, Filter(), Start.latest(), options(ack_deadline=60))
    await store.append([new(1)])
    held = await next_of(member)
    await store.group_info(group)  # every engine has set the gauge by now
    assert unacked_metric(group) == 1
    assert await store.delete_group(group)
    with pytest.raises(StopAsyncIteration):
        await next_of(member)
    assert await store.group_info(group) is None
    assert unacked_metric(group) is None  # its series went with it
    assert not await store.delete_group(group)
    # Made again under the same name it starts afresh: nothing pending, old ids unknown.
    again = await store.join_group(group, Filter(), Start.latest(), options())
    assert (await store.ack(group, [held.ack_id], [])).unknown == (held.ack_id,)
    await store.append([new(2)])
    assert (await next_of(again)).postback.mid == "m2"
    info = await store.group_info(group)
    assert info is not None
    assert (info.unacked, info.dead_lettered) == (1, 0)


async def test_acks_for_a_group_that_does_not_exist_leave_no_metric(store: PostbackStore) -> None:
    group = group_key(fresh_scope(), "made-up")
    assert (await store.ack(group, ["x"], [])).unknown == ("x",)
    assert unacked_metric(group) is None


async def test_idle_groups_are_deleted_and_groups_in_use_are_not(store: PostbackStore) -> None:
    scope = fresh_scope()
    busy, idle = group_key(scope, "busy"), group_key(scope, "idle")
    member = await store.join_group(busy, Filter(), Start.latest(), options())
    left = await store.join_group(idle, Filter(), Start.latest(), options())
    await left.close()
    now_ms = int(time.time() * 1000)
    # Nothing was idle a minute ago: both were joined since.
    assert await store.delete_idle_groups(now_ms - 60_000) == []
    # Idle since a moment from now: every group without a member.
    deleted = await store.delete_idle_groups(now_ms + 1000)
    assert idle in deleted
    assert busy not in deleted
    assert await store.group_info(idle) is None
    assert await store.group_info(busy) is not None
    await store.append([new(1)])
    assert (await next_of(member)).postback.mid == "m1"


# --- stalled members (a delivery expired unacknowledged) ---


async def test_hung_members_do_not_burn_the_attempts_meant_for_a_live_one(
    store: PostbackStore,
) -> None:
    # Each hung member holds one delivery; the live one has room for all.
    hung = [
        await store.join_group(
            "g", Filter(), Start.latest(), options(ack_deadline=1.0, max_unacked=1)
        )
        for _ in range(6)
    ]
    live = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=1.0))
    await store.append([new(i) for i in range(20)])

    async def hang(member: AsyncIterator[Delivery]) -> None:
        # Takes what it is given and never acks: a frozen client whose stream the server
        # still writes into.
        async for _ in member:
            pass

    acked: dict[str, int] = {}

    async def work() -> None:
        async for delivery in live:
            if (await store.ack("g", [delivery.ack_id], [])).applied:
                acked[delivery.postback.mid] = delivery.attempt
            if len(acked) == 20:
                return

    hanging = [asyncio.create_task(hang(m)) for m in hung]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work(), WAIT)
    finally:
        for task in hanging:
            task.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)
    assert sorted(acked) == sorted(f"m{i}" for i in range(20)), "each reached the live member"
    info = await store.group_info("g")
    assert info is not None
    assert (info.dead_lettered, info.unacked) == (0, 0)


async def test_a_member_that_let_a_delivery_expire_gets_nothing_until_it_acks(
    store: PostbackStore,
) -> None:
    member = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=0.3))
    await store.append([new(1)])
    first = await next_of(member)
    with pytest.raises(TimeoutError):  # m1 expired after 0.3 s and is not redelivered here
        await next_of(member, 1.0)
    await store.append([new(2)])
    with pytest.raises(TimeoutError):  # nor anything new
        await next_of(member, 1.0)
    # Slow but alive: its late ack still applies (nobody else took m1), and work resumes.
    late = await store.ack("g", [first.ack_id], [])
    assert late.applied == 1
    resumed = await next_of(member)
    assert (resumed.postback.mid, resumed.attempt) == ("m2", 1)


async def test_a_late_ack_of_a_delivery_redelivered_elsewhere_revives_the_member(
    store: PostbackStore,
) -> None:
    opts = options(ack_deadline=0.3)
    slow = await store.join_group("g", Filter(), Start.latest(), opts)
    await store.append([new(1)])
    first = await next_of(slow)
    other = await store.join_group("g", Filter(), Start.latest(), opts)
    again = await next_of(other)  # after m1's deadline: the slow member is stalled
    assert (again.postback.mid, again.attempt) == ("m1", 2)
    assert (await store.ack("g", [again.ack_id], [])).applied == 1
    await other.close()
    late = await store.ack("g", [first.ack_id], [])  # too late, yet it shows life
    assert late.unknown == (first.ack_id,)
    await store.append([new(2)])
    resumed = await next_of(slow)
    assert (resumed.postback.mid, resumed.attempt) == ("m2", 1)
