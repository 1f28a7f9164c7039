"""Caller tokens on the postback side: a caller reads and acknowledges only its accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from igbutton.v1 import postback_service_pb2 as pb
from igbutton.v1 import postback_service_pb2_grpc
from igbutton_server.app import App
from tests.postbacks.conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    AppFactory,
    Stream,
    WebhookClient,
    postback_item,
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


async def test_a_caller_acks_only_in_groups_of_its_accounts(
    stub: postback_service_pb2_grpc.PostbackServiceStub,
) -> None:
    admin_member = Stream(
        stub.SubscribePostbacks(
            pb.SubscribePostbacksRequest(group="all"), metadata=bearer(ADMIN_TOKEN)
        )
    )
    try:
        await admin_member.call.initial_metadata()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AckPostbacks(
                pb.AckPostbacksRequest(group="all", ack_ids=["x"]), metadata=bearer(ORDERS_TOKEN)
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.AckPostbacks(
            pb.AckPostbacksRequest(group="all", ack_ids=["x"]), metadata=bearer(ADMIN_TOKEN)
        )
        assert list(reply.unknown_ack_ids) == ["x"]
    finally:
        await admin_member.cancel()
