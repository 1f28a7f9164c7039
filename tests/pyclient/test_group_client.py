"""GroupService and the messaging window through the asyncio client against a real App:
the typed values come back, and a group's errors are the client's own classes."""

from __future__ import annotations

import asyncio

import pytest

from igbutton import AsyncClient, DeadLetterPage, Group, MessagingWindow, PostbackButton, template
from igbutton.errors import GroupNotFoundError
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from tests.pyclient.conftest import AppFactory

RECIPIENT = "1234567890123456"


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    # One attempt: a nack dead-letters at once.
    return await start_app(postbacks={"max_delivery_attempts": 1})


async def test_the_async_client_operates_a_group(app: App) -> None:
    assert app.sandbox is not None
    async with (
        AsyncClient(f"127.0.0.1:{app.ports.grpc}") as client,
        client.subscribe(group="answers", ack_deadline=60) as subscription,
    ):
        await subscription.wait_subscribed()
        sent = await client.send_button_template(
            RECIPIENT, template("Pick", PostbackButton("Go", "GO"))
        )
        for _ in range(2):
            assert (await app.sandbox.tap(sent.message_id, 0)).webhook_status == 200
        first = await asyncio.wait_for(anext(subscription), 30)
        second = await asyncio.wait_for(anext(subscription), 30)

        group = await client.get_group("answers")
        assert isinstance(group, Group)
        assert (group.name, group.unacked, group.connected_members) == ("groups/answers", 2, 1)
        assert group.last_delivered_sequence == second.sequence
        assert group.oldest_unacked_age is not None
        assert [g.name for g in await client.list_groups()] == ["groups/answers"]

        extended = await client.modify_ack_deadline("answers", [first.ack_id, "nope"], 120)
        assert (extended.applied_count, extended.unknown_ack_ids) == (1, ("nope",))
        await client.ack("answers", nack_ids=[first.ack_id])  # the only attempt: dead-lettered
        page = await client.list_dead_letters("answers")
        assert isinstance(page, DeadLetterPage)
        assert [(d.postback.sequence, d.reason) for d in page.dead_letters] == [
            (first.sequence, "nacked")
        ]
        assert await client.redrive_dead_letters("answers", [first.sequence]) == 1
        again = await asyncio.wait_for(anext(subscription), 30)
        assert (again.sequence, again.delivery_attempt) == (first.sequence, 1)
        await client.ack("answers", [again.ack_id, second.ack_id])
        assert await client.purge_dead_letters("answers") == 0

        await client.seek_group("answers", after_sequence=first.sequence - 1)
        replayed = [await asyncio.wait_for(anext(subscription), 30) for _ in range(2)]
        assert [p.sequence for p in replayed] == [first.sequence, second.sequence]
        await client.ack("answers", [p.ack_id for p in replayed])
        since = second.receive_time
        assert since is not None
        await client.seek_group("answers", since=since)
        by_time = await asyncio.wait_for(anext(subscription), 30)
        # Received in the same millisecond as the second, the first comes again too.
        expected = first if first.receive_time == since else second
        assert (by_time.sequence, by_time.delivery_attempt) == (expected.sequence, 1)
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.seek_group("answers", since=since.replace(tzinfo=None))

        window = await client.get_messaging_window(RECIPIENT, account_id=SANDBOX_ACCOUNT_ID)
        assert isinstance(window, MessagingWindow)
        assert (window.state, window.human_agent_state) == ("open", "open")
        assert window.close_time is not None
        assert window.last_message_time is not None

        with pytest.raises(GroupNotFoundError):
            await client.get_group("nobody")
