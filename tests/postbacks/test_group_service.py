"""GroupService over gRPC, on every engine: a real App, its webhook and its streams.

The behaviour itself is the GroupOperations contract (test_group_operations); these check
what the RPCs add: resource names, paging, the proto forms, the errors, and callers (an
admin sees only the groups over its accounts, a caller without admin is refused).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY

from igbutton.v1 import group_service_pb2 as gpb
from igbutton.v1 import group_service_pb2_grpc, postback_service_pb2_grpc
from igbutton.v1 import postback_service_pb2 as pb
from igbutton_server.app import App
from tests.postbacks.conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    AppFactory,
    Stream,
    WebhookClient,
    eventually,
    postback_item,
)
from tests.postbacks.test_streams import details

Streams = Callable[..., Awaitable[Stream]]
ADMIN_TOKEN = "admin-service-token-0123456789"
SHOP_ADMIN_TOKEN = "shop-admin-token-0123456789ab"
ORDERS_TOKEN = "orders-service-token-0123456789"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    # One attempt: a nack dead-letters at once.
    return await start_app(postbacks={"max_delivery_attempts": 1})


@pytest.fixture
async def groups(app: App) -> AsyncIterator[group_service_pb2_grpc.GroupServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        yield group_service_pb2_grpc.GroupServiceStub(channel)


async def test_a_group_seen_and_steered_over_grpc(
    stub: postback_service_pb2_grpc.PostbackServiceStub,
    groups: group_service_pb2_grpc.GroupServiceStub,
    webhook: WebhookClient,
    streams: Streams,
) -> None:
    member = await streams(stub, group="orders", account_ids=[ACCOUNT], max_unacked=10)
    await webhook.deliver(*(postback_item(f"m{i}") for i in range(3)))
    got = await member.take(3)
    await stub.AckPostbacks(pb.AckPostbacksRequest(group="orders", ack_ids=[got[0].ack_id]))

    group = (await groups.GetGroup(gpb.GetGroupRequest(name="groups/orders"))).group
    assert (group.name, group.group, group.caller) == ("groups/orders", "orders", "")
    assert list(group.account_ids) == [ACCOUNT]
    assert group.start_position == pb.START_POSITION_LATEST
    assert (group.ack_deadline.seconds, group.max_delivery_attempts) == (30, 1)
    assert group.connected_member_count == 1
    assert group.last_delivered_sequence == got[2].postback.sequence
    assert (group.unacked_count, group.backlog_count, group.dead_letter_count) == (2, 0, 0)
    assert group.HasField("oldest_unacked_age")
    listed = await groups.ListGroups(gpb.ListGroupsRequest())
    assert [g.name for g in listed.groups] == ["groups/orders"]

    # A nack on the only attempt dead-letters; a redrive delivers it again from attempt 1.
    await stub.AckPostbacks(pb.AckPostbacksRequest(group="orders", nack_ids=[got[1].ack_id]))
    dead = await groups.ListDeadLetters(gpb.ListDeadLettersRequest(parent="groups/orders"))
    assert [(d.postback.mid, d.reason, d.delivery_attempts) for d in dead.dead_letters] == [
        ("m1", gpb.DEAD_LETTER_REASON_NACKED, 1)
    ]
    assert dead.next_page_token == ""
    redriven = await groups.RedriveDeadLetters(
        gpb.RedriveDeadLettersRequest(name="groups/orders", sequences=[got[1].postback.sequence])
    )
    assert redriven.redriven_count == 1
    again = await member.next()
    assert (again.postback.mid, again.postback.sequence, again.delivery_attempt) == (
        "m1",
        got[1].postback.sequence,
        1,
    )
    await stub.AckPostbacks(pb.AckPostbacksRequest(group="orders", nack_ids=[again.ack_id]))
    purged = await groups.PurgeDeadLetters(gpb.PurgeDeadLettersRequest(name="groups/orders"))
    assert purged.purged_count == 1

    # ModifyAckDeadline: 0 nacks (here: dead-letters, the only attempt) the one still held.
    modified = await groups.ModifyAckDeadline(
        gpb.ModifyAckDeadlineRequest(
            name="groups/orders",
            ack_ids=[got[2].ack_id, "unknown"],
            ack_deadline=duration_pb2.Duration(seconds=0),
        )
    )
    assert (modified.applied_count, list(modified.unknown_ack_ids)) == (1, ["unknown"])
    group = (await groups.GetGroup(gpb.GetGroupRequest(name="groups/orders"))).group
    assert (group.unacked_count, group.dead_letter_count) == (0, 1)

    # Seek back before m0: all three again, from attempt 1.
    await groups.SeekGroup(
        gpb.SeekGroupRequest(name="groups/orders", after_sequence=got[0].postback.sequence - 1)
    )
    seen = await member.take(3)
    assert [(m.postback.mid, m.delivery_attempt) for m in seen] == [
        ("m0", 1),
        ("m1", 1),
        ("m2", 1),
    ]

    # Delete: refused while the member is connected, then forced (its stream ends).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await groups.DeleteGroup(gpb.DeleteGroupRequest(name="groups/orders"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(refused.value)[0] == "GROUP_HAS_MEMBERS"
    await groups.DeleteGroup(gpb.DeleteGroupRequest(name="groups/orders", force=True))
    assert await member.end() is not None
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await groups.GetGroup(gpb.GetGroupRequest(name="groups/orders"))
    assert (gone.value.code(), details(gone.value)[0]) == (
        grpc.StatusCode.NOT_FOUND,
        "GROUP_NOT_FOUND",
    )


async def test_invalid_requests_name_their_field(
    groups: group_service_pb2_grpc.GroupServiceStub,
) -> None:
    cases = [
        (groups.GetGroup(gpb.GetGroupRequest(name="orders")), "name"),
        (groups.ListDeadLetters(gpb.ListDeadLettersRequest(parent="")), "parent"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value) == ("INVALID_REQUEST", [field])


async def test_paging_of_groups(
    stub: postback_service_pb2_grpc.PostbackServiceStub,
    groups: group_service_pb2_grpc.GroupServiceStub,
    streams: Streams,
) -> None:
    for name in ("a", "b", "c"):
        await (await streams(stub, group=name)).cancel()
    first = await groups.ListGroups(gpb.ListGroupsRequest(page_size=2))
    assert [g.group for g in first.groups] == ["a", "b"]
    rest = await groups.ListGroups(
        gpb.ListGroupsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert ([g.group for g in rest.groups], rest.next_page_token) == (["c"], "")


async def test_callers_need_admin_and_see_only_groups_over_their_accounts(
    start_app: AppFactory,
) -> None:
    app = await start_app(
        callers=[
            {"name": "orders", "token": ORDERS_TOKEN, "accounts": [ACCOUNT]},
            {"name": "ops", "token": ADMIN_TOKEN, "accounts": ["*"], "admin": True},
            {
                "name": "shop-ops",
                "token": SHOP_ADMIN_TOKEN,
                "accounts": [OTHER_ACCOUNT],
                "admin": True,
            },
        ]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        postbacks = postback_service_pb2_grpc.PostbackServiceStub(channel)
        groups = group_service_pb2_grpc.GroupServiceStub(channel)
        member = Stream(
            postbacks.SubscribePostbacks(
                pb.SubscribePostbacksRequest(group="orders"), metadata=bearer(ORDERS_TOKEN)
            )
        )
        try:
            await member.call.initial_metadata()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await groups.ListGroups(gpb.ListGroupsRequest(), metadata=bearer(ORDERS_TOKEN))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert details(refused.value)[0] == "ADMIN_REQUIRED"

            name = "callers/orders/groups/orders"

            async def listed() -> bool:
                found = await groups.ListGroups(
                    gpb.ListGroupsRequest(), metadata=bearer(ADMIN_TOKEN)
                )
                return [g.name for g in found.groups] == [name]

            await eventually(listed)
            got = await groups.GetGroup(
                gpb.GetGroupRequest(name=name), metadata=bearer(ADMIN_TOKEN)
            )
            assert (got.group.caller, list(got.group.account_ids)) == ("orders", [ACCOUNT])
            # An admin of other accounts neither lists nor reaches it.
            other = await groups.ListGroups(
                gpb.ListGroupsRequest(), metadata=bearer(SHOP_ADMIN_TOKEN)
            )
            assert list(other.groups) == []
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await groups.PurgeDeadLetters(
                    gpb.PurgeDeadLettersRequest(name=name), metadata=bearer(SHOP_ADMIN_TOKEN)
                )
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await member.cancel()


def sample(name: str, group: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"group": group})


async def test_group_gauges_follow_the_traffic_without_anyone_asking(
    start_app: AppFactory, webhook_for: Callable[[App], WebhookClient], streams: Streams
) -> None:
    app = await start_app(postbacks={"group_metrics_interval_seconds": 0.1})
    group = f"gauged-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await streams(stub, group=group, max_unacked=1)
        await webhook_for(app).deliver(*(postback_item(f"{group}-{i}") for i in range(3)))
        held = await member.next()

        async def gauged() -> bool:
            return (
                sample("igbutton_group_backlog", group),
                sample("igbutton_postbacks_unacked", group),
            ) == (2.0, 1.0) and (
                sample("igbutton_group_oldest_unacked_age_seconds", group) or 0
            ) > 0

        await eventually(gauged)
        assert held.postback.mid == f"{group}-0"
        await member.cancel()
