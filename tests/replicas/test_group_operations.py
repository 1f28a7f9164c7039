"""GroupService across igbutton replicas on one JetStream cluster: the operator calls one
replica, the group's member streams from another, and every operation reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from igbutton.v1 import group_service_pb2 as gpb
from igbutton.v1 import group_service_pb2_grpc, postback_service_pb2_grpc
from igbutton.v1 import postback_service_pb2 as pb
from tests.postbacks.conftest import Stream, postbacks
from tests.replicas.conftest import StartReplicas, deliver_like_meta
from tests.replicas.processes import Replica

pytestmark = pytest.mark.slow

Streams = Callable[..., Any]
WAIT = 30.0
NAME = "groups/orders"


async def test_an_operator_on_one_replica_steers_a_member_on_another(
    start_replicas: StartReplicas,
    streams: Streams,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    a, b = start_replicas(2, env={"IGBUTTON_POSTBACKS__MAX_DELIVERY_ATTEMPTS": "1"})
    ops = group_service_pb2_grpc.GroupServiceStub(channels(a))
    acks = postback_service_pb2_grpc.PostbackServiceStub(channels(a))
    member: Stream = await streams(
        b, group="orders", max_unacked=2, ack_deadline=Duration(seconds=2)
    )
    await deliver_like_meta(http, a.webhook_url, *postbacks("o", 3))
    first, second = await member.take(2, WAIT)

    async def group() -> gpb.Group:
        return (await ops.GetGroup(gpb.GetGroupRequest(name=NAME), timeout=10)).group

    seen = await group()
    assert (seen.unacked_count, seen.backlog_count) == (2, 1)
    assert seen.last_delivered_sequence == second.postback.sequence

    # Extended from replica A: the member on B keeps it past its 2 s deadline.
    extended = await ops.ModifyAckDeadline(
        gpb.ModifyAckDeadlineRequest(
            name=NAME, ack_ids=[first.ack_id], ack_deadline=Duration(seconds=20)
        ),
        timeout=10,
    )
    assert extended.applied_count == 1
    await acks.AckPostbacks(pb.AckPostbacksRequest(group="orders", ack_ids=[second.ack_id]))
    third = await member.next(WAIT)  # the slot the ack freed
    await acks.AckPostbacks(pb.AckPostbacksRequest(group="orders", ack_ids=[third.ack_id]))
    await asyncio.sleep(3)  # past the 2 s deadline: time itself is what is tested here
    # Not stalled (its delivery did not expire): it takes a new postback, and nothing came
    # back before it.
    await deliver_like_meta(http, a.webhook_url, *postbacks("late", 1))
    fresh = await member.next(WAIT)
    assert (fresh.postback.mid, fresh.delivery_attempt) == ("late-0", 1)
    await acks.AckPostbacks(pb.AckPostbacksRequest(group="orders", ack_ids=[fresh.ack_id]))
    late = await acks.AckPostbacks(
        pb.AckPostbacksRequest(group="orders", ack_ids=[first.ack_id]), timeout=10
    )
    assert (late.applied_count, list(late.unknown_ack_ids)) == (1, [])  # still the member's

    # Seek from A: the member on B gets the three again, from attempt 1.
    await ops.SeekGroup(
        gpb.SeekGroupRequest(name=NAME, after_sequence=first.postback.sequence - 1), timeout=10
    )
    again = await member.take(2, WAIT)
    assert [(m.postback.sequence, m.delivery_attempt) for m in again] == [
        (first.postback.sequence, 1),
        (second.postback.sequence, 1),
    ]
    # Nacked on the only attempt, listed and redriven from A: back to B at attempt 1.
    await acks.AckPostbacks(
        pb.AckPostbacksRequest(
            group="orders", ack_ids=[again[1].ack_id], nack_ids=[again[0].ack_id]
        )
    )
    dead = await ops.ListDeadLetters(gpb.ListDeadLettersRequest(parent=NAME), timeout=10)
    assert [d.postback.sequence for d in dead.dead_letters] == [first.postback.sequence]
    redriven = await ops.RedriveDeadLetters(
        gpb.RedriveDeadLettersRequest(name=NAME, all=True), timeout=10
    )
    assert redriven.redriven_count == 1
    rest = await member.take(2, WAIT)  # the others after the seek point fill its two slots
    assert [(m.postback.sequence, m.delivery_attempt) for m in rest] == [
        (third.postback.sequence, 1),
        (fresh.postback.sequence, 1),
    ]
    await acks.AckPostbacks(
        pb.AckPostbacksRequest(group="orders", ack_ids=[m.ack_id for m in rest])
    )
    back = await member.next(WAIT)
    assert (back.postback.sequence, back.delivery_attempt) == (first.postback.sequence, 1)
    assert (await group()).dead_letter_count == 0
