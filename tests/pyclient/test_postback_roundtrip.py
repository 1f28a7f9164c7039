"""Subscriptions and groups through the Python clients against a real App: a tapped postback
arrives, a server restart is survived without a gap or a duplicate, and the group helper
acknowledges after its handler (and nacks when it raises)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from igbutton import (
    AsyncClient,
    Client,
    InvalidRequestError,
    Postback,
    PostbackButton,
    ReconnectPolicy,
    template,
)
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from tests.pyclient.conftest import AppFactory

RECIPIENT = "1234567890123456"
FAST_RECONNECT = ReconnectPolicy(initial_backoff=0.05, max_backoff=0.5)
# Reconnect to a restarted server promptly (gRPC's own default first backoff is 1 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def addr(app: App) -> str:
    return f"127.0.0.1:{app.ports.grpc}"


async def send_and_tap(app: App, client: AsyncClient, payload: str, taps: int = 1) -> str:
    """Send a one-button template and tap it ``taps`` times; returns the message id."""
    message = template("Pick", PostbackButton("Go", payload))
    sent = await client.send_button_template(RECIPIENT, message)
    assert app.sandbox is not None
    for _ in range(taps):
        result = await app.sandbox.tap(sent.message_id, 0)
        assert result.webhook_status == 200, result
    return sent.message_id


async def test_a_tapped_postback_reaches_an_async_subscriber(app: App) -> None:
    async with (
        AsyncClient(addr(app)) as client,
        client.subscribe(payload_prefix="ANSWER_") as subscription,
    ):
        await subscription.wait_subscribed()  # start "latest" is now fixed
        await send_and_tap(app, client, "OTHER")  # filtered out by the prefix
        await send_and_tap(app, client, "ANSWER_YES")
        postback = await asyncio.wait_for(anext(subscription), 30)
    assert isinstance(postback, Postback)
    assert postback.payload == "ANSWER_YES"
    assert postback.title == "Go"
    assert postback.account_id == SANDBOX_ACCOUNT_ID
    assert postback.sender_id == RECIPIENT
    assert postback.sequence >= 1
    assert postback.receive_time is not None
    assert postback.ack_id == ""
    assert postback.standby is False
    assert postback.test is False
    assert subscription.last_sequence == postback.sequence


async def test_a_standby_postback_arrives_marked_standby(app: App) -> None:
    # Delivered in `standby` (another app holds the conversation), as Meta does.
    item = {
        "sender": {"id": RECIPIENT},
        "recipient": {"id": SANDBOX_ACCOUNT_ID},
        "timestamp": 1_502_905_976_377,
        "postback": {"mid": "py-standby", "title": "Go", "payload": "STANDBY_1"},
    }
    entry = {"id": SANDBOX_ACCOUNT_ID, "time": int(time.time() * 1000), "standby": [item]}
    assert app.sandbox is not None
    async with (
        AsyncClient(addr(app)) as client,
        client.subscribe(payload_prefix="STANDBY_") as subscription,
    ):
        await subscription.wait_subscribed()
        body = json.dumps({"object": "instagram", "entry": [entry]}).encode()
        assert await app.sandbox.deliver(body) == 200
        postback = await asyncio.wait_for(anext(subscription), 30)
    assert (postback.mid, postback.standby) == ("py-standby", True)
    assert postback.to_dict()["standby"] is True


async def test_a_dashboard_test_delivery_arrives_marked_test(app: App) -> None:
    assert app.sandbox is not None
    async with (
        AsyncClient(addr(app)) as client,
        client.subscribe(payload_prefix="DASHBOARD_") as subscription,
    ):
        await subscription.wait_subscribed()
        assert await app.sandbox.send_test_delivery(payload="DASHBOARD_TEST") == 200
        postback = await asyncio.wait_for(anext(subscription), 30)
    assert (postback.payload, postback.test, postback.standby) == ("DASHBOARD_TEST", True, False)
    assert postback.to_dict()["test"] is True


async def test_the_sync_subscription_in_a_thread(app: App) -> None:
    async with AsyncClient(addr(app)) as sender:
        await send_and_tap(app, sender, "SYNC_1")

    def read_one() -> Postback:
        with Client(addr(app)) as client, client.subscribe(start="earliest") as subscription:
            return next(subscription)

    postback = await asyncio.wait_for(asyncio.to_thread(read_one), 30)
    assert postback.payload == "SYNC_1"


async def test_resume_after_a_server_restart_without_gap_or_duplicate(
    start_app: AppFactory,
) -> None:
    first = await start_app()
    port = first.ports.grpc
    seen: list[int] = []
    disconnects: list[str] = []
    async with AsyncClient(
        f"127.0.0.1:{port}", reconnect=FAST_RECONNECT, options=CHANNEL_OPTIONS
    ) as client:
        subscription = client.subscribe(
            start="earliest", on_disconnect=lambda err, _delay: disconnects.append(err.code.name)
        )
        async with subscription:
            await send_and_tap(first, client, "BEFORE", taps=2)
            for _ in range(2):
                postback = await asyncio.wait_for(anext(subscription), 30)
                seen.append(postback.sequence)

            # While the subscriber is not reading: stop the server, start a new one on the
            # same port and SQLite file, and store more postbacks. The subscriber must pick up
            # exactly those, resuming after the last sequence it saw.
            await first.stop()
            second = await start_app(grpc={"listen": f"127.0.0.1:{port}"})
            await send_and_tap(second, client, "AFTER", taps=3)
            payloads = []
            for _ in range(3):
                postback = await asyncio.wait_for(anext(subscription), 30)
                seen.append(postback.sequence)
                payloads.append(postback.payload)
    assert payloads == ["AFTER"] * 3
    assert seen == sorted(set(seen))  # strictly increasing: nothing twice
    assert len(seen) == 5  # nothing missed
    assert "UNAVAILABLE" in disconnects


async def test_consume_acknowledges_after_the_handler_and_nacks_on_failure(app: App) -> None:
    handled: list[tuple[int, int, str]] = []
    failed_once = False

    async def handler(postback: Postback) -> None:
        nonlocal failed_once
        handled.append((postback.sequence, postback.delivery_attempt, postback.ack_id))
        if not failed_once:
            failed_once = True
            raise RuntimeError("first attempt fails")

    async with AsyncClient(addr(app)) as client:
        await send_and_tap(app, client, "GROUP_1")
        count = await asyncio.wait_for(
            client.consume("pyclient", handler, start="earliest", max_messages=2), 30
        )
        # The nack made the postback come again at once, as attempt 2, which was acked:
        # acknowledging its ack id again is refused as already acknowledged.
        again = await client.ack("pyclient", [handled[1][2]])
    assert count == 2
    assert [(seq, attempt) for seq, attempt, _ in handled] == [
        (handled[0][0], 1),
        (handled[0][0], 2),
    ]
    assert again.applied_count == 0
    assert again.unknown_ack_ids == (handled[1][2],)


async def test_closing_a_subscription_ends_a_pending_read(app: App) -> None:
    async with AsyncClient(addr(app)) as client:
        subscription = client.subscribe()
        await subscription.wait_subscribed()
        reader = asyncio.ensure_future(anext(subscription))
        await subscription.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reader, 10)


async def test_a_non_retryable_stream_error_is_raised_typed(app: App) -> None:
    async with AsyncClient(addr(app)) as client:
        subscription = client.subscribe(group="bad group name!")
        with pytest.raises(InvalidRequestError) as caught:
            await asyncio.wait_for(anext(subscription), 10)
        # The subscription is over: no silent reconnect with the same bad request.
        with pytest.raises(StopAsyncIteration):
            await anext(subscription)
        await subscription.aclose()
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert any(v.field == "group" for v in caught.value.violations)


async def test_subscribers_reconnecting_at_once_survive_a_server_cancelling_some(
    start_app: AppFactory,
) -> None:
    # Room for 2 calls not yet picked up: grpc cancels most of a burst (as its default 1000
    # and 3000 did to a restart's reconnects); every subscription must retry and get in.
    app = await start_app(grpc={"max_pending_rpcs": 2})
    disconnects: list[str] = []
    async with AsyncClient(addr(app), reconnect=FAST_RECONNECT) as client:
        subscriptions = [
            client.subscribe(on_disconnect=lambda err, _delay: disconnects.append(err.code.name))
            for _ in range(300)
        ]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.wait_subscribed() for s in subscriptions)), 60
            )
        finally:
            for subscription in subscriptions:
                await subscription.aclose()
    assert "CANCELLED" in disconnects  # the server did cancel some: the case was exercised
    assert set(disconnects) == {"CANCELLED"}
