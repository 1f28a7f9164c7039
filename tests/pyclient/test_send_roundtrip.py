"""The Python clients against a real igbutton App and its sandbox on loopback: sends,
validation errors with every violation, idempotency, caller tokens, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from igbutton import (
    AsyncClient,
    Client,
    InvalidRequestError,
    PostbackButton,
    Tls,
    UrlButton,
    template,
)
from igbutton.errors import CallerUnauthenticatedError, UnknownAccountError
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from tests.pyclient.conftest import AppFactory
from tests.send.pki import Pki, make_pki

RECIPIENT = "1234567890123456"
SEED = template(
    "What do you want to do next?",
    UrlButton("Visit Instagram", "https://www.instagram.com"),
    PostbackButton("postback button", "postback_payload"),
)
TOKEN = "pyclient-caller-token-0d9e8f"


def addr(app: App) -> str:
    return f"127.0.0.1:{app.ports.grpc}"


async def test_async_send_reaches_the_sandbox(app: App) -> None:
    async with AsyncClient(addr(app)) as client:
        sent = await client.send_button_template(RECIPIENT, SEED)
    assert sent.recipient_id == RECIPIENT
    assert uuid.UUID(sent.request_id).version == 4
    assert app.sandbox is not None
    [record] = app.sandbox.accepted()
    assert record.message_id == sent.message_id
    buttons = record.body["message"]["attachment"]["payload"]["buttons"]
    assert buttons == [
        {"type": "web_url", "url": "https://www.instagram.com", "title": "Visit Instagram"},
        {"type": "postback", "payload": "postback_payload", "title": "postback button"},
    ]


async def test_sync_send_with_a_request_id_sends_once(app: App) -> None:
    rid = str(uuid.uuid4())

    def send_twice() -> tuple[str, str]:
        with Client(addr(app)) as client:
            first = client.send_button_template(
                RECIPIENT, "Pick one", [PostbackButton("Yes", "ANSWER_YES")], request_id=rid
            )
            again = client.send_button_template(
                RECIPIENT, "Pick one", [PostbackButton("Yes", "ANSWER_YES")], request_id=rid
            )
        return first.message_id, again.message_id

    # The blocking client runs off the loop that serves the App.
    first, again = await asyncio.to_thread(send_twice)
    assert first == again
    assert app.sandbox is not None
    assert len(app.sandbox.accepted()) == 1


async def test_invalid_send_raises_with_every_violation(app: App) -> None:
    bad = template(
        "",
        UrlButton("x" * 21, "ftp://example.com"),
        PostbackButton("Yes", ""),
        PostbackButton("A", "A"),
        PostbackButton("B", "B"),
    )
    async with AsyncClient(addr(app)) as client:
        with pytest.raises(InvalidRequestError) as caught:
            await client.send_button_template("", bad)
        with pytest.raises(InvalidRequestError) as validated:
            await client.validate_button_template("", bad)
    err = caught.value
    fields = {v.field for v in err.violations}
    assert {
        "recipient_id",
        "template.text",
        "template.buttons",
        "template.buttons[0].title",
        "template.buttons[0].url.url",
        "template.buttons[1].postback.payload",
    } <= fields
    assert err.reason == "INVALID_REQUEST"
    assert err.request_id is not None
    assert validated.value.violations == err.violations
    assert app.sandbox is not None
    assert app.sandbox.received == []


async def test_validate_returns_the_graph_request(app: App) -> None:
    async with AsyncClient(addr(app)) as client:
        check = await client.validate_button_template(RECIPIENT, SEED, tag="human_agent")
    assert check.method == "POST"
    assert check.url.endswith(f"/{SANDBOX_ACCOUNT_ID}/messages")
    assert check.body["recipient"] == {"id": RECIPIENT}
    assert check.body["tag"] == "HUMAN_AGENT"
    assert "access_token" not in check.url


async def test_unknown_account_is_typed(app: App) -> None:
    async with AsyncClient(addr(app)) as client:
        with pytest.raises(UnknownAccountError):
            await client.send_button_template(RECIPIENT, SEED, account_id="17840000000000999")


async def test_caller_token_travels_as_bearer_metadata(start_app: AppFactory) -> None:
    app = await start_app(callers=[{"name": "pyclient", "token": TOKEN, "accounts": ["*"]}])
    async with AsyncClient(addr(app), token=TOKEN) as client:
        assert (await client.send_button_template(RECIPIENT, SEED)).message_id
    async with AsyncClient(addr(app)) as anonymous:
        with pytest.raises(CallerUnauthenticatedError):
            await anonymous.send_button_template(RECIPIENT, SEED)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return make_pki(folder)


async def test_tls_with_a_token(start_app: AppFactory, pki: Pki) -> None:
    app = await start_app(
        grpc={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}},
        callers=[{"name": "pyclient", "token": TOKEN, "accounts": ["*"]}],
    )
    tls = Tls.from_files(ca_file=pki.ca_cert, server_name="localhost")
    async with AsyncClient(addr(app), tls=tls, token=TOKEN) as client:
        assert (await client.send_button_template(RECIPIENT, SEED)).message_id


async def test_mutual_tls_sync(start_app: AppFactory, pki: Pki) -> None:
    app = await start_app(
        grpc={
            "tls": {
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
                "client_ca_file": str(pki.ca_cert),
            }
        }
    )
    tls = Tls.from_files(pki.ca_cert, pki.client_cert, pki.client_key, server_name="localhost")
    assert "PRIVATE" not in repr(tls)

    def send() -> str:
        with Client(addr(app), tls=tls) as client:
            return client.send_button_template(RECIPIENT, SEED).message_id

    assert await asyncio.to_thread(send)
