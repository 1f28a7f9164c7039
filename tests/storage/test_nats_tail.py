"""The shared tail: one reader per process serves every live broadcast cursor, and cursors
move between it and consumers of their own without a gap or a repeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from igbutton_server.storage.nats import _tail as nats_tail
from igbutton_server.storage.nats._cursor import BroadcastCursor
from igbutton_server.storage.nats.postbacks import NatsPostbackStore
from igbutton_server.storage.postbacks import Filter, Start, StoredPostback
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.postbacks.test_store_contract import new, take
from tests.storage.nats_fixtures import nats_test_settings, store_opener

TAIL = 64
"""A small ring, so that a few hundred postbacks overflow it."""

OpenStore = Callable[[], Awaitable[NatsPostbackStore]]


@pytest.fixture
def small_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_tail, "TAIL_SIZE", TAIL)


@pytest.fixture
async def open_store(
    make_settings: SettingsFactory,
    nats_server: NatsServer,
    small_tail: None,  # noqa: ARG001 - for its patch: marks (usefixtures) do not apply to fixtures
) -> AsyncIterator[OpenStore]:
    async with store_opener(nats_test_settings(make_settings, [nats_server.url])) as opener:
        yield opener


def mids(items: list[StoredPostback]) -> list[str]:
    return [p.mid for p in items]


def on_tail(sub: BroadcastCursor) -> bool:
    return sub._index is not None and sub._inbox is None


async def consumer_count(store: NatsPostbackStore) -> int:
    return len(await store.conn.js.consumers_info(store.conn.layout.stream))


async def test_many_subscribers_at_the_tail_share_one_consumer(open_store: OpenStore) -> None:
    store = await open_store()
    everyone = [await store.subscribe(Filter(), Start.latest()) for _ in range(20)]
    acct2 = await store.subscribe(Filter(account_ids=frozenset({"acct-2"})), Start.latest())
    orders = await store.subscribe(Filter(payload_prefix="ORDER:"), Start.latest())
    assert all(on_tail(s) for s in [*everyone, acct2, orders])
    assert await consumer_count(store) == 1  # the shared reader's
    expected = [
        new(i, account=f"acct-{i % 3}", payload=f"ORDER:{i}" if i % 5 == 0 else None)
        for i in range(300)
    ]
    for start in range(0, 300, 50):
        await store.append(expected[start : start + 50])
    for sub in everyone:
        got = await take(sub, 300)
        assert mids(got) == [f"m{i}" for i in range(300)]
        assert [p.sequence for p in got] == sorted({p.sequence for p in got})
    assert mids(await take(acct2, 100)) == [f"m{i}" for i in range(300) if i % 3 == 2]
    assert mids(await take(orders, 60)) == [f"m{i}" for i in range(0, 300, 5)]
    await store.append([new(300)])
    assert mids(await take(everyone[0], 1)) == ["m300"]  # nothing extra was waiting


async def test_latest_opened_while_the_reader_lags_starts_after_the_log_end(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    first = await store.subscribe(Filter(), Start.latest())  # starts the shared reader
    await store.append([new(i) for i in range(50)])
    # The reader may not have read those 50 yet; "latest" still means after all of them.
    late = await store.subscribe(Filter(), Start.latest())
    assert on_tail(late)
    await store.append([new(50)])
    assert mids(await take(late, 1)) == ["m50"]
    assert mids(await take(first, 51)) == [f"m{i}" for i in range(51)]


async def test_earliest_in_a_log_bigger_than_the_tail_catches_up_then_shares(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    await store.append([new(i) for i in range(3 * TAIL)])
    sub = await store.subscribe(Filter(), Start.earliest())
    assert not on_tail(sub)
    first = await take(sub, TAIL)
    # Appends go on while the cursor catches up; it switches over somewhere in between.
    writer = asyncio.create_task(store.append([new(i) for i in range(3 * TAIL, 6 * TAIL)]))
    rest = await take(sub, 5 * TAIL)
    await writer
    assert mids(first + rest) == [f"m{i}" for i in range(6 * TAIL)]
    assert on_tail(sub)
    await store.append([new(6 * TAIL)])
    assert mids(await take(sub, 1)) == [f"m{6 * TAIL}"]
    assert await consumer_count(store) == 1  # its own consumer was deleted


async def test_a_reader_that_falls_behind_the_tail_catches_up_on_its_own(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    slow = await store.subscribe(Filter(), Start.latest())
    fast = await store.subscribe(Filter(), Start.latest())
    assert on_tail(slow)
    await store.append([new(i) for i in range(4 * TAIL)])
    assert mids(await take(fast, 4 * TAIL)) == [f"m{i}" for i in range(4 * TAIL)]
    got = await take(slow, 4 * TAIL)  # the ring dropped most of these meanwhile
    assert mids(got) == [f"m{i}" for i in range(4 * TAIL)]
    await store.append([new(4 * TAIL)])
    assert mids(await take(slow, 1)) == [f"m{4 * TAIL}"]
    assert on_tail(slow)


async def _until(condition: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_shared_reader_outlives_its_consumer(open_store: OpenStore) -> None:
    store = await open_store()
    subs = [await store.subscribe(Filter(), Start.latest()) for _ in range(5)]
    await store.append([new(i) for i in range(5)])
    for sub in subs:
        assert mids(await take(sub, 5)) == [f"m{i}" for i in range(5)]
    for info in await store.conn.js.consumers_info(store.conn.layout.stream):
        await store.conn.js.delete_consumer(store.conn.layout.stream, info.name)
    await store.append([new(i) for i in range(5, 10)])
    for sub in subs:
        assert mids(await take(sub, 5)) == [f"m{i}" for i in range(5, 10)]
    await _until(lambda: _has_consumers(store, 1))


async def _has_consumers(store: NatsPostbackStore, count: int) -> bool:
    return await consumer_count(store) == count


async def _reachable(store: NatsPostbackStore) -> bool:
    if not store.conn.connected:
        return False
    try:
        await asyncio.wait_for(store.conn.js.stream_info(store.conn.layout.stream), 1)
    except Exception:  # noqa: BLE001 - whatever fails, the server is not reachable yet
        return False
    return True


@pytest.mark.usefixtures("small_tail")
async def test_the_shared_reader_survives_a_server_restart(
    make_settings: SettingsFactory, restartable_server: NatsServer
) -> None:
    settings = nats_test_settings(make_settings, [restartable_server.url])
    store = await NatsPostbackStore.open(settings)
    try:
        subs = [await store.subscribe(Filter(), Start.latest()) for _ in range(3)]
        await store.append([new(i) for i in range(10)])
        for sub in subs:
            assert mids(await take(sub, 10)) == [f"m{i}" for i in range(10)]
        restartable_server.stop()
        restartable_server.start_healthy()  # same ports and data; the memory consumers are gone
        # Reachable first, so this is about the tail; appends across a restart are tested
        # in test_nats_postbacks.
        await _until(lambda: _reachable(store))
        await store.append([new(i) for i in range(10, 20)])
        for sub in subs:
            got = await take(sub, 10)
            assert mids(got) == [f"m{i}" for i in range(10, 20)]
            assert all(on_tail(s) for s in subs)
    finally:
        await store.close()


async def test_the_reader_stops_with_the_last_cursor_and_starts_with_the_next(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    first = [await store.subscribe(Filter(), Start.latest()) for _ in range(2)]
    await store.append([new(i) for i in range(3)])
    for sub in first:
        assert mids(await take(sub, 3)) == ["m0", "m1", "m2"]
    await first[0].close()
    assert await consumer_count(store) == 1  # one cursor is still reading
    await first[1].close()
    # Nobody subscribes any more: the process stops reading the log.
    await _until(lambda: _has_consumers(store, 0))
    await store.append([new(i) for i in range(3, 6)])
    latest = await store.subscribe(Filter(), Start.latest())
    earliest = await store.subscribe(Filter(), Start.earliest())
    assert on_tail(latest)
    await store.append([new(6)])
    assert mids(await take(latest, 1)) == ["m6"]  # what came while stopped is not "latest"
    assert mids(await take(earliest, 7)) == [f"m{i}" for i in range(7)]


def _tail_is(
    store: NatsPostbackStore, check: Callable[[nats_tail.SharedTail], bool]
) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return check(store.tail)

    return condition


async def test_a_lone_slow_cursor_paces_the_reader_and_stays_on_the_ring(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    slow = await store.subscribe(Filter(), Start.latest())
    await store.append([new(i) for i in range(3 * TAIL)])
    # The reader fills the ring and then waits for the cursor (it would otherwise read all
    # of them, and the cursor would fall out onto a consumer of its own).
    await _until(
        _tail_is(
            store, lambda t: getattr(t, "resume_index", 0) != float("inf") or t.end >= 3 * TAIL
        )
    )
    assert store.tail.end <= TAIL
    got: list[StoredPostback] = []
    for _ in range(3 * TAIL):
        got += await take(slow, 1)
        assert on_tail(slow)
    assert mids(got) == [f"m{i}" for i in range(3 * TAIL)]
    assert await consumer_count(store) == 1  # the shared reader's only


async def test_a_fast_cursor_is_not_held_back_by_a_slow_one(open_store: OpenStore) -> None:
    store = await open_store()
    slow = await store.subscribe(Filter(), Start.latest())
    fast = await store.subscribe(Filter(), Start.latest())
    await store.append([new(i) for i in range(3 * TAIL)])
    assert mids(await take(fast, 3 * TAIL)) == [f"m{i}" for i in range(3 * TAIL)]
    assert mids(await take(slow, 3 * TAIL)) == [f"m{i}" for i in range(3 * TAIL)]


async def test_a_stuck_cursor_holds_the_reader_back_only_so_far(open_store: OpenStore) -> None:
    store = await open_store()
    stuck = await store.subscribe(Filter(), Start.latest())
    await store.append([new(i) for i in range(TAIL)])
    await _until(_tail_is(store, lambda t: t.end == TAIL))
    # More than the pacing limit arrives while the reader waits for the stuck cursor: the
    # reader learns of it (within a heartbeat) and reads on to the log's end.
    count = (nats_tail.PACE_LIMIT_TAILS + 2) * TAIL
    await store.append([new(i) for i in range(TAIL, count)])
    await _until(_tail_is(store, lambda t: t.end == count))
    late = await store.subscribe(Filter(), Start.latest())
    await store.append([new(count)])
    assert mids(await take(late, 1)) == [f"m{count}"]
    assert mids(await take(stuck, count + 1)) == [f"m{i}" for i in range(count + 1)]


async def test_a_cursor_opened_far_ahead_of_a_held_back_reader_does_not_wait_for_it(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    stuck = await store.subscribe(Filter(), Start.latest())
    await store.append([new(i) for i in range(3 * TAIL)])
    await _until(_tail_is(store, lambda t: getattr(t, "resume_index", 0) != float("inf")))
    # The reader waits for the stuck cursor, two rings behind the log's end.
    late = await store.subscribe(Filter(), Start.latest())
    assert not on_tail(late)  # it would wait for the reader to get there
    await store.append([new(3 * TAIL)])
    assert mids(await take(late, 1)) == [f"m{3 * TAIL}"]
    assert on_tail(stuck)
    assert mids(await take(stuck, 3 * TAIL + 1)) == [f"m{i}" for i in range(3 * TAIL + 1)]
    # Once the reader is near it again, the late cursor moves to the ring.
    await store.append([new(3 * TAIL + 1)])
    assert mids(await take(late, 1)) == [f"m{3 * TAIL + 1}"]
    await _until(_tail_is(store, lambda t: t.end == 3 * TAIL + 2))
    await store.append([new(3 * TAIL + 2)])
    assert mids(await take(late, 1)) == [f"m{3 * TAIL + 2}"]
    assert on_tail(late)
    assert await consumer_count(store) == 1


async def test_a_paced_cursor_gets_two_replicas_concurrent_appends_in_order(
    open_store: OpenStore,
) -> None:
    a, b = await open_store(), await open_store()
    slow = await b.subscribe(Filter(), Start.latest())  # alone on b's ring: it paces b's reader
    batches = [[new(i + j, account=f"acct-{i % 2}") for j in range(16)] for i in range(0, 512, 16)]
    # Both replicas append at once; the slow cursor reads one at a time meanwhile.
    writers = [
        asyncio.create_task(store.append(batch))
        for i, batch in enumerate(batches)
        for store in ((a,) if i % 2 else (b,))
    ]
    got = [p for _ in range(100) for p in await take(slow, 1)]
    await asyncio.gather(*writers)
    got += await take(slow, 512 - len(got))
    assert on_tail(slow)
    everything = await take(await a.subscribe(Filter(), Start.earliest()), 512)
    assert [p.sequence for p in got] == [p.sequence for p in everything]
    assert [p.sequence for p in got] == sorted({p.sequence for p in got})  # no duplicate
    assert sorted(mids(got)) == sorted(f"m{i}" for i in range(512))
