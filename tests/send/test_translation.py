"""The exact request Meta receives: URL, JSON body, and where the access token goes."""

from __future__ import annotations

import json

import grpc

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import SANDBOX_ACCESS_TOKEN
from igbutton_server.config import DEFAULT_GRAPH_API_VERSION
from igbutton_server.sandbox import Sandbox
from tests.send.conftest import ACCOUNT, RECIPIENT, SEED_BODY, AppFactory, send_request, stub_for


async def test_seed_example_reaches_meta_exactly(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    reply = await stub.SendButtonTemplate(send_request(), timeout=10)

    [received] = sandbox.received
    assert received.path == f"/{DEFAULT_GRAPH_API_VERSION}/{ACCOUNT}/messages"
    assert received.query == {}
    assert received.auth_header_present
    assert received.token_ok
    assert received.body == SEED_BODY
    # Key order as in the seed, compact UTF-8 JSON.
    assert received.raw_body == json.dumps(SEED_BODY, separators=(",", ":")).encode()
    assert list(received.body) == ["recipient", "message"]
    assert received.accepted
    assert reply.message_id == received.message_id
    assert reply.recipient_id == RECIPIENT


async def test_token_in_query_mode(start_app: AppFactory) -> None:
    app = await start_app(graph={"token_in": "query"})
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(), timeout=10)
    assert app.sandbox is not None
    [received] = app.sandbox.received
    assert not received.auth_header_present
    assert received.query == {"access_token": "<redacted>"}
    assert received.token_ok
    assert received.accepted


async def test_human_agent_tag_adds_messaging_type_and_tag(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    await stub.SendButtonTemplate(send_request(tag=bt.MESSAGE_TAG_HUMAN_AGENT), timeout=10)
    [received] = sandbox.received
    assert received.body == {**SEED_BODY, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    assert list(received.body) == ["recipient", "message", "messaging_type", "tag"]
    assert received.accepted


async def test_validate_returns_the_exact_request_without_sending(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    request = send_service_pb2.ValidateButtonTemplateRequest(
        recipient_id=RECIPIENT, template=send_request().template
    )
    reply = await stub.ValidateButtonTemplate(request, timeout=10)
    assert reply.method == "POST"
    assert reply.url == f"{sandbox.url}/{DEFAULT_GRAPH_API_VERSION}/{ACCOUNT}/messages"
    assert SANDBOX_ACCESS_TOKEN not in reply.url
    assert sandbox.received == []

    await stub.SendButtonTemplate(send_request(), timeout=10)
    assert sandbox.received[0].raw_body == reply.body_json.encode()


async def test_configured_api_version_is_used(start_app: AppFactory) -> None:
    app = await start_app(graph={"api_version": "v26.0"})
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(), timeout=10)
    assert app.sandbox is not None
    assert app.sandbox.received[0].path == f"/v26.0/{ACCOUNT}/messages"


async def test_non_ascii_text_is_sent_as_utf8(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    template = bt.ButtonTemplate(
        text="Qué quieres hacer? \N{GRINNING FACE}",
        buttons=[bt.Button(title="Sí", postback=bt.PostbackAction(payload="ñ"))],
    )
    await stub.SendButtonTemplate(send_request(template=template), timeout=10)
    [received] = sandbox.received
    assert "Qué quieres hacer? \N{GRINNING FACE}".encode() in received.raw_body
    assert received.accepted


async def test_grpc_code_of_success_is_ok(stub: send_service_pb2_grpc.SendServiceStub) -> None:
    call = stub.SendButtonTemplate(send_request(), timeout=10)
    await call
    assert await call.code() == grpc.StatusCode.OK
