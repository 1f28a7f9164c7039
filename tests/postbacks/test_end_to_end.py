"""The whole loop on loopback: a button template sent to the sandbox, a person tapping its
postback button, the signed webhook, the log, and a subscriber's stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import grpc

from igbutton.v1 import (
    button_template_pb2,
    postback_service_pb2_grpc,
    send_service_pb2,
    send_service_pb2_grpc,
)
from igbutton_server.app import SANDBOX_ACCESS_TOKEN, SANDBOX_ACCOUNT_ID, App
from tests.postbacks.conftest import AppFactory, Stream

Streams = Callable[..., Awaitable[Stream]]
RECIPIENT = "987654321098765"


def _button_template() -> dict[str, object]:
    return {
        "recipient": {"id": RECIPIENT},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": "What next?",
                    "buttons": [
                        {"type": "web_url", "url": "https://www.instagram.com", "title": "Visit"},
                        {"type": "postback", "payload": "ORDER:42", "title": "Order"},
                    ],
                },
            }
        },
    }


async def test_a_sandbox_tap_reaches_a_subscriber(
    start_app: AppFactory, http: aiohttp.ClientSession, streams: Streams
) -> None:
    # No app secret configured: sandbox mode makes one up and signs taps with it.
    app = await start_app(webhook={"app_secrets": []})
    assert app.sandbox is not None
    url = f"{app.sandbox.url}/{app.settings.graph.api_version}/{SANDBOX_ACCOUNT_ID}/messages"
    headers = {"Authorization": f"Bearer {SANDBOX_ACCESS_TOKEN}"}
    async with http.post(url, json=_button_template(), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        message_id = (await resp.json())["message_id"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        subscriber = await streams(stub, payload_prefix="ORDER:")
        tap = await app.sandbox.tap(message_id, button_index=1)
        assert tap.webhook_status == 200, tap.webhook_error
        got = (await subscriber.next()).postback
        assert (got.mid, got.payload, got.title) == (tap.mid, "ORDER:42", "Order")
        assert (got.account_id, got.sender_id) == (SANDBOX_ACCOUNT_ID, RECIPIENT)


async def test_send_then_tap_then_stream(
    app: App, channel: grpc.aio.Channel, streams: Streams
) -> None:

    assert app.sandbox is not None
    subscriber = await streams(postback_service_pb2_grpc.PostbackServiceStub(channel))
    sent = await send_service_pb2_grpc.SendServiceStub(channel).SendButtonTemplate(
        send_service_pb2.SendButtonTemplateRequest(
            account_id=SANDBOX_ACCOUNT_ID,
            recipient_id=RECIPIENT,
            template=button_template_pb2.ButtonTemplate(
                text="What next?",
                buttons=[
                    button_template_pb2.Button(
                        title="Visit",
                        url=button_template_pb2.UrlAction(url="https://www.instagram.com"),
                    ),
                    button_template_pb2.Button(
                        title="Order",
                        postback=button_template_pb2.PostbackAction(payload="ORDER:42"),
                    ),
                ],
            ),
        )
    )
    assert sent.message_id
    tap = await app.sandbox.tap(sent.message_id, button_index=1)
    assert tap.webhook_status == 200, tap.webhook_error
    got = (await subscriber.next()).postback
    assert (got.mid, got.payload, got.title) == (tap.mid, "ORDER:42", "Order")
    assert (got.account_id, got.sender_id) == (SANDBOX_ACCOUNT_ID, RECIPIENT)
