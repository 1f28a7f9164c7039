"""Caller tokens on the postback side: a caller reads and acknowledges only its accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from prometheus_client import REGISTRY

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
    store_of,
)
from tests.postbacks.test_streams import details

Streams = Callable[..., Awaitable[Stream]]
ORDERS_TOKEN = "orders-service-token-0123456789"
ADMIN_TOKEN = "admin-service-token-0123456789"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    return await start_app(
        callers=[
            {"name": "orders", "token": ORDERS_TOKEN, "accounts": [ACCOUNT]},
            {"name": "admin", "token": ADMIN_TOKEN, "accounts": ["*"]},
        ]
    )


@pytest.fixture
async def stub(app: App) -> AsyncIterator[postback_service_pb2_grpc.PostbackServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        yield postback_service_pb2_grpc.PostbackServiceStub(channel)


async def _error_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()  # type: ignore[attr-defined]
    return caught.value


async def test_a_caller_reads_only_its_accounts(
    stub: postback_service_pb2_grpc.PostbackServiceStub, webhook: WebhookClient
) -> None:
    orders = Stream(
        stub.SubscribePostbacks(pb.SubscribePostbacksRequest(), metadata=bearer(ORDERS_TOKEN))
    )
    admin = Stream(
        stub.SubscribePostbacks(pb.SubscribePostbacksRequest(), metadata=bearer(ADMIN_TOKEN))
    )
    try:
        for stream in (orders, admin):
            await stream.call.initial_metadata()
        await webhook.deliver(postback_item("theirs", account=OTHER_ACCOUNT), postback_item("ours"))
        assert (await orders.next()).postback.mid == "ours"
        assert [m.postback.mid for m in await admin.take(2)] == ["theirs", "ours"]
    finally:
        await orders.cancel()
        await admin.cancel()


async def test_a_caller_may_not_ask_for_another_account(
    stub: postback_service_pb2_grpc.PostbackServiceStub,
) -> None:
    call = stub.SubscribePostbacks(
        pb.SubscribePostbacksRequest(account_ids=[ACCOUNT, OTHER_ACCOUNT]),
        metadata=bearer(ORDERS_TOKEN),
    )
    error = await _error_of(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(error)[0] == "ACCOUNT_NOT_ALLOWED"


async def test_no_token_no_stream(stub: postback_service_pb2_grpc.PostbackServiceStub) -> None:
    error = await _error_of(stub.SubscribePostbacks(pb.SubscribePostbacksRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_caller_acks_only_in_its_own_groups(
    stub: postback_service_pb2_grpc.PostbackServiceStub, webhook: WebhookClient
) -> None:
    admin_member = Stream(
        stub.SubscribePostbacks(
            pb.SubscribePostbacksRequest(group="all"), metadata=bearer(ADMIN_TOKEN)
        )
    )
    try:
        await admin_member.call.initial_metadata()
        await webhook.deliver(postback_item("ours"))
        held = await admin_member.next()
        # "all" names orders' own group, which does not exist: admin's stays untouched.
        reply = await stub.AckPostbacks(
            pb.AckPostbacksRequest(group="all", ack_ids=[held.ack_id]),
            metadata=bearer(ORDERS_TOKEN),
        )
        assert list(reply.unknown_ack_ids) == [held.ack_id]
        reply = await stub.AckPostbacks(
            pb.AckPostbacksRequest(group="all", ack_ids=[held.ack_id]),
            metadata=bearer(ADMIN_TOKEN),
        )
        assert reply.applied_count == 1
    finally:
        await admin_member.cancel()


async def test_a_caller_whose_accounts_were_narrowed_may_not_ack_in_its_wider_group(
    start_app: AppFactory,
) -> None:
    wide = await start_app(callers=[{"name": "orders", "token": ORDERS_TOKEN}])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{wide.ports.grpc}") as channel:
        member = Stream(
            postback_service_pb2_grpc.PostbackServiceStub(channel).SubscribePostbacks(
                pb.SubscribePostbacksRequest(group="all"), metadata=bearer(ORDERS_TOKEN)
            )
        )
        await member.call.initial_metadata()
        await member.cancel()
    await wide.stop()
    narrow = await start_app(
        callers=[{"name": "orders", "token": ORDERS_TOKEN, "accounts": [ACCOUNT]}]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{narrow.ports.grpc}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await postback_service_pb2_grpc.PostbackServiceStub(channel).AckPostbacks(
                pb.AckPostbacksRequest(group="all", ack_ids=["x"]), metadata=bearer(ORDERS_TOKEN)
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- each caller has its own group names ---

BILLING_TOKEN = "billing-service-token-0123456789"


TWO_CALLERS = [
    {"name": "orders", "token": ORDERS_TOKEN, "accounts": [ACCOUNT]},
    {"name": "billing", "token": BILLING_TOKEN, "accounts": [OTHER_ACCOUNT]},
]


@pytest.fixture
async def two_callers(start_app: AppFactory) -> App:
    """orders may use ACCOUNT, billing OTHER_ACCOUNT."""
    return await start_app(callers=TWO_CALLERS)


async def _join(
    stub: postback_service_pb2_grpc.PostbackServiceStub, token: str, **fields: object
) -> Stream:
    stream = Stream(
        stub.SubscribePostbacks(pb.SubscribePostbacksRequest(**fields), metadata=bearer(token))
    )
    await stream.call.initial_metadata()
    return stream


async def test_two_callers_each_have_their_own_group_g(
    two_callers: App, webhook_for: Callable[[App], WebhookClient]
) -> None:
    webhook = webhook_for(two_callers)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{two_callers.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        orders = await _join(stub, ORDERS_TOKEN, group="g")
        # Other filters than orders' "g": not refused, and nothing of orders' is said.
        billing = await _join(stub, BILLING_TOKEN, group="g", payload_prefix="INV:")
        try:
            await webhook.deliver(postback_item("orders-1"))
            await webhook.deliver(
                postback_item("billing-1", account=OTHER_ACCOUNT, payload="INV:1")
            )
            got = await orders.next()
            assert got.postback.mid == "orders-1"
            assert (await billing.next()).postback.mid == "billing-1"  # never orders-1
            # Acks resolve "g" in the caller's own scope.
            reply = await stub.AckPostbacks(
                pb.AckPostbacksRequest(group="g", ack_ids=[got.ack_id]),
                metadata=bearer(BILLING_TOKEN),
            )
            assert list(reply.unknown_ack_ids) == [got.ack_id]
            reply = await stub.AckPostbacks(
                pb.AckPostbacksRequest(group="g", ack_ids=[got.ack_id]),
                metadata=bearer(ORDERS_TOKEN),
            )
            assert reply.applied_count == 1
            # Inside one scope the mismatch is told, with that scope's filters only.
            mismatch = Stream(
                stub.SubscribePostbacks(
                    pb.SubscribePostbacksRequest(group="g"), metadata=bearer(BILLING_TOKEN)
                )
            )
            error = await mismatch.end()
            assert error is not None
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            message = error.details() or ""
            assert "INV:" in message
            assert OTHER_ACCOUNT in message
            assert ACCOUNT not in message.replace(OTHER_ACCOUNT, "")
        finally:
            await orders.cancel()
            await billing.cancel()


async def test_a_caller_has_at_most_max_groups_per_caller(start_app: AppFactory) -> None:
    app = await start_app(callers=TWO_CALLERS, postbacks={"max_groups_per_caller": 3})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        opened = [await _join(stub, ORDERS_TOKEN, group=f"g{i}") for i in range(3)]
        try:
            refused = Stream(
                stub.SubscribePostbacks(
                    pb.SubscribePostbacksRequest(group="g3"), metadata=bearer(ORDERS_TOKEN)
                )
            )
            error = await refused.end()
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_groups_per_caller" in (error.details() or "")
            assert details(error)[1] == ["group"]
            # Its own groups may still be joined; another caller has its own allowance.
            opened.append(await _join(stub, ORDERS_TOKEN, group="g0"))
            opened.extend([await _join(stub, BILLING_TOKEN, group=f"g{i}") for i in range(3)])
        finally:
            for stream in opened:
                await stream.cancel()


async def test_an_idle_group_is_removed_after_the_idle_retention(start_app: AppFactory) -> None:
    app = await start_app(
        postbacks={"group_idle_retention_seconds": 1, "prune_interval_seconds": 0.1}
    )
    store = store_of(app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await _join(stub, "unused-in-open-mode-0123", group="short-lived")
        assert await store.group_info("short-lived") is not None
        await member.cancel()

    async def gone() -> bool:
        # Its series too. On NATS the server shows the group gone a moment before the store
        # that deletes it hears so and drops the series: seen apart, the two race.
        if await store.group_info("short-lived") is not None:
            return False
        return (
            REGISTRY.get_sample_value("igbutton_postbacks_unacked", {"group": "short-lived"})
            is None
        )

    await eventually(gone)
