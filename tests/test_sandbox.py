"""The sandbox as a real aiohttp server on loopback: Meta's rules, faults, taps, control API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from igbutton_server.app import SANDBOX_ACCESS_TOKEN, App
from igbutton_server.sandbox import Fault, Sandbox, UnknownMessageError, graph_rules, sign

ACCOUNT = "17841400000000001"
OTHER_ACCOUNT = "17841400000000002"
TOKEN = "token-of-account-1"
OTHER_TOKEN = "token-of-account-2"
APP_SECRET = b"sandbox-test-app-secret"
RECIPIENT = "1234567890123456"

SEED_BODY: dict[str, Any] = {
    "recipient": {"id": RECIPIENT},
    "message": {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "What do you want to do next?",
                "buttons": [
                    {
                        "type": "web_url",
                        "url": "https://www.instagram.com",
                        "title": "Visit Instagram",
                    },
                    {"type": "postback", "payload": "postback_payload", "title": "postback button"},
                ],
            },
        }
    },
}


def template(text: str = "Pick one", buttons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A send body with the given text and buttons (one postback button by default)."""
    if buttons is None:
        buttons = [{"type": "postback", "payload": "p", "title": "t"}]
    return {
        "recipient": {"id": RECIPIENT},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {"template_type": "button", "text": text, "buttons": buttons},
            }
        },
    }


def postback(title: str = "t", payload: str = "p") -> dict[str, Any]:
    return {"type": "postback", "payload": payload, "title": title}


@dataclass
class Reply:
    status: int
    json: Any
    text: str
    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandbox(tokens={ACCOUNT: TOKEN, OTHER_ACCOUNT: OTHER_TOKEN})
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def send(
    http: aiohttp.ClientSession,
    box: Sandbox,
    body: Any = None,
    *,
    account: str = ACCOUNT,
    token: str | None = TOKEN,
    version: str = "v25.0",
    in_query: bool = False,
    raw: bytes | None = None,
) -> Reply:
    """POST a send the way a Graph client would and read the whole answer."""
    headers = {"Content-Type": "application/json"}
    params = {}
    if token is not None and in_query:
        params["access_token"] = token
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body if body is not None else SEED_BODY).encode()
    url = f"{box.url}/{version}/{account}/messages"
    async with http.post(url, data=data, headers=headers, params=params) as resp:
        text = await resp.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return Reply(resp.status, parsed, text, dict(resp.headers))


def assert_graph_error(reply: Reply, code: int, fragment: str = "") -> dict[str, Any]:
    assert reply.status == 400, reply.text
    error = reply.json["error"]
    assert error["code"] == code, error
    assert error["type"] == "IGApiException"
    assert error["fbtrace_id"]
    assert fragment in error["message"], error["message"]
    return dict(error)


# --- The seed's example and what is recorded ---


