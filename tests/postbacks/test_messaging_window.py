"""The messaging window, on every engine: webhooks record when each person last wrote,
GetMessagingWindow reports it, and ``send.messaging_window_check: enforce`` refuses a send
whose window is known closed without reaching Meta (the sandbox)."""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from igbutton.v1 import button_template_pb2, send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.storage.sqlite.idempotency import SqliteIdempotencyStore
from igbutton_server.storage.sqlite.windows import SqliteWindowLedger
from tests.conftest import SettingsFactory, starting_apps
from tests.postbacks.conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    AppFactory,
    WebhookClient,
    delivery,
    postback_item,
    postback_overrides,
    webhook_url,
)
from tests.send.conftest import details, send_request

HOUR_MS = 3600 * 1000
S = send_service_pb2


def message_item(sender: str, timestamp: int, *, echo: bool = False) -> dict[str, Any]:
    """A ``messaging`` item of a text message (an echo: the business's own)."""
    people = {"sender": {"id": sender}, "recipient": {"id": ACCOUNT}}
    if echo:
        people = {"sender": {"id": ACCOUNT}, "recipient": {"id": sender}}
    message: dict[str, Any] = {"mid": f"msg-{sender}-{timestamp}", "text": "hello"}
    if echo:
        message["is_echo"] = True
    return {**people, "timestamp": timestamp, "message": message}


def read_item(sender: str, timestamp: int) -> dict[str, Any]:
    return {
        "sender": {"id": sender},
        "recipient": {"id": ACCOUNT},
        "timestamp": timestamp,
        "read": {"mid": "x"},
    }


@pytest.fixture
async def enforcing(start_app: AppFactory) -> App:
    return await start_app(send={"messaging_window_check": "enforce"})


