"""SubscribePostbacks and AckPostbacks over real gRPC: broadcast, resume, filters, start
positions, consumer groups (division, deadlines, nack, dead letters, flow control, restart)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from igbutton.v1 import postback_service_pb2 as pb
from igbutton.v1 import postback_service_pb2_grpc
from igbutton_server.app import App
from tests.postbacks.conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    AppFactory,
    Stream,
    WebhookClient,
    eventually,
    postback_item,
    postbacks,
    store_of,
)

Streams = Callable[..., Awaitable[Stream]]
Stub = postback_service_pb2_grpc.PostbackServiceStub


def seconds(value: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(value), nanos=int((value % 1) * 1e9))


def mids(messages: list[pb.SubscribePostbacksResponse]) -> list[str]:
    return [m.postback.mid for m in messages]


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """ErrorInfo reason and BadRequest field paths of an error."""
    status = rpc_status.from_call(error)
    assert status is not None
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


async def ack(stub: Stub, group: str, *messages: pb.SubscribePostbacksResponse) -> None:
    reply = await stub.AckPostbacks(
        pb.AckPostbacksRequest(group=group, ack_ids=[m.ack_id for m in messages])
    )
    assert reply.applied_count == len(messages), reply


# --- broadcast ---


async def test_broadcast_reaches_every_subscriber_in_order(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    subscribers = [await streams(stub) for _ in range(3)]
    items = postbacks("bc", 20)
    await asyncio.gather(*(webhook.deliver(*items[i : i + 4]) for i in range(0, 20, 4)))
    seen = [await s.take(20) for s in subscribers]
    sequences = [m.postback.sequence for m in seen[0]]
    assert sequences == sorted(sequences)
    assert sorted(mids(seen[0])) == sorted(i["postback"]["mid"] for i in items)
    assert seen[0] == seen[1] == seen[2]
    first = seen[0][0]
    assert first.ack_id == ""
    assert first.delivery_attempt == 0
    assert first.postback.account_id == ACCOUNT
    assert first.postback.receive_time.seconds > 0
    assert first.postback.tap_time.ToMilliseconds() == items[0]["timestamp"]


async def test_resume_after_a_disconnect_has_no_gap_and_no_duplicate(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    items = postbacks("resume", 15)
    first = await streams(stub)
    await webhook.deliver(*items[:10])
    before = await first.take(4)
    await first.cancel()
    await webhook.deliver(*items[10:])  # while disconnected
    resumed = await streams(stub, after_sequence=before[-1].postback.sequence)
    after = await resumed.take(11)
    assert mids(before + after) == [f"resume-{i}" for i in range(15)]


async def test_filters_by_account_and_payload_prefix(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    other = await streams(stub, account_ids=[OTHER_ACCOUNT])
    orders = await streams(stub, payload_prefix="ORDER:")
    both = await streams(stub, account_ids=[ACCOUNT], payload_prefix="ORDER:")
    await webhook.deliver(
        postback_item("f1", payload="ORDER:1"),
        postback_item("f2", account=OTHER_ACCOUNT, payload="ORDER:2"),
        postback_item("f3", account=OTHER_ACCOUNT, payload="HELP"),
        postback_item("f4", payload="HELP"),
        postback_item("f5", payload="ORDER:5"),
    )
    assert mids(await other.take(2)) == ["f2", "f3"]
    assert mids(await orders.take(3)) == ["f1", "f2", "f5"]
    assert mids(await both.take(2)) == ["f1", "f5"]


async def test_start_positions(stub: Stub, streams: Streams, webhook: WebhookClient) -> None:
    await webhook.deliver(*postbacks("old", 3))
    latest = await streams(stub)  # the default
    explicit_latest = await streams(stub, position=pb.START_POSITION_LATEST)
    earliest = await streams(stub, position=pb.START_POSITION_EARLIEST)
    await webhook.deliver(postback_item("new-0"))
    assert mids(await latest.take(1)) == ["new-0"]
    assert mids(await explicit_latest.take(1)) == ["new-0"]
    everything = await earliest.take(4)
    assert mids(everything) == ["old-0", "old-1", "old-2", "new-0"]

    after = await streams(stub, after_sequence=everything[1].postback.sequence)
    assert mids(await after.take(2)) == ["old-2", "new-0"]

    last = everything[-1].postback.receive_time
    since = await streams(stub, since_time=last)
    first_since = (await since.next()).postback
    assert first_since.receive_time.ToMilliseconds() >= last.ToMilliseconds()
    assert first_since.mid in {"old-2", "new-0"}  # same millisecond as new-0 is possible
    future = timestamp_pb2.Timestamp(seconds=last.seconds + 3600)
    from_future = await streams(stub, since_time=future)
    await webhook.deliver(postback_item("new-1"))
    assert mids(await from_future.take(1)) == ["new-1"]


# --- consumer groups ---


async def test_three_members_divide_the_events_exactly_once(
    app: App, stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    members = [await streams(stub, group="workers", max_unacked=2) for _ in range(3)]
    items = postbacks("work", 30)
    await webhook.deliver(*items)
    received: list[list[pb.SubscribePostbacksResponse]] = [[] for _ in members]

    async def work(index: int) -> None:
        while sum(len(r) for r in received) < 30:
            try:
                message = await members[index].next(0.5)
            except TimeoutError:
                continue
            received[index].append(message)
            await ack(stub, "workers", message)

    await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(3))), 30)
    all_mids = [m for r in received for m in mids(r)]
    assert sorted(all_mids) == sorted(f"work-{i}" for i in range(30))  # each exactly once
    assert all(received), "each member got a share"
    assert {m.delivery_attempt for r in received for m in r} == {1}
    info = await store_of(app).group_info("workers")
    assert info is not None
    assert info.unacked == 0  # nothing left that could be delivered again


async def test_an_unacked_event_is_redelivered_after_the_ack_deadline(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    member = await streams(stub, group="slow", ack_deadline=seconds(1))
    await webhook.deliver(postback_item("late"))
    first = await member.next()
    assert (first.postback.mid, first.delivery_attempt) == ("late", 1)
    # Left to expire: that member is stalled, so another one (or a reconnect) gets it.
    other = await streams(stub, group="slow", ack_deadline=seconds(1))
    again = await other.next()
    assert (again.postback.mid, again.delivery_attempt) == ("late", 2)
    assert again.ack_id != first.ack_id
    stale = await stub.AckPostbacks(pb.AckPostbacksRequest(group="slow", ack_ids=[first.ack_id]))
    assert (stale.applied_count, list(stale.unknown_ack_ids)) == (0, [first.ack_id])
    await ack(stub, "slow", again)


async def test_a_killed_members_unacked_events_go_to_another_member(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    doomed = await streams(stub, group="g", ack_deadline=seconds(1), max_unacked=2)
    await webhook.deliver(*postbacks("kill", 3))
    taken = mids(await doomed.take(2))
    survivor = await streams(stub, group="g", ack_deadline=seconds(1), max_unacked=1)
    await doomed.cancel()  # gone with two events unacknowledged
    attempts: dict[str, int] = {}
    while len(attempts) < 3:
        message = await survivor.next()
        attempts[message.postback.mid] = message.delivery_attempt
        await ack(stub, "g", message)
    (untouched,) = set(attempts) - set(taken)
    assert attempts == {taken[0]: 2, taken[1]: 2, untouched: 1}


async def test_hung_members_leave_the_work_to_a_live_one(
    app: App, stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    # Six clients that take one event each and never ack (frozen but connected), one that
    # acks all: every event reaches the live one, none is dead-lettered.
    # Each hung client holds its one event before the live one joins: a hung client that
    # has not had a delivery yet cannot be told from a live one, so with some still empty
    # an event could pass through five of them in turn (attempts 1 to 5, one first
    # delivery each) and be dead-lettered, as the contract allows.
    hung = [
        await streams(stub, group="hung", ack_deadline=seconds(1), max_unacked=1) for _ in range(6)
    ]
    items = postbacks("hung", 20)
    await webhook.deliver(*items[:6])
    for member in hung:
        await member.next()
    live = await streams(stub, group="hung", ack_deadline=seconds(1))
    await webhook.deliver(*items[6:])
    acked: set[str] = set()
    while len(acked) < 20:
        message = await live.next()
        reply = await stub.AckPostbacks(
            pb.AckPostbacksRequest(group="hung", ack_ids=[message.ack_id])
        )
        if reply.applied_count:
            acked.add(message.postback.mid)
    assert acked == {f"hung-{i}" for i in range(20)}
    assert all(member.queue.empty() for member in hung), "a stalled member got more"
    info = await store_of(app).group_info("hung")
    assert info is not None
    assert (info.dead_lettered, info.unacked) == (0, 0)


async def test_nack_redelivers_at_once(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    member = await streams(stub, group="nackers", ack_deadline=seconds(600))
    await webhook.deliver(postback_item("retry-me"))
    first = await member.next()
    reply = await stub.AckPostbacks(
        pb.AckPostbacksRequest(group="nackers", nack_ids=[first.ack_id])
    )
    assert reply.applied_count == 1
    again = await member.next(5)  # long before the 10 min deadline
    assert (again.postback.mid, again.delivery_attempt) == ("retry-me", 2)


async def test_dead_lettered_after_the_maximum_attempts(
    start_app: AppFactory, webhook_for: Callable[[App], WebhookClient], streams: Streams
) -> None:
    app = await start_app(postbacks={"max_delivery_attempts": 2})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await streams(stub, group="dl", ack_deadline=seconds(1))
        hook = webhook_for(app)
        await hook.deliver(postback_item("poison"))
        first = await member.next()
        await stub.AckPostbacks(pb.AckPostbacksRequest(group="dl", nack_ids=[first.ack_id]))
        second = await member.next()  # attempt 2 of 2; left to expire
        assert second.delivery_attempt == 2
        await hook.deliver(postback_item("healthy"))
        nxt = await member.next()
        assert (nxt.postback.mid, nxt.delivery_attempt) == ("healthy", 1)
        await ack(stub, "dl", nxt)

        async def dead_lettered() -> bool:
            info = await store_of(app).group_info("dl")
            return info is not None and info.dead_lettered == 1 and info.unacked == 0

        await eventually(dead_lettered)  # after poison's 1 s deadline, not redelivered
        assert member.queue.empty()
        await member.cancel()


async def test_max_unacked_holds_back_deliveries(
    stub: Stub, streams: Streams, webhook: WebhookClient
) -> None:
    small = await streams(stub, group="fc", max_unacked=2)
    await webhook.deliver(*postbacks("fc", 5))
    held = await small.take(2)
    # The other three wait for a member with room, so a second member gets exactly those.
    roomy = await streams(stub, group="fc", max_unacked=3)
    rest = await roomy.take(3)
    assert sorted(mids(held + rest)) == [f"fc-{i}" for i in range(5)]
    # Both are full. An ack frees one slot of the small member: it gets one more, no more.
    await ack(stub, "fc", held[0])
    await webhook.deliver(postback_item("fc-5"), postback_item("fc-6"))
    assert (await small.next()).postback.mid == "fc-5"
    await ack(stub, "fc", rest[0])
    assert (await roomy.next()).postback.mid == "fc-6"


async def test_group_state_survives_an_app_restart(
    start_app: AppFactory, webhook_for: Callable[[App], WebhookClient], streams: Streams
) -> None:
    app = await start_app()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await streams(
            stub, group="durable", position=pb.START_POSITION_EARLIEST, ack_deadline=seconds(1)
        )
        await webhook_for(app).deliver(*postbacks("d", 4))
        got = await member.take(4)
        await ack(stub, "durable", got[0], got[1])
        await member.cancel()
    await app.stop()  # d-2 and d-3 stay unacknowledged

    app = await start_app()
    await webhook_for(app).deliver(postback_item("d-4"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await streams(
            stub, group="durable", position=pb.START_POSITION_LATEST, ack_deadline=seconds(1)
        )
        after = []
        for _ in range(3):  # acked as they come: a member that lets one expire gets no more
            after.append(await member.next())
            await ack(stub, "durable", after[-1])
        assert {m.postback.mid: m.delivery_attempt for m in after} == {
            "d-4": 1,
            "d-2": 2,
            "d-3": 2,
        }
        await member.cancel()


async def test_ack_reports_unknown_ids(stub: Stub, streams: Streams) -> None:
    await streams(stub, group="known")
    reply = await stub.AckPostbacks(
        pb.AckPostbacksRequest(group="known", ack_ids=["nope"], nack_ids=["nada"])
    )
    assert (reply.applied_count, list(reply.unknown_ack_ids)) == (0, ["nope", "nada"])


# --- invalid requests ---


async def test_invalid_subscription_lists_every_violation(stub: Stub) -> None:
    call = stub.SubscribePostbacks(
        pb.SubscribePostbacksRequest(
            account_ids=["ok", "bad id!"],
            payload_prefix="x" * 1001,
            ack_deadline=seconds(0.5),
            max_unacked=5,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = details(caught.value)
    assert reason == "INVALID_REQUEST"
    assert sorted(fields) == ["account_ids[1]", "ack_deadline", "max_unacked", "payload_prefix"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"group": "no spaces"}, "group"),
        ({"group": "g" * 65}, "group"),
        ({"group": "g", "ack_deadline": seconds(601)}, "ack_deadline"),
        ({"group": "g", "max_unacked": 10_001}, "max_unacked"),
        ({"after_sequence": 2**63}, "after_sequence"),
        ({"position": 7}, "position"),
        ({"since_time": timestamp_pb2.Timestamp(seconds=-1)}, "since_time"),
    ],
)
async def test_invalid_subscription_fields(
    stub: Stub, request_fields: dict[str, object], field: str
) -> None:
    call = stub.SubscribePostbacks(pb.SubscribePostbacksRequest(**request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value) == ("INVALID_REQUEST", [field])


async def test_group_members_must_share_the_groups_filters(stub: Stub, streams: Streams) -> None:
    await streams(stub, group="fixed", payload_prefix="ORDER:")
    call = stub.SubscribePostbacks(pb.SubscribePostbacksRequest(group="fixed"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value) == ("INVALID_REQUEST", ["group"])
    assert "ORDER:" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"ack_ids": ["a"]}, ["group"]),
        ({"group": "g"}, ["ack_ids"]),
        (
            {"group": "g", "ack_ids": ["", "x" * 129], "nack_ids": [""]},
            ["ack_ids[0]", "ack_ids[1]", "nack_ids[0]"],
        ),
    ],
)
async def test_invalid_ack_requests(
    stub: Stub, request_fields: dict[str, object], fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AckPostbacks(pb.AckPostbacksRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value) == ("INVALID_REQUEST", fields)