async def test_seed_example_is_accepted_and_recorded_exactly(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    raw = json.dumps(SEED_BODY).encode()
    reply = await send(http, sandbox, raw=raw)
    assert reply.status == 200, reply.text
    assert reply.json["recipient_id"] == RECIPIENT
    assert reply.json["message_id"]
    [record] = sandbox.received
    assert record.path == f"/v25.0/{ACCOUNT}/messages"
    assert record.account_id == ACCOUNT
    assert record.raw_body == raw
    assert record.body == SEED_BODY
    assert record.query == {}
    assert record.auth_header_present
    assert record.token_ok
    assert record.accepted
    assert record.status == 200
    assert record.message_id == reply.json["message_id"]
    assert record.recipient_id == RECIPIENT
    assert abs(record.received_at - time.time()) < 60


async def test_message_ids_are_unique(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    ids = {(await send(http, sandbox)).json["message_id"] for _ in range(5)}
    assert len(ids) == 5


# --- Access tokens ---


async def test_token_in_query_is_accepted_and_redacted(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, sandbox, in_query=True)
    assert reply.status == 200, reply.text
    [record] = sandbox.received
    assert record.query == {"access_token": "<redacted>"}
    assert not record.auth_header_present
    assert TOKEN not in repr(record)


@pytest.mark.parametrize("in_query", [False, True])
async def test_wrong_token_is_code_190(
    sandbox: Sandbox, http: aiohttp.ClientSession, in_query: bool
) -> None:
    reply = await send(http, sandbox, token="not-the-token", in_query=in_query)
    assert_graph_error(reply, 190)
    assert not sandbox.received[0].token_ok
    assert not sandbox.received[0].accepted


async def test_another_accounts_token_is_code_190(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    assert_graph_error(await send(http, sandbox, token=OTHER_TOKEN), 190)


async def test_missing_token_is_code_190(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    assert_graph_error(await send(http, sandbox, token=None), 190)


async def test_without_configured_tokens_any_nonempty_token_is_accepted(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.set_tokens({})
    assert (await send(http, sandbox, token="anything")).status == 200
    assert_graph_error(await send(http, sandbox, token=None), 190)


async def test_me_resolves_to_the_tokens_account(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, sandbox, account="me", token=OTHER_TOKEN)
    assert reply.status == 200, reply.text
    assert sandbox.received[0].account_id == OTHER_ACCOUNT


async def test_me_without_a_known_token_is_code_100(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.set_tokens(None)
    assert_graph_error(await send(http, sandbox, account="me", token="x"), 100, "me")


# --- API version ---


@pytest.mark.parametrize(
    ("version", "ok"),
    [("v21.0", True), ("v25.0", True), ("v26.0", True), ("v20.0", False), ("v2.8", False)],
)
async def test_api_version(
    sandbox: Sandbox, http: aiohttp.ClientSession, version: str, ok: bool
) -> None:
    reply = await send(http, sandbox, version=version)
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "deprecated")


async def test_malformed_version_is_code_100(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    assert_graph_error(await send(http, sandbox, version="latest"), 100)


# --- Validation, each rule at its boundary on both sides ---


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("a", True),
        ("a" * 640, True),
        ("a" * 641, False),
        ("😀" * 640, True),  # characters, not bytes
        ("😀" * 641, False),
        ("", False),
    ],
    ids=["1", "640", "641", "640-emoji", "641-emoji", "empty"],
)
async def test_text_length(
    sandbox: Sandbox, http: aiohttp.ClientSession, text: str, ok: bool
) -> None:
    reply = await send(http, sandbox, template(text=text))
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "text")


@pytest.mark.parametrize(("count", "ok"), [(0, False), (1, True), (3, True), (4, False)])
async def test_button_count(
    sandbox: Sandbox, http: aiohttp.ClientSession, count: int, ok: bool
) -> None:
    reply = await send(http, sandbox, template(buttons=[postback() for _ in range(count)]))
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "1 to 3 buttons")


@pytest.mark.parametrize(
    ("title", "ok"),
    [("t" * 20, True), ("t" * 21, False), ("🎉" * 20, True), ("", False)],
    ids=["20", "21", "20-emoji", "empty"],
)
async def test_title_length(
    sandbox: Sandbox, http: aiohttp.ClientSession, title: str, ok: bool
) -> None:
    reply = await send(http, sandbox, template(buttons=[postback(title=title)]))
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "buttons[0].title")


@pytest.mark.parametrize(
    ("payload", "ok"),
    [("p", True), ("p" * 1000, True), ("p" * 1001, False), ("", False)],
    ids=["1", "1000", "1001", "empty"],
)
async def test_payload_length(
    sandbox: Sandbox, http: aiohttp.ClientSession, payload: str, ok: bool
) -> None:
    reply = await send(http, sandbox, template(buttons=[postback(payload=payload)]))
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "buttons[0].payload")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com", True),
        ("http://example.com/a?b=c#d", True),
        ("/relative/path", False),
        ("ftp://example.com/file", False),
        ("https://", False),
        ("https://exa mple.com", False),
        ("", False),
    ],
)
async def test_web_url(sandbox: Sandbox, http: aiohttp.ClientSession, url: str, ok: bool) -> None:
    button = {"type": "web_url", "url": url, "title": "Open"}
    reply = await send(http, sandbox, template(buttons=[postback(), button]))
    if ok:
        assert reply.status == 200, reply.text
    else:
        assert_graph_error(reply, 100, "buttons[1].url")


