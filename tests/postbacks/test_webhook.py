"""Meta's webhook against the real App on loopback: handshake, signatures, bodies, batches."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from igbutton.v1 import postback_service_pb2_grpc
from igbutton_server import metrics
from igbutton_server.app import App
from igbutton_server.postbacks.webhook import sign
from igbutton_server.storage.postbacks import MAX_ID_BYTES, MAX_RAW_JSON_BYTES
from tests.postbacks.conftest import (
    ACCOUNT,
    ROTATED_SECRET,
    SECRET,
    VERIFY_TOKEN,
    AppFactory,
    Stream,
    WebhookClient,
    appended_during,
    delivery,
    postback_item,
    postbacks,
    store_of,
    webhook_url,
)

# --- the verification handshake ---


@pytest.mark.parametrize(
    ("query", "status"),
    [
        (
            {
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "1158201444",
            },
            200,
        ),
        ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"}, 403),
        ({"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"}, 403),
        ({"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}, 403),
        ({}, 403),
    ],
)
async def test_handshake(
    app: App, http: aiohttp.ClientSession, query: dict[str, str], status: int
) -> None:
    async with http.get(webhook_url(app), params=query) as resp:
        assert resp.status == status
        body = await resp.text()
    if status == 200:
        assert body == query["hub.challenge"]
    else:
        assert VERIFY_TOKEN not in body


async def test_handshake_fails_without_a_configured_token(
    start_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await start_app(webhook={"verify_token": None})
    query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
    async with http.get(webhook_url(app), params=query) as resp:
        assert resp.status == 403


# --- signatures ---


async def test_unsigned_post_is_refused_and_nothing_stored(
    app: App, webhook: WebhookClient
) -> None:
    (status, answer), stored = await appended_during(
        app, webhook.post(delivery(postback_item("m1")), secret=None)
    )
    assert status == 401
    assert stored == []
    assert "sha256" not in json.dumps(answer)


async def test_wrong_signature_is_refused_without_revealing_the_expected_one(
    app: App, webhook: WebhookClient
) -> None:
    body = delivery(postback_item("m1"))
    (status, answer), stored = await appended_during(
        app, webhook.post(body, secret=b"not-the-app-secret")
    )
    assert status == 403
    assert stored == []
    text = json.dumps(answer)
    for secret in (SECRET, ROTATED_SECRET):
        assert sign(body, secret)[7:] not in text
        assert secret.decode() not in text


@pytest.mark.parametrize(
    "header",
    ["", "sha256=", "sha1=abc", "sha256=zz", "SHA256=00", "sha256=" + "0" * 64, "garbage ü"],
)
async def test_malformed_signature_headers_are_refused(
    app: App, webhook: WebhookClient, header: str
) -> None:
    (status, _), stored = await appended_during(
        app, webhook.post(delivery(postback_item("m1")), signature=header)
    )
    assert status == 403
    assert stored == []


async def test_signature_over_reserialised_json_is_refused(
    app: App, webhook: WebhookClient
) -> None:
    document = json.loads(delivery(postback_item("m1")))
    sent = json.dumps(document, indent=2).encode()  # the bytes on the wire
    reserialised = json.dumps(json.loads(sent)).encode()  # what a careless check would hash
    assert sent != reserialised
    (status, _), stored = await appended_during(
        app, webhook.post(sent, signature=sign(reserialised, SECRET))
    )
    assert status == 403
    assert stored == []
    # Signed over the exact bytes it is accepted.
    status, _ = await webhook.post(sent, secret=SECRET)
    assert status == 200


async def test_either_configured_secret_is_accepted_during_rotation(
    webhook: WebhookClient,
) -> None:
    assert (await webhook.post(delivery(postback_item("old")), secret=SECRET))[0] == 200
    assert (await webhook.post(delivery(postback_item("new")), secret=ROTATED_SECRET))[0] == 200
    assert (await webhook.post(delivery(postback_item("x")), secret=b"retired"))[0] == 403


async def test_unsigned_mode_accepts_unsigned_posts(
    start_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await start_app(webhook={"allow_unsigned": True, "app_secrets": []})
    client = WebhookClient(http, webhook_url(app))
    (status, _), stored = await appended_during(
        app, client.post(delivery(postback_item("m1")), secret=None)
    )
    assert status == 200
    assert [p.mid for p in stored] == ["m1"]


# --- bodies ---


async def test_oversize_body_gets_413_and_nothing_stored(
    start_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await start_app(webhook={"max_body_bytes": 4096})
    client = WebhookClient(http, webhook_url(app))
    body = delivery(*postbacks("big", 40))
    assert len(body) > 4096
    (status, _), stored = await appended_during(app, client.post(body))
    assert status == 413
    assert stored == []
    small = delivery(postback_item("small"))
    assert (await client.post(small))[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"entry"',
        b"{}",
        b'{"object": "instagram", "entry": {}}',
        b"[" * 100_000,
    ],
)
async def test_malformed_body_gets_400_and_nothing_stored(
    app: App, webhook: WebhookClient, body: bytes
) -> None:
    (status, answer), stored = await appended_during(app, webhook.post(body))
    assert status == 400
    assert stored == []
    assert "error" in answer


async def test_a_batch_of_1000_postbacks_is_stored_in_order(
    app: App, webhook: WebhookClient
) -> None:
    items = postbacks("batch", 1000)
    body = delivery(*items)
    assert len(body) < app.settings.webhook.max_body_bytes
    answer, stored = await appended_during(app, webhook.deliver(*items))
    assert answer["stored"] == 1000
    assert [p.mid for p in stored] == [f"batch-{i}" for i in range(1000)]
    assert stored[999].payload == "P999"


async def test_non_postback_items_are_skipped_and_counted(app: App, webhook: WebhookClient) -> None:
    sender, recipient = {"id": "1234"}, {"id": ACCOUNT}
    message = {"sender": sender, "recipient": recipient, "timestamp": 1, "message": {"mid": "a"}}
    read = {"sender": sender, "recipient": recipient, "timestamp": 1, "read": {"mid": "b"}}
    reaction = {"sender": sender, "recipient": recipient, "reaction": {"mid": "c"}}
    no_mid = {"sender": sender, "recipient": recipient, "postback": {"payload": "P"}}
    before = metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind="read")._value.get()
    body = delivery(
        postback_item("p1"), message, read, reaction, postback_item("p2"), no_mid, "junk"
    )
    (status, answer), stored = await appended_during(app, webhook.post(body))
    assert status == 200
    assert [p.mid for p in stored] == ["p1", "p2"]
    assert answer["skipped"] == {
        "message": 1,
        "read": 1,
        "reaction": 1,
        "invalid_postback": 1,
        "invalid_item": 1,
    }
    assert metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind="read")._value.get() == before + 1


async def test_oversized_postbacks_are_skipped_and_the_rest_stored(
    app: App, webhook: WebhookClient
) -> None:
    # On NATS a 4,100-character mid made a subject over the server's 4 KiB protocol line:
    # the server dropped the connection, the client closed for good and every later
    # delivery failed; a 2 MB payload was refused on every retry.
    long_id = "9" * (MAX_ID_BYTES + 1)
    items = [
        postback_item("before"),
        postback_item("m" * 4100),
        postback_item("long-sender", sender=long_id),
        postback_item("long-account", account=long_id),
        postback_item("big", payload="x" * 2_000_000),
        postback_item("after"),
    ]
    before = metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind="oversized")._value.get()
    (status, answer), stored = await appended_during(app, webhook.post(delivery(*items)))
    assert (status, answer) == (200, {"stored": 2, "duplicates": 0, "skipped": {"oversized": 4}})
    assert [p.mid for p in stored] == ["before", "after"]
    assert metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind="oversized")._value.get() == before + 4
    # The replica carries on.
    answer, stored = await appended_during(app, webhook.deliver(postback_item("later")))
    assert [p.mid for p in stored] == ["later"]


async def test_postbacks_at_the_bounds_are_stored(
    start_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    # Account ids this long cannot be configured (accounts take 64 characters at most).
    app = await start_app(webhook={"accept_unknown_accounts": True})
    webhook = WebhookClient(http, webhook_url(app))
    plain = "7" * MAX_ID_BYTES
    wide = "\u00e9" * (MAX_ID_BYTES // 2)  # two UTF-8 bytes each; base64 in a NATS subject
    item = postback_item(wide, account=wide, sender=plain, payload="")
    compact = {"separators": (",", ":"), "ensure_ascii": False}  # as the raw JSON is kept
    room = MAX_RAW_JSON_BYTES - len(json.dumps(item, **compact).encode())
    item["postback"]["payload"] = "p" * room
    # A sender other than the account: the account's own postbacks are skipped as self_sent.
    largest = postback_item(plain, account=plain, sender="8" * MAX_ID_BYTES)
    answer, stored = await appended_during(app, webhook.deliver(item, largest))
    assert answer == {"stored": 2, "duplicates": 0, "skipped": {}}
    assert [(p.mid, p.account_id, len(p.raw_json.encode())) for p in stored] == [
        (wide, wide, MAX_RAW_JSON_BYTES),
        (plain, plain, len(json.dumps(largest, **compact))),
    ]
    # Both are recognised again: dedupe holds for the longest ids too.
    again = await webhook.deliver(item, largest)
    assert (again["stored"], again["duplicates"]) == (0, 2)


async def test_postback_fields_and_raw_json_are_kept(app: App, webhook: WebhookClient) -> None:
    item = postback_item(
        "m-ref",
        payload="ORDER:42",
        title="Order",
        timestamp=1_502_905_976_377,
        referral={"ref": "campaign-1", "source": "SHORTLINK", "type": "OPEN_THREAD"},
    )
    _, stored = await appended_during(app, webhook.post(delivery(item, obj="page")))
    (postback,) = stored
    assert (postback.account_id, postback.sender_id) == (ACCOUNT, item["sender"]["id"])
    assert (postback.mid, postback.title, postback.payload) == ("m-ref", "Order", "ORDER:42")
    assert postback.tap_time_ms == 1_502_905_976_377
    assert json.loads(postback.raw_json) == item


async def test_the_same_delivery_twice_is_stored_once(app: App, webhook: WebhookClient) -> None:
    body = delivery(*postbacks("twice", 5))
    (first, second), stored = await appended_during(app, _post_twice(webhook, body))
    assert first == {"stored": 5, "duplicates": 0, "skipped": {}}
    assert second == {"stored": 0, "duplicates": 5, "skipped": {}}
    assert [p.mid for p in stored] == [f"twice-{i}" for i in range(5)]


async def _post_twice(webhook: WebhookClient, body: bytes) -> tuple[Any, Any]:
    answers = []
    for _ in range(2):
        status, answer = await webhook.post(body)
        assert status == 200
        answers.append(answer)
    return answers[0], answers[1]


async def test_a_batch_overlapping_an_earlier_one_stores_only_the_new_part(
    app: App, webhook: WebhookClient
) -> None:
    items = postbacks("overlap", 15)
    await webhook.deliver(*items[:10])
    answer, stored = await appended_during(app, webhook.deliver(*items[5:]))
    assert (answer["stored"], answer["duplicates"]) == (5, 5)
    assert [p.mid for p in stored] == [f"overlap-{i}" for i in range(10, 15)]


async def test_a_failing_store_answers_503_so_meta_retries(
    app: App, webhook: WebhookClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_of(app), "append", broken)
    status, answer = await webhook.post(delivery(postback_item("m1")))
    assert status == 503
    assert "disk" not in json.dumps(answer)
    monkeypatch.undo()
    status, _ = await webhook.post(delivery(postback_item("m1")))
    assert status == 200


# --- standby, the account's own postbacks, unknown accounts ---

UNKNOWN_ACCOUNT = "17841400000000777"
"""An IG ID the test Apps are not configured with."""


def _skipped(kind: str) -> float:
    value: float = metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind=kind)._value.get()
    return value


async def test_a_standby_postback_reaches_subscribers_marked_standby(
    webhook: WebhookClient,
    stub: postback_service_pb2_grpc.PostbackServiceStub,
    streams: Callable[..., Awaitable[Stream]],
) -> None:
    # Another app holds the conversation: Meta sends the tap in `standby`, not `messaging`.
    stream = await streams(stub)
    entry = {
        "id": ACCOUNT,
        "time": int(time.time() * 1000),
        "messaging": [postback_item("sb-tapped")],
        "standby": [postback_item("sb-observed", payload="HELP")],
    }
    status, answer = await webhook.post(
        json.dumps({"object": "instagram", "entry": [entry]}).encode()
    )
    assert (status, answer) == (200, {"stored": 2, "duplicates": 0, "skipped": {}})
    got = [m.postback for m in await stream.take(2)]
    assert [(p.mid, p.payload, p.standby) for p in got] == [
        ("sb-tapped", "BUY", False),
        ("sb-observed", "HELP", True),
    ]


async def test_a_postback_sent_by_the_account_itself_is_skipped_and_counted(
    app: App, webhook: WebhookClient
) -> None:
    before = _skipped("self_sent")
    echo = postback_item("self-echo", sender=ACCOUNT)
    (status, answer), stored = await appended_during(
        app, webhook.post(delivery(echo, postback_item("self-tap")))
    )
    assert (status, answer) == (200, {"stored": 1, "duplicates": 0, "skipped": {"self_sent": 1}})
    assert [p.mid for p in stored] == ["self-tap"]
    assert _skipped("self_sent") == before + 1


async def test_postbacks_for_an_unknown_account_are_skipped_counted_and_warned_once(
    app: App, webhook: WebhookClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = _skipped("unknown_account")
    caplog.set_level(logging.WARNING, logger="igbutton_server.postbacks.accounts")
    for i in range(2):
        body = delivery(
            postback_item(f"unknown-{i}", account=UNKNOWN_ACCOUNT), account=UNKNOWN_ACCOUNT
        )
        (status, answer), stored = await appended_during(app, webhook.post(body))
        assert (status, answer) == (
            200,
            {"stored": 0, "duplicates": 0, "skipped": {"unknown_account": 1}},
        )
        assert stored == []
    assert _skipped("unknown_account") == before + 2
    warnings = [
        r
        for r in caplog.records
        if r.name == "igbutton_server.postbacks.accounts" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert UNKNOWN_ACCOUNT in warnings[0].getMessage()
    # A configured account's postbacks in the same App are stored as ever.
    answer, stored = await appended_during(app, webhook.deliver(postback_item("known")))
    assert [p.mid for p in stored] == ["known"]


async def test_accept_unknown_accounts_stores_them(
    start_app: AppFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start_app(webhook={"accept_unknown_accounts": True})
    webhook = WebhookClient(http, webhook_url(app))
    caplog.set_level(logging.WARNING, logger="igbutton_server.postbacks.accounts")
    item = postback_item("accepted", account=UNKNOWN_ACCOUNT)
    (status, answer), stored = await appended_during(
        app, webhook.post(delivery(item, account=UNKNOWN_ACCOUNT))
    )
    assert (status, answer) == (200, {"stored": 1, "duplicates": 0, "skipped": {}})
    assert [(p.mid, p.account_id) for p in stored] == [("accepted", UNKNOWN_ACCOUNT)]
    assert not [r for r in caplog.records if r.name == "igbutton_server.postbacks.accounts"]
