"""What only the JetStream engine has to show: stored-once beyond the duplicate window,
cursors that outlive their consumer, and ack ids and deadlines across replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from igbutton_server.storage.nats import postbacks as nats_postbacks
from igbutton_server.storage.nats._codec import encode
from igbutton_server.storage.nats.postbacks import APPEND_TIMEOUT_SECONDS, NatsPostbackStore
from igbutton_server.storage.postbacks import Filter, GroupOptions, Start
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.postbacks.conftest import eventually
from tests.postbacks.test_store_contract import dead_letter_metric, new, next_of, take
from tests.storage.nats_fixtures import nats_test_settings, removing_layout, store_opener

OpenStore = Callable[[], Awaitable[NatsPostbackStore]]


@pytest.fixture
async def open_store(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> AsyncIterator[OpenStore]:
    """Opens stores on the same streams: each one stands for a replica."""
    async with store_opener(nats_test_settings(make_settings, [nats_server.url])) as opener:
        yield opener


async def test_a_retry_long_after_the_duplicate_window_is_still_a_duplicate(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    layout = store.conn.layout
    # The first copy as if stored days ago: no Nats-Msg-Id that the window could remember.
    await store.conn.js.publish(layout.postback_subject("acct-1", "m1"), encode(new(1)))
    result = await store.append([new(1), new(2)])
    assert (result.stored, result.duplicates) == (1, 1)
    info = await store.conn.js.stream_info(layout.stream)
    assert info.state.messages == 2


async def test_a_message_from_before_the_standby_field_reads_as_not_standby(
    open_store: OpenStore,
) -> None:
    store = await open_store()
    layout = store.conn.layout
    body = json.loads(encode(new(1)))
    assert "standby" not in body  # what every message written before the field looks like
    await store.conn.js.publish(layout.postback_subject("acct-1", "m1"), json.dumps(body).encode())
    await store.append([dataclasses.replace(new(2), standby=True)])
    cursor = await store.subscribe(Filter(), Start.earliest())
    got = await take(cursor, 2)
    await cursor.close()
    assert [(p.mid, p.standby) for p in got] == [("m1", False), ("m2", True)]


async def test_a_cursor_outlives_its_consumer(open_store: OpenStore) -> None:
    store = await open_store()
    await store.append([new(i) for i in range(5)])
    sub = await store.subscribe(Filter(), Start.earliest())
    first = await take(sub, 2)
    # The consumer vanishes (its node died, or it idled past its inactivity threshold).
    names = await store.conn.js.consumers_info(store.conn.layout.stream)
    for info in names:
        await store.conn.js.delete_consumer(store.conn.layout.stream, info.name)
    await store.append([new(i) for i in range(5, 8)])
    rest = await take(sub, 6)
    assert [p.mid for p in first + rest] == [f"m{i}" for i in range(8)]


async def test_an_ack_through_another_replica_frees_the_members_slot(
    open_store: OpenStore,
) -> None:
    a, b = await open_store(), await open_store()
    options = GroupOptions(ack_deadline=30, max_unacked=1, max_attempts=5)
    member = await a.join_group("g", Filter(), Start.latest(), options)
    await a.append([new(1), new(2)])
    first = await next_of(member)
    assert (await b.ack("g", [first.ack_id], [])).applied == 1
    second = await next_of(member)  # the slot was freed by an ack on the other replica
    assert second.postback.mid == "m2"
    again = await b.ack("g", [first.ack_id], [])
    assert again.unknown == (first.ack_id,)


async def test_a_member_keeps_its_own_longer_deadline(open_store: OpenStore) -> None:
    store = await open_store()
    short = GroupOptions(ack_deadline=0.3, max_unacked=10, max_attempts=5)
    creator = await store.join_group("g", Filter(), Start.latest(), short)
    await creator.close()  # the group's AckWait stays 0.3 s
    longer = GroupOptions(ack_deadline=1.5, max_unacked=10, max_attempts=5)
    member = await store.join_group("g", Filter(), Start.latest(), longer)
    await store.append([new(1)])
    first = await next_of(member)
    # JetStream would redeliver after 0.3 s; the member keeps it in progress until 1.5 s,
    # then it goes to another member (the first one let it expire: it is stalled).
    other = await store.join_group("g", Filter(), Start.latest(), longer)
    tending = asyncio.create_task(anext(member))  # iterated, as the API does: it tends
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(other), 1.0)
    again = await next_of(other)
    tending.cancel()
    await asyncio.gather(tending, return_exceptions=True)
    assert (again.postback.mid, again.attempt) == ("m1", 2)
    assert first.attempt == 1


async def test_a_dead_letter_is_counted_once_across_replicas(open_store: OpenStore) -> None:
    # Three replicas share the group; each sees JetStream's advisories, one counts each.
    replicas = [await open_store() for _ in range(3)]
    group = f"dlq-{uuid.uuid4().hex[:8]}"
    before = dead_letter_metric(group)
    options = GroupOptions(ack_deadline=0.2, max_unacked=10, max_attempts=2)
    creator = await replicas[0].join_group(group, Filter(), Start.latest(), options)
    await creator.close()  # the group exists from here on
    # Once close returns the server has withdrawn a member's pull request, so an append on
    # another connection cannot hand attempt 1 to a closed member's inbox.

    async def counted(expected: int) -> bool:
        assert dead_letter_metric(group) - before <= expected, "counted more than once"
        return dead_letter_metric(group) - before == expected

    for i in (1, 2):  # the second also gives the replicas time to miscount the first
        await replicas[1].append([new(i)])
        # Never acked: each attempt to a member of its own (one that let a delivery
        # expire is stalled), left open so no request of a closed one is outstanding.
        members = []
        for _ in range(2):
            members.append(await replicas[0].join_group(group, Filter(), Start.latest(), options))
            assert (await next_of(members[-1])).attempt == len(members)
        members.append(await replicas[0].join_group(group, Filter(), Start.latest(), options))
        looking = asyncio.create_task(next_of(members[-1]))  # dead-lettered when it pulls
        await eventually(functools.partial(counted, i))
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)
        for member in members:
            await member.close()  # their pull requests are withdrawn before the next append
    for store in replicas:
        await store.conn.client.flush()
    assert dead_letter_metric(group) - before == 2
    info = await replicas[2].group_info(group)
    assert info is not None
    assert info.dead_lettered == 2


async def test_an_append_begun_across_a_server_restart_is_stored_well_before_its_deadline(
    make_settings: SettingsFactory, restartable_server: NatsServer
) -> None:
    settings = nats_test_settings(make_settings, [restartable_server.url])
    async with removing_layout(settings):
        store = await NatsPostbackStore.open(settings)
        try:
            await store.append([new(0)])
            restartable_server.stop()
            restartable_server.start_healthy()  # same ports and data
            started = time.monotonic()
            # Sent before the client notices the restart: its PubAcks are lost with the
            # old connection, so the append must publish again rather than wait them out.
            result = await store.append([new(i) for i in range(1, 6)])
            took = time.monotonic() - started
            assert (result.stored, result.duplicates) == (5, 0)
            assert took < APPEND_TIMEOUT_SECONDS / 2, took
            cursor = await store.subscribe(Filter(), Start.earliest())
            assert [p.mid for p in await take(cursor, 6)] == [f"m{i}" for i in range(6)]
            await cursor.close()
        finally:
            await store.close()


async def test_a_postback_whose_puback_came_too_late_counts_as_stored_once(
    make_settings: SettingsFactory,
    restartable_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A frozen server answers nothing: the first publish waits in the socket, the append
    # gives up on its PubAck and publishes again, and once the server thaws the first copy
    # is stored and the second is its duplicate. That duplicate is the append's own.
    monkeypatch.setattr(nats_postbacks, "PUBACK_WAIT_SECONDS", 0.3)
    caplog.set_level(logging.INFO, logger=nats_postbacks.__name__)
    settings = nats_test_settings(make_settings, [restartable_server.url])
    async with removing_layout(settings):
        store = await NatsPostbackStore.open(settings)
        try:

            async def gave_up_waiting() -> bool:
                return any("no PubAck in time" in r.getMessage() for r in caplog.records)

            restartable_server.freeze()  # stopped for certain before the publish
            try:
                appending = asyncio.create_task(store.append([new(1)]))
                await eventually(gave_up_waiting)
            finally:
                restartable_server.thaw()
            result = await appending
            assert (result.stored, result.duplicates) == (1, 0)
            info = await store.conn.js.stream_info(store.conn.layout.stream)
            assert info.state.messages == 1
            again = await store.append([new(1)])  # Meta delivering it again: a duplicate
            assert (again.stored, again.duplicates) == (0, 1)
        finally:
            await store.close()