async def test_web_url_without_url_is_rejected(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, sandbox, template(buttons=[{"type": "web_url", "title": "Open"}]))
    assert_graph_error(reply, 100, "url")


async def test_postback_without_payload_is_rejected(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, sandbox, template(buttons=[{"type": "postback", "title": "Go"}]))
    assert_graph_error(reply, 100, "payload")


@pytest.mark.parametrize(
    "extra", ["webview_height_ratio", "messenger_extensions", "fallback_url", "payload"]
)
async def test_messenger_only_button_keys_are_rejected(
    sandbox: Sandbox, http: aiohttp.ClientSession, extra: str
) -> None:
    button = {"type": "web_url", "url": "https://example.com", "title": "Open", extra: "x"}
    reply = await send(http, sandbox, template(buttons=[button]))
    assert_graph_error(reply, 100, extra)


@pytest.mark.parametrize("kind", ["phone_number", "account_link", None])
async def test_button_types_other_than_web_url_and_postback_are_rejected(
    sandbox: Sandbox, http: aiohttp.ClientSession, kind: str | None
) -> None:
    reply = await send(http, sandbox, template(buttons=[{"type": kind, "title": "x"}]))
    assert_graph_error(reply, 100, "web_url or postback")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**SEED_BODY, "recipient": {}}, "recipient.id"),
        ({"message": SEED_BODY["message"]}, "recipient.id"),
        ({"recipient": {"id": RECIPIENT}}, "message"),
        ({**SEED_BODY, "surprise": 1}, "surprise"),
        ({**SEED_BODY, "tag": "CONFIRMED_EVENT_UPDATE"}, "HUMAN_AGENT"),
        ({**SEED_BODY, "messaging_type": "SPAM"}, "messaging_type"),
        ([1, 2], "JSON object"),
    ],
)
async def test_envelope_rules(
    sandbox: Sandbox, http: aiohttp.ClientSession, body: Any, fragment: str
) -> None:
    assert_graph_error(await send(http, sandbox, body), 100, fragment)


async def test_human_agent_tag_is_accepted(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    body = {**SEED_BODY, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    assert (await send(http, sandbox, body)).status == 200


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda a: a.update(type="image"), "template"),
        (lambda a: a["payload"].update(template_type="generic"), "button"),
        (lambda a: a["payload"].update(sharable=True), "sharable"),
    ],
    ids=["attachment-type", "template-type", "template-extra-key"],
)
async def test_template_shape_rules(
    sandbox: Sandbox, http: aiohttp.ClientSession, mutate: Any, fragment: str
) -> None:
    body = json.loads(json.dumps(SEED_BODY))
    mutate(body["message"]["attachment"])
    assert_graph_error(await send(http, sandbox, body), 100, fragment)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v25.0/1784/photos"), ("GET", "/v25.0/1784/messages"), ("GET", "/")],
)
async def test_unknown_paths_get_metas_error_and_are_not_recorded(
    sandbox: Sandbox, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, f"{sandbox.url}{path}") as resp:
        reply = Reply(resp.status, await resp.json(), "")
    assert_graph_error(reply, 100, "Unsupported")
    assert sandbox.received == []


async def test_non_json_body_is_recorded_and_rejected(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, sandbox, raw=b"recipient=not-json")
    assert_graph_error(reply, 100, "JSON")
    [record] = sandbox.received
    assert record.body is None
    assert record.raw_body == b"recipient=not-json"
    assert record.status == 400


# --- Faults ---


