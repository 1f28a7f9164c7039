"""Every documented limit at its boundary, from both sides, through the real server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.sandbox import Sandbox
from tests.send.conftest import (
    ACCOUNT,
    RECIPIENT,
    AppFactory,
    details,
    seed_template,
    send_request,
    stub_for,
)

EMOJI = "\N{GRINNING FACE}"  # 4 bytes in UTF-8, one character


def _url_button(url: str, title: str = "Open") -> bt.Button:
    return bt.Button(title=title, url=bt.UrlAction(url=url))


def _postback_button(payload: str, title: str = "Tap") -> bt.Button:
    return bt.Button(title=title, postback=bt.PostbackAction(payload=payload))


def _template(text: str = "Pick one", buttons: list[bt.Button] | None = None) -> bt.ButtonTemplate:
    return bt.ButtonTemplate(text=text, buttons=buttons or [_postback_button("p")])


# (case id, request fields, the violated field or None when the request is valid)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("text-1", {"template": _template(text="a")}, None),
    ("text-640", {"template": _template(text="a" * 640)}, None),
    ("text-640-emoji", {"template": _template(text=EMOJI * 640)}, None),
    ("text-empty", {"template": _template(text="")}, "template.text"),
    ("text-641", {"template": _template(text="a" * 641)}, "template.text"),
    ("text-641-emoji", {"template": _template(text=EMOJI * 641)}, "template.text"),
    ("text-blank", {"template": _template(text="   ")}, "template.text"),
    ("buttons-0", {"template": bt.ButtonTemplate(text="t")}, "template.buttons"),
    ("buttons-1", {"template": _template(buttons=[_postback_button("a")])}, None),
    (
        "buttons-3",
        {"template": _template(buttons=[_postback_button(str(i)) for i in range(3)])},
        None,
    ),
    (
        "buttons-4",
        {"template": _template(buttons=[_postback_button(str(i)) for i in range(4)])},
        "template.buttons",
    ),
    ("title-1", {"template": _template(buttons=[_postback_button("p", title="x")])}, None),
    ("title-20", {"template": _template(buttons=[_postback_button("p", title="x" * 20)])}, None),
    (
        "title-20-emoji",
        {"template": _template(buttons=[_postback_button("p", title=EMOJI * 20)])},
        None,
    ),
    (
        "title-21",
        {"template": _template(buttons=[_postback_button("p", title="x" * 21)])},
        "template.buttons[0].title",
    ),
    (
        "title-empty",
        {"template": _template(buttons=[_postback_button("p", title="")])},
        "template.buttons[0].title",
    ),
    ("payload-1", {"template": _template(buttons=[_postback_button("p")])}, None),
    ("payload-1000", {"template": _template(buttons=[_postback_button("p" * 1000)])}, None),
    (
        "payload-1000-emoji",
        {"template": _template(buttons=[_postback_button(EMOJI * 1000)])},
        None,
    ),
    (
        "payload-1001",
        {"template": _template(buttons=[_postback_button("p" * 1001)])},
        "template.buttons[0].postback.payload",
    ),
    (
        "payload-empty",
        {"template": _template(buttons=[_postback_button("")])},
        "template.buttons[0].postback.payload",
    ),
    ("url-http", {"template": _template(buttons=[_url_button("http://example.com")])}, None),
    (
        "url-2048",
        {"template": _template(buttons=[_url_button("https://e.com/" + "a" * (2048 - 14))])},
        None,
    ),
    (
        "url-2049",
        {"template": _template(buttons=[_url_button("https://e.com/" + "a" * (2049 - 14))])},
        "template.buttons[0].url.url",
    ),
    (
        "url-relative",
        {"template": _template(buttons=[_url_button("/path/only")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-ftp",
        {"template": _template(buttons=[_url_button("ftp://example.com/x")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-no-host",
        {"template": _template(buttons=[_url_button("https:///path")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-space",
        {"template": _template(buttons=[_url_button("https://example.com/a b")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-bad-port",
        {"template": _template(buttons=[_url_button("https://example.com:99999/")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-empty",
        {"template": _template(buttons=[_url_button("")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-userinfo",
        {"template": _template(buttons=[_url_button("http://user:pass@example.com/")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-userinfo-phishing",
        {"template": _template(buttons=[_url_button("https://good.com@evil.com/login")])},
        "template.buttons[0].url.url",
    ),
    (
        "url-userinfo-empty",
        {"template": _template(buttons=[_url_button("https://@evil.com/")])},
        "template.buttons[0].url.url",
    ),
    ("url-at-in-path", {"template": _template(buttons=[_url_button("https://e.com/@me")])}, None),
    (
        "url-at-in-query",
        {"template": _template(buttons=[_url_button("https://e.com/?to=a@b.com#x@y")])},
        None,
    ),
    ("text-zero-width", {"template": _template(text="\u200b\u200b")}, "template.text"),
    ("text-bom", {"template": _template(text="\ufeff")}, "template.text"),
    (
        "text-invisible-mix",
        {"template": _template(text="\u200b \u2060\u00ad\u200d\u200e\u3000\n\u2028")},
        "template.text",
    ),
    ("text-hangul-filler", {"template": _template(text="\u3164\u3164")}, "template.text"),
    ("text-braille-blank", {"template": _template(text="\u2800")}, "template.text"),
    ("text-visible-and-zero-width", {"template": _template(text="a\u200b")}, None),
    (
        "title-zero-width",
        {"template": _template(buttons=[_postback_button("p", title="\u200b\ufeff")])},
        "template.buttons[0].title",
    ),
    (
        "title-combining-only",
        {"template": _template(buttons=[_postback_button("p", title="\u0301\ufe0f")])},
        "template.buttons[0].title",
    ),
    (
        "title-emoji-with-selector",
        {"template": _template(buttons=[_postback_button("p", title="\u2764\ufe0f")])},
        None,
    ),
    (
        "action-unset",
        {"template": _template(buttons=[bt.Button(title="Nothing")])},
        "template.buttons[0].action",
    ),
    ("template-missing", {"template": None}, "template"),
    ("recipient-64", {"recipient_id": "1" * 64}, None),
    ("recipient-65", {"recipient_id": "1" * 65}, "recipient_id"),
    ("recipient-empty", {"recipient_id": ""}, "recipient_id"),
    ("account-explicit", {"account_id": ACCOUNT}, None),
    ("account-unknown", {"account_id": "17840000000000099"}, "account_id"),
    ("tag-human-agent", {"tag": bt.MESSAGE_TAG_HUMAN_AGENT}, None),
    ("tag-unknown", {"tag": 7}, "tag"),
]


def _validate_request(fields: dict[str, Any]) -> send_service_pb2.ValidateButtonTemplateRequest:
    base: dict[str, Any] = {"recipient_id": RECIPIENT, "template": seed_template()}
    base.update(fields)
    if base["template"] is None:
        del base["template"]
    return send_service_pb2.ValidateButtonTemplateRequest(**base)


@pytest.mark.parametrize(("fields", "violated"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_limit_boundaries_on_validate(
    stub: send_service_pb2_grpc.SendServiceStub, fields: dict[str, Any], violated: str | None
) -> None:
    request = _validate_request(fields)
    if violated is None:
        reply = await stub.ValidateButtonTemplate(request, timeout=10)
        assert reply.method == "POST"
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ValidateButtonTemplate(request, timeout=10)
    got = details(caught.value)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert got.reason == ("UNKNOWN_ACCOUNT" if violated == "account_id" else "INVALID_REQUEST")
    assert [v[0] for v in got.violations] == [violated]


SEND_CASES = [c for c in CASES if c[0] != "template-missing"]


@pytest.mark.parametrize(
    ("fields", "violated"), [c[1:] for c in SEND_CASES], ids=[c[0] for c in SEND_CASES]
)
async def test_limit_boundaries_on_send(
    stub: send_service_pb2_grpc.SendServiceStub,
    sandbox: Sandbox,
    fields: dict[str, Any],
    violated: str | None,
) -> None:
    """A valid request is accepted by the sandbox; an invalid one never reaches it."""
    request = send_request(**fields)
    if violated is None:
        reply = await stub.SendButtonTemplate(request, timeout=10)
        assert reply.message_id
        assert [r.accepted for r in sandbox.received] == [True]
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(request, timeout=10)
    assert details(caught.value).violations[0][0] == violated
    assert sandbox.received == []


@pytest.mark.parametrize(
    ("request_id", "ok"),
    [
        ("0" * 36, True),
        ("123e4567-e89b-12d3-a456-426614174000", True),
        ("x", True),
        ("0" * 37, False),
        ("caf\N{LATIN SMALL LETTER E WITH ACUTE}", False),
        ("has space", False),
    ],
)
async def test_request_id_limits(
    stub: send_service_pb2_grpc.SendServiceStub, request_id: str, ok: bool
) -> None:
    request = send_request(request_id=request_id)
    if ok:
        assert (await stub.SendButtonTemplate(request, timeout=10)).message_id
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(request, timeout=10)
    assert [v[0] for v in details(caught.value).violations] == ["request_id"]


async def test_every_violation_is_reported_at_once(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    template = bt.ButtonTemplate(
        text="a" * 641,
        buttons=[
            _postback_button("p" * 1001),
            _url_button("notaurl", title="x" * 21),
            bt.Button(title=""),
            bt.Button(title=""),  # beyond the third: only counted
        ],
    )
    request = send_request(
        recipient_id="", template=template, request_id="r" * 40, account_id="nope"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(request, timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert [v[0] for v in got.violations] == [
        "account_id",
        "recipient_id",
        "template.text",
        "template.buttons",
        "template.buttons[0].postback.payload",
        "template.buttons[1].title",
        "template.buttons[1].url.url",
        "template.buttons[2].title",
        "template.buttons[2].action",
        "request_id",
    ]
    assert all(description for _, description in got.violations)
    assert "and 9 more" in got.message
    assert sandbox.received == []


TWO_ACCOUNTS = [
    {"id": "111", "access_token": "token-of-account-111"},
    {"id": "222", "access_token": "token-of-account-222"},
]


async def test_account_is_required_when_several_are_configured(start_app: AppFactory) -> None:
    app = await start_app(accounts=TWO_ACCOUNTS)
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
        got = details(caught.value)
        assert got.reason == "UNKNOWN_ACCOUNT"
        assert [v[0] for v in got.violations] == ["account_id"]
        assert "several" in got.violations[0][1]
        reply = await stub.SendButtonTemplate(send_request(account_id="222"), timeout=10)
        assert reply.message_id
    assert app.sandbox is not None
    assert [r.account_id for r in app.sandbox.received] == ["222"]