@pytest.fixture
async def sender(enforcing: App) -> AsyncIterator[send_service_pb2_grpc.SendServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{enforcing.ports.grpc}") as channel:
        yield send_service_pb2_grpc.SendServiceStub(channel)


def iso(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_webhooks_open_windows_and_enforce_refuses_a_closed_one_without_meta(
    enforcing: App, sender: send_service_pb2_grpc.SendServiceStub, http: Any
) -> None:
    webhook = WebhookClient(http, webhook_url(enforcing))
    now = int(time.time() * 1000)
    tapped, wrote, closed = now - HOUR_MS, now - 2 * HOUR_MS, now - 25 * HOUR_MS
    await webhook.deliver(
        postback_item("w1", sender="1000000000000001", timestamp=tapped),
        postback_item("w2", sender="1000000000000003", timestamp=closed),
    )
    # Messages, echoes and receipts arrive the same way; only the person's own count.
    status, _ = await webhook.post(
        delivery(
            message_item("1000000000000002", wrote),
            message_item("1000000000000004", now, echo=True),
            read_item("1000000000000005", now),
        )
    )
    assert status == 200

    async def window(person: str) -> S.GetMessagingWindowResponse:
        return await sender.GetMessagingWindow(
            S.GetMessagingWindowRequest(account_id=ACCOUNT, recipient_id=person)
        )

    opened = await window("1000000000000001")
    assert (opened.state, opened.human_agent_state) == (
        S.MESSAGING_WINDOW_STATE_OPEN,
        S.MESSAGING_WINDOW_STATE_OPEN,
    )
    assert opened.last_message_time.ToMilliseconds() == tapped
    assert opened.close_time.ToMilliseconds() == tapped + 24 * HOUR_MS
    assert opened.human_agent_close_time.ToMilliseconds() == tapped + 7 * 24 * HOUR_MS
    assert (await window("1000000000000002")).state == S.MESSAGING_WINDOW_STATE_OPEN
    for unseen in ("1000000000000004", "1000000000000005", "1000000000000009"):
        unknown = await window(unseen)
        assert unknown.state == S.MESSAGING_WINDOW_STATE_UNKNOWN
        assert not unknown.HasField("close_time")
    shut = await window("1000000000000003")
    assert (shut.state, shut.human_agent_state) == (
        S.MESSAGING_WINDOW_STATE_CLOSED,
        S.MESSAGING_WINDOW_STATE_OPEN,
    )

    sandbox = enforcing.sandbox
    assert sandbox is not None
    before = len(sandbox.received)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sender.SendButtonTemplate(
            send_request(account_id=ACCOUNT, recipient_id="1000000000000003")
        )
    error = details(refused.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "OUTSIDE_MESSAGING_WINDOW",
    )
    assert error.metadata == {"window_closed_at": iso(closed + 24 * HOUR_MS)}
    assert len(sandbox.received) == before  # Meta was not asked

    # HUMAN_AGENT's 7 days are open; an unknown person is Meta's to decide; so is an open one.
    for request in (
        send_request(
            account_id=ACCOUNT,
            recipient_id="1000000000000003",
            tag=button_template_pb2.MESSAGE_TAG_HUMAN_AGENT,
        ),
        send_request(account_id=ACCOUNT, recipient_id="1000000000000009"),
        send_request(account_id=ACCOUNT, recipient_id="1000000000000001"),
    ):
        sent = await sender.SendButtonTemplate(request)
        assert sent.message_id
    assert [r.recipient_id for r in sandbox.received[before:]] == [
        "1000000000000003",
        "1000000000000009",
        "1000000000000001",
    ]

    # The person writes again: the window opens, the send goes; a late older item does not
    # close it again.
    await webhook.deliver(postback_item("w3", sender="1000000000000003", timestamp=now))
    await webhook.deliver(postback_item("w4", sender="1000000000000003", timestamp=closed))
    assert (await window("1000000000000003")).last_message_time.ToMilliseconds() == now
    assert (
        await sender.SendButtonTemplate(
            send_request(account_id=ACCOUNT, recipient_id="1000000000000003")
        )
    ).message_id


async def test_with_the_check_off_meta_decides(start_app: AppFactory, webhook_for: Any) -> None:
    app = await start_app()
    webhook: WebhookClient = webhook_for(app)
    closed = int(time.time() * 1000) - 25 * HOUR_MS
    await webhook.deliver(postback_item("w1", sender="1000000000000003", timestamp=closed))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        window = await stub.GetMessagingWindow(
            S.GetMessagingWindowRequest(account_id=ACCOUNT, recipient_id="1000000000000003")
        )
        assert window.state == S.MESSAGING_WINDOW_STATE_CLOSED
        sent = await stub.SendButtonTemplate(
            send_request(account_id=ACCOUNT, recipient_id="1000000000000003")
        )
    assert sent.message_id  # the sandbox, like Meta without a window rule, accepted it


async def test_a_caller_reads_windows_only_of_its_accounts(start_app: AppFactory) -> None:
    token = "orders-service-token-0123456789"
    app = await start_app(callers=[{"name": "orders", "token": token, "accounts": [ACCOUNT]}])
    auth = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        mine = await stub.GetMessagingWindow(
            S.GetMessagingWindowRequest(account_id=ACCOUNT, recipient_id="1000000000000001"),
            metadata=auth,
        )
        assert mine.state == S.MESSAGING_WINDOW_STATE_UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetMessagingWindow(
                S.GetMessagingWindowRequest(
                    account_id=OTHER_ACCOUNT, recipient_id="1000000000000001"
                ),
                metadata=auth,
            )
        error = details(refused.value)
        assert (error.code, error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ACCOUNT_NOT_ALLOWED",
        )
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.GetMessagingWindow(
                S.GetMessagingWindowRequest(account_id=ACCOUNT), metadata=auth
            )
        assert details(invalid.value).violations[0][0] == "recipient_id"


@pytest.mark.parametrize("loop_late", [False, True], ids=["prompt", "late-loop"])
async def test_a_delivery_and_the_windows_it_opens_share_one_sqlite_commit(
    make_settings: SettingsFactory, http: Any, monkeypatch: pytest.MonkeyPatch, loop_late: bool
) -> None:
    # The postbacks and the windows they open are both stored before the 200: in one
    # commit (one fsync), not one after the other. Even when the event loop is held up
    # between queueing the two (any call that lets another thread have the GIL does that):
    # the writer, awake for the first, must not commit it alone.
    if loop_late:
        note = SqliteWindowLedger.note

        async def late_note(self: SqliteWindowLedger, seen: Any) -> None:
            time.sleep(0.002)  # noqa: ASYNC251 - holding up the loop is the point
            await note(self, seen)

        monkeypatch.setattr(SqliteWindowLedger, "note", late_note)
    async with starting_apps(lambda **o: make_settings(**postback_overrides(), **o)) as start:
        app = await start()
        assert app.send is not None
        file = app.send.store
        assert isinstance(file, SqliteIdempotencyStore)  # the file's writer, shared
        webhook = WebhookClient(http, webhook_url(app))
        now = int(time.time() * 1000)
        await webhook.deliver(postback_item("warm", sender="1000000000000001", timestamp=now))
        for n in range(5):
            before, jobs = file.commits, file.jobs
            await webhook.deliver(
                postback_item(f"one-{n}", sender="1000000000000002", timestamp=now + n)
            )
            assert (file.jobs - jobs, file.commits - before) == (2, 1)