async def test_graph_error_fault_answers_metas_error_shape(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    usage = json.dumps({ACCOUNT: [{"type": "instagram", "estimated_time_to_regain_access": 2}]})
    sandbox.add_fault(
        Fault(
            kind="graph_error",
            code=10,
            subcode=2534022,
            http_status=403,
            message="Outside the allowed window",
            headers={"X-Business-Use-Case-Usage": usage},
            is_transient=False,
        )
    )
    reply = await send(http, sandbox)
    assert reply.status == 403
    error = reply.json["error"]
    assert error["code"] == 10
    assert error["error_subcode"] == 2534022
    assert error["type"] == "IGApiException"
    assert "Outside the allowed window" in error["message"]
    assert error["is_transient"] is False
    assert len(error["fbtrace_id"]) >= 8
    assert {"error_user_title", "error_user_msg"} <= set(error)
    assert json.loads(reply.headers["X-Business-Use-Case-Usage"]) == json.loads(usage)
    [record] = sandbox.received
    assert not record.accepted
    assert record.status == 403
    # The fault is used up: the next send goes through.
    assert (await send(http, sandbox)).status == 200


async def test_fbtrace_ids_differ(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.add_fault(Fault(kind="graph_error", code=2, count=2, is_transient=True))
    first = await send(http, sandbox)
    second = await send(http, sandbox)
    assert first.json["error"]["fbtrace_id"] != second.json["error"]["fbtrace_id"]
    assert first.json["error"]["is_transient"] is True
    assert "error_subcode" not in first.json["error"]


async def test_faults_are_fifo_counted_and_per_account(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(Fault(kind="graph_error", code=4, count=2, account_id=OTHER_ACCOUNT))
    sandbox.add_fault(Fault(kind="http_status", http_status=502))
    # ACCOUNT skips the OTHER_ACCOUNT fault and takes the 502.
    assert (await send(http, sandbox)).status == 502
    assert (await send(http, sandbox)).status == 200
    other = await send(http, sandbox, account=OTHER_ACCOUNT, token=OTHER_TOKEN)
    assert other.json["error"]["code"] == 4
    other = await send(http, sandbox, account=OTHER_ACCOUNT, token=OTHER_TOKEN)
    assert other.json["error"]["code"] == 4
    assert (await send(http, sandbox, account=OTHER_ACCOUNT, token=OTHER_TOKEN)).status == 200
    assert sandbox.pending_faults == 0


async def test_clear_faults_and_reset(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    sandbox.add_fault(Fault(kind="http_status", http_status=500, count=5))
    sandbox.clear_faults()
    assert (await send(http, sandbox)).status == 200
    sandbox.add_fault(Fault(kind="http_status", http_status=500))
    sandbox.reset()
    assert sandbox.received == []
    assert sandbox.pending_faults == 0
    assert (await send(http, sandbox)).status == 200


async def test_http_status_fault_answers_html(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(Fault(kind="http_status", http_status=500))
    reply = await send(http, sandbox)
    assert reply.status == 500
    assert reply.json is None
    assert reply.headers["Content-Type"].startswith("text/html")
    assert sandbox.received[0].status == 500
    assert not sandbox.received[0].accepted


async def test_slow_fault_answers_late_but_acts(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=0.3))
    started = time.monotonic()
    reply = await send(http, sandbox)
    assert time.monotonic() - started >= 0.3
    assert reply.status == 200
    assert sandbox.received[0].accepted


async def test_slow_fault_still_records_the_send_when_the_client_gave_up(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=0.5))
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{sandbox.url}/v25.0/{ACCOUNT}/messages",
            json=SEED_BODY,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    deadline = time.monotonic() + 10
    while not sandbox.received or not sandbox.received[0].accepted:
        assert time.monotonic() < deadline, "the slow send was never accepted"
        await asyncio.sleep(0.02)
    assert sandbox.received[0].message_id


async def test_stop_does_not_wait_for_a_slow_fault(http: aiohttp.ClientSession) -> None:
    box = Sandbox()
    await box.start()
    try:
        box.add_fault(Fault(kind="slow", delay_seconds=300))
        pending = asyncio.ensure_future(send(http, box, token="t"))
        deadline = time.monotonic() + 10
        while not box.received:
            assert time.monotonic() < deadline, "the slow send never arrived"
            await asyncio.sleep(0.01)
    finally:
        await asyncio.wait_for(box.stop(), 30)
    with contextlib.suppress(aiohttp.ClientError):
        await asyncio.wait_for(pending, 30)


async def test_old_records_are_forgotten_beyond_max_records(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    box = Sandbox(max_records=2, webhook_url=receiver.url, app_secret=APP_SECRET)
    await box.start()
    try:
        first = (await send(http, box, token="t")).json["message_id"]
        for _ in range(2):
            await send(http, box, token="t")
        assert len(box.received) == 2
        assert first not in {r.message_id for r in box.received}
        with pytest.raises(UnknownMessageError):
            await box.tap(first, 1)
        assert (await box.tap(box.received[-1].message_id or "", 1)).webhook_status == 200
    finally:
        await box.stop()


async def test_drop_fault_disconnects_after_reading_the_request(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.add_fault(Fault(kind="drop"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(http, sandbox)
    [record] = sandbox.received
    assert record.body == SEED_BODY  # the whole request was read
    assert record.status == 0
    assert not record.accepted
    # The same pooled session keeps working.
    assert (await send(http, sandbox)).status == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode"},
        {"kind": "graph_error", "count": 0},
        {"kind": "http_status", "http_status": 99},
        {"kind": "slow", "delay_seconds": -1},
    ],
)
def test_invalid_faults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        Fault(**kwargs)


# --- Taps and webhook delivery ---


@dataclass
class Receiver:
    """A tiny webhook endpoint recording exactly what it received."""

    url: str = ""
    status: int = 200
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def handle(request: web.Request) -> web.Response:
        state.bodies.append(await request.read())
        state.headers.append(dict(request.headers))
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_post("/webhook", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/webhook"
        yield state
    finally:
        await runner.cleanup()


async def accepted_message(sandbox: Sandbox, http: aiohttp.ClientSession) -> str:
    reply = await send(http, sandbox)
    assert reply.status == 200, reply.text
    return str(reply.json["message_id"])


async def test_tap_delivers_a_correctly_signed_postback(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    message_id = await accepted_message(sandbox, http)
    before_ms = int(time.time() * 1000)
    result = await sandbox.tap(message_id, 1)
    assert result.webhook_status == 200
    assert result.payload == "postback_payload"
    assert result.title == "postback button"
    assert result.mid
    [raw] = receiver.bodies
    [headers] = receiver.headers
    expected = "sha256=" + hmac.new(APP_SECRET, raw, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == expected
    assert headers["Content-Type"] == "application/json"
    event = json.loads(raw)
    assert event["object"] == "instagram"
    [entry] = event["entry"]
    assert entry["id"] == ACCOUNT
    assert entry["time"] >= before_ms
    [item] = entry["messaging"]
    assert item["sender"] == {"id": RECIPIENT}
    assert item["recipient"] == {"id": ACCOUNT}
    assert item["timestamp"] >= before_ms
    assert item["postback"] == {
        "mid": result.mid,
        "title": "postback button",
        "payload": "postback_payload",
    }


async def test_tap_keeps_non_ascii_payloads_verbatim(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    payload = 'ÿ "quoted" 😀 \\ </script>'
    reply = await send(http, sandbox, template(buttons=[postback("Ça va 🎉", payload)]))
    result = await sandbox.tap(reply.json["message_id"], mid="m-fixed")
    assert result.mid == "m-fixed"
    [raw] = receiver.bodies
    assert receiver.headers[0]["X-Hub-Signature-256"] == sign(raw, APP_SECRET)
    item = json.loads(raw)["entry"][0]["messaging"][0]["postback"]
    assert item == {"mid": "m-fixed", "title": "Ça va 🎉", "payload": payload}


async def test_each_tap_gets_a_new_mid(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    message_id = await accepted_message(sandbox, http)
    mids = {(await sandbox.tap(message_id, 1)).mid for _ in range(3)}
    assert len(mids) == 3


async def test_tap_refuses_url_buttons_bad_indexes_and_unknown_messages(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    message_id = await accepted_message(sandbox, http)
    with pytest.raises(ValueError, match="web_url"):
        await sandbox.tap(message_id, 0)
    with pytest.raises(ValueError, match="out of range"):
        await sandbox.tap(message_id, 2)
    with pytest.raises(ValueError, match="out of range"):
        await sandbox.tap(message_id, -1)
    with pytest.raises(UnknownMessageError):
        await sandbox.tap("no-such-message", 1)
    assert receiver.bodies == []


async def test_rejected_sends_cannot_be_tapped(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    sandbox.add_fault(Fault(kind="graph_error", code=2))
    await send(http, sandbox)
    assert sandbox.accepted() == []
    assert sandbox.received[0].message_id is None


async def test_tap_without_a_webhook_raises(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    message_id = await accepted_message(sandbox, http)
    with pytest.raises(RuntimeError, match="webhook"):
        await sandbox.tap(message_id, 1)


async def test_tap_reports_a_failing_webhook(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.status = 503
    sandbox.set_webhook(receiver.url, APP_SECRET)
    message_id = await accepted_message(sandbox, http)
    result = await sandbox.tap(message_id, 1)
    assert result.webhook_status == 503


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_tap_reports_an_unreachable_webhook(
    sandbox: Sandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.set_webhook(f"http://127.0.0.1:{closed_port()}/webhook", APP_SECRET)
    message_id = await accepted_message(sandbox, http)
    result = await sandbox.tap(message_id, 1)
    assert result.webhook_status == 0
    assert result.webhook_error


async def test_deliver_posts_raw_bytes_signed_unsigned_or_as_given(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_webhook(receiver.url, APP_SECRET)
    body = b'{"object": "instagram", "entry": []}'
    assert await sandbox.deliver(body) == 200
    assert await sandbox.deliver(body, signature=None) == 200
    assert await sandbox.deliver(body, signature="sha256=00") == 200
    assert receiver.bodies == [body, body, body]
    assert receiver.headers[0]["X-Hub-Signature-256"] == sign(body, APP_SECRET)
    assert "X-Hub-Signature-256" not in receiver.headers[1]
    assert receiver.headers[2]["X-Hub-Signature-256"] == "sha256=00"


# --- HTTP control API ---


async def test_control_healthz_and_messages(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sandbox.url}/_sandbox/healthz") as resp:
        assert resp.status == 200
    ok = await send(http, sandbox)
    await send(http, sandbox, token="wrong")
    async with http.get(f"{sandbox.url}/_sandbox/messages") as resp:
        assert resp.status == 200
        listing = (await resp.json())["messages"]
    assert [m["accepted"] for m in listing] == [True, False]
    assert [m["status"] for m in listing] == [200, 400]
    assert listing[0]["message_id"] == ok.json["message_id"]
    assert listing[0]["account_id"] == ACCOUNT
    assert listing[0]["recipient_id"] == RECIPIENT
    assert listing[0]["body"] == SEED_BODY
    assert listing[1]["message_id"] is None


async def test_control_faults_add_and_clear(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    fault = {"kind": "graph_error", "code": 4, "count": 2, "is_transient": True}
    async with http.post(f"{sandbox.url}/_sandbox/faults", json=fault) as resp:
        assert resp.status == 204
    async with http.get(f"{sandbox.url}/_sandbox/faults") as resp:
        [listed] = (await resp.json())["faults"]
    assert listed["kind"] == "graph_error"
    assert listed["code"] == 4
    assert listed["remaining"] == 2
    assert (await send(http, sandbox)).json["error"]["code"] == 4
    async with http.get(f"{sandbox.url}/_sandbox/faults") as resp:
        assert (await resp.json())["faults"][0]["remaining"] == 1
    async with http.delete(f"{sandbox.url}/_sandbox/faults") as resp:
        assert resp.status == 204
    assert (await send(http, sandbox)).status == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"kind": "explode"}, "kind"),
        ({"kind": "slow", "delay_seconds": "soon"}, "delay_seconds"),
        ({"kind": "drop", "colour": "red"}, "colour"),
        ({"code": 4}, "kind"),
        ([], "JSON object"),
    ],
)
async def test_control_rejects_bad_faults(
    sandbox: Sandbox, http: aiohttp.ClientSession, body: Any, fragment: str
) -> None:
    async with http.post(f"{sandbox.url}/_sandbox/faults", json=body) as resp:
        assert resp.status == 400
        assert fragment in (await resp.json())["error"]
    assert sandbox.pending_faults == 0


async def test_control_reset(sandbox: Sandbox, http: aiohttp.ClientSession) -> None:
    await send(http, sandbox)
    async with http.post(f"{sandbox.url}/_sandbox/reset") as resp:
        assert resp.status == 204
    assert sandbox.received == []


async def test_control_tap(
    sandbox: Sandbox, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    message_id = await accepted_message(sandbox, http)
    tap_url = f"{sandbox.url}/_sandbox/tap"
    async with http.post(tap_url, json={"message_id": message_id, "button_index": 1}) as resp:
        assert resp.status == 409  # no webhook configured yet
        assert "webhook" in (await resp.json())["error"]
    sandbox.set_webhook(receiver.url, APP_SECRET)
    async with http.post(tap_url, json={"message_id": message_id, "button_index": 1}) as resp:
        assert resp.status == 200
        result = await resp.json()
    assert result["payload"] == "postback_payload"
    assert result["title"] == "postback button"
    assert result["webhook_status"] == 200
    assert (
        json.loads(receiver.bodies[0])["entry"][0]["messaging"][0]["postback"]["mid"]
        == (result["mid"])
    )
    cases = [
        ({"message_id": "nope", "button_index": 1}, 404, "nope"),
        ({"message_id": message_id}, 400, "web_url"),  # button_index defaults to 0
        ({"message_id": message_id, "button_index": 7}, 400, "out of range"),
        ({"message_id": message_id, "button_index": "1"}, 400, "button_index"),
        ({"button_index": 1}, 400, "message_id"),
    ]
    for body, status, fragment in cases:
        async with http.post(tap_url, json=body) as resp:
            assert resp.status == status, body
            assert fragment in (await resp.json())["error"], body
    assert len(receiver.bodies) == 1


# --- The sandbox inside the App ---


async def test_app_in_sandbox_mode_exposes_the_sandbox(
    app: App, http: aiohttp.ClientSession
) -> None:
    assert app.sandbox is not None
    assert app.sandbox.url == f"http://127.0.0.1:{app.ports.sandbox}"
    assert app.settings.graph.base_url == app.sandbox.url
    [account] = app.settings.accounts
    assert account.token() == SANDBOX_ACCESS_TOKEN
    # The sandbox accepts exactly the configured account's token.
    ok = await send(http, app.sandbox, account=account.id, token=SANDBOX_ACCESS_TOKEN)
    assert ok.status == 200, ok.text
    assert_graph_error(await send(http, app.sandbox, account=account.id, token="other"), 190)


async def test_standalone_sandbox_runs_and_taps(
    tmp_path: Path, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    secret_file = tmp_path / "app-secret"
    secret_file.write_bytes(APP_SECRET + b"\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "igbutton_server.sandbox",
        "--port",
        "0",
        "--webhook-url",
        receiver.url,
        "--app-secret-file",
        str(secret_file),
        "--token",
        f"{ACCOUNT}={TOKEN}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        base = line.strip().rsplit(" ", 1)[-1]
        assert base.startswith("http://127.0.0.1:"), line
        async with http.get(f"{base}/_sandbox/healthz") as resp:
            assert resp.status == 200
        url = f"{base}/v25.0/{ACCOUNT}/messages"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, json=SEED_BODY, headers=auth) as resp:
            assert resp.status == 200
            message_id = (await resp.json())["message_id"]
        tap = {"message_id": message_id, "button_index": 1}
        async with http.post(f"{base}/_sandbox/tap", json=tap) as resp:
            assert (await resp.json())["webhook_status"] == 200
        [raw] = receiver.bodies
        assert receiver.headers[0]["X-Hub-Signature-256"] == sign(raw, APP_SECRET)
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_standalone_sandbox_refuses_bad_arguments(tmp_path: Path) -> None:
    from igbutton_server.sandbox.__main__ import main

    assert main(["--token", "no-equals-sign"]) == 2
    assert main(["--webhook-url", "http://127.0.0.1:1/webhook"]) == 2
    assert main(["--app-secret-file", str(tmp_path / "missing")]) == 2


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(body=_json | st.builds(template, st.text(max_size=700), st.lists(_json, max_size=4)))
def test_any_json_body_gets_an_answer_never_an_exception(body: Any) -> None:
    outcome = graph_rules.validate_send(body)
    if isinstance(outcome, graph_rules.GraphError):
        assert outcome.code == 100
        assert outcome.body()["error"]["message"]
    else:
        assert outcome.recipient_id == RECIPIENT
