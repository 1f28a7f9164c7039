"""Several igbutton processes on one 3-node JetStream cluster (streams with 3 replicas):
one log, groups and request_ids shared by every replica, surviving a replica crash and a
NATS node going away. Real processes on loopback; every one is stopped by its fixture."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from igbutton.v1 import group_service_pb2 as gpb
from igbutton.v1 import (
    group_service_pb2_grpc,
    postback_service_pb2_grpc,
    send_service_pb2_grpc,
)
from igbutton.v1 import postback_service_pb2 as pb
from tests.nats_servers import NatsCluster
from tests.postbacks.conftest import Stream, eventually, postback_item, postbacks
from tests.replicas.conftest import StartReplicas, deliver_like_meta
from tests.replicas.processes import ACCOUNT, Replica, SandboxProcess
from tests.send.conftest import send_request

pytestmark = pytest.mark.slow

Streams = Callable[..., Any]
WAIT = 30.0
T = TypeVar("T")


def mids(items: list[pb.SubscribePostbacksResponse]) -> list[str]:
    return [i.postback.mid for i in items]


async def as_a_client(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, retried while it is UNAVAILABLE (NATS electing leaders after a node went
    away) as clients do, for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)  # a client's retry backoff


async def test_a_webhook_on_one_replica_reaches_a_subscriber_on_another(
    start_replicas: StartReplicas, streams: Streams, http: aiohttp.ClientSession
) -> None:
    a, b = start_replicas(2)
    on_b: Stream = await streams(b)
    await deliver_like_meta(http, a.webhook_url, *postbacks("x", 5))
    got = await on_b.take(5, WAIT)
    assert mids(got) == [f"x-{i}" for i in range(5)]
    assert [g.postback.payload for g in got] == [f"P{i}" for i in range(5)]
    # The same postback delivered again, to the other replica, is stored once.
    await deliver_like_meta(http, b.webhook_url, *postbacks("x", 5))
    await deliver_like_meta(http, b.webhook_url, postback_item("y-0"))
    assert mids([await on_b.next(WAIT)]) == ["y-0"]


async def test_a_group_spanning_replicas_divides_the_postbacks(
    start_replicas: StartReplicas,
    streams: Streams,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_replicas(2)
    group = {"group": "billing", "max_unacked": 2}
    members: list[Stream] = [await streams(a, **group), await streams(b, **group)]
    # Acks go to the *other* replica than the member's: ack ids work anywhere.
    ackers = [
        postback_service_pb2_grpc.PostbackServiceStub(channels(b)),
        postback_service_pb2_grpc.PostbackServiceStub(channels(a)),
    ]
    total = 30
    await deliver_like_meta(http, a.webhook_url, *postbacks("g", total))
    received: list[list[str]] = [[], []]

    async def work(index: int) -> None:
        while sum(len(r) for r in received) < total:
            try:
                item = await members[index].next(0.5)
            except TimeoutError:
                continue
            assert item.delivery_attempt == 1
            received[index].append(item.postback.mid)
            reply = await ackers[index].AckPostbacks(
                pb.AckPostbacksRequest(group="billing", ack_ids=[item.ack_id]), timeout=10
            )
            assert reply.applied_count == 1

    await asyncio.wait_for(asyncio.gather(work(0), work(1)), WAIT)
    everything = received[0] + received[1]
    assert sorted(everything) == sorted(f"g-{i}" for i in range(total))  # each exactly once
    assert received[0]
    assert received[1]


async def test_a_killed_replicas_unacked_postbacks_go_to_a_member_elsewhere(
    start_replicas: StartReplicas,
    streams: Streams,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_replicas(2)
    group = {"group": "orders", "max_unacked": 100, "ack_deadline": Duration(seconds=1)}
    doomed: Stream = await streams(a, **group)
    await deliver_like_meta(http, b.webhook_url, *postbacks("k", 6))
    held = await doomed.take(6, WAIT)  # delivered to the member on A, never acked
    a.kill()
    survivor: Stream = await streams(b, **group)
    again = await survivor.take(6, WAIT)
    assert sorted(mids(again)) == sorted(mids(held))
    assert all(item.delivery_attempt == 2 for item in again)
    ack = postback_service_pb2_grpc.PostbackServiceStub(channels(b))
    reply = await ack.AckPostbacks(
        pb.AckPostbacksRequest(group="orders", ack_ids=[i.ack_id for i in again]), timeout=10
    )
    assert reply.applied_count == 6
    # The killed member's stale ack ids are refused: those deliveries were superseded.
    stale = await ack.AckPostbacks(
        pb.AckPostbacksRequest(group="orders", ack_ids=[held[0].ack_id]), timeout=10
    )
    assert list(stale.unknown_ack_ids) == [held[0].ack_id]


async def test_postbacks_keep_flowing_while_a_nats_node_is_down(
    start_replicas: StartReplicas,
    streams: Streams,
    channels: Callable[[Replica], grpc.aio.Channel],
    nats_cluster: NatsCluster,
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_replicas(2)
    broadcast: Stream = await streams(b)
    # The member acks what it gets, as a real one does. Deliveries on their way to it
    # through the killed node are lost there (about 1 run in 20): JetStream counts them
    # delivered and sends them again after the ack deadline, like any unacknowledged
    # delivery. A member that acked nothing would be stalled by then and never get them.
    member: Stream = await streams(
        a, group="audit", max_unacked=1000, ack_deadline=Duration(seconds=3)
    )
    acks = postback_service_pb2_grpc.PostbackServiceStub(channels(a))
    groups = group_service_pb2_grpc.GroupServiceStub(channels(a))
    expected = sorted(f"n{r}-{i}" for r in range(6) for i in range(5))
    grouped: set[str] = set()

    async def read_the_group() -> None:
        while True:
            item = await member.next(3 * WAIT)  # outlasts the wait below: it ends it
            grouped.add(item.postback.mid)
            request = pb.AckPostbacksRequest(group="audit", ack_ids=[item.ack_id])
            await as_a_client(lambda r=request: acks.AckPostbacks(r, timeout=10))

    reader = asyncio.create_task(read_the_group())
    try:
        for round_ in range(6):
            if round_ == 2:
                nats_cluster.nodes[0].kill()  # the first URL every replica knows
            replica = (a, b)[round_ % 2]
            await deliver_like_meta(http, replica.webhook_url, *postbacks(f"n{round_}", 5))
        seen = mids(await broadcast.take(len(expected), WAIT))
        assert sorted(seen) == expected  # every postback, none twice

        async def all_delivered_and_acked() -> bool:
            assert not reader.done(), reader  # the member's stream and acks work throughout
            reply = await as_a_client(
                lambda: groups.GetGroup(gpb.GetGroupRequest(name="groups/audit"), timeout=10)
            )
            group = reply.group
            settled = group.unacked_count == 0 and group.backlog_count == 0
            return settled and grouped >= set(expected)

        await eventually(all_delivered_and_acked, within=2 * WAIT)
        assert sorted(grouped) == expected  # none missing, none unknown
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_one_request_id_sent_to_two_replicas_sends_once(
    start_replicas: StartReplicas,
    sandbox_process: SandboxProcess,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_replicas(2, graph_url=sandbox_process.url)
    # Keep the first send in flight so the second arrives while it is.
    async with http.post(
        f"{sandbox_process.url}/_sandbox/faults", json={"kind": "slow", "delay_seconds": 0.5}
    ) as resp:
        assert resp.status == 204
    request = send_request(account_id=ACCOUNT, request_id="6f1c0b1e-0000-4000-8000-00000000abcd")
    replies = await asyncio.gather(
        *(
            send_service_pb2_grpc.SendServiceStub(channels(r)).SendButtonTemplate(
                request, timeout=20
            )
            for r in (a, b, a, b)
        )
    )
    assert len({r.message_id for r in replies}) == 1
    async with http.get(f"{sandbox_process.url}/_sandbox/messages") as resp:
        sent = (await resp.json())["messages"]
    assert len(sent) == 1
