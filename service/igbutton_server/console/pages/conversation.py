"""Conversation (sandbox mode): what the sandbox received, as the person's chat shows it.

Each accepted button template is a bubble; a postback button is a form whose POST taps it
exactly as ``Sandbox.tap`` (and ``igbutton tap``) does: the sandbox delivers a signed
``messaging_postbacks`` webhook to igbutton, which stores the postback, and every live
feed shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from igbutton_server.console.pages import ConsoleContext, Page, Route
from igbutton_server.sandbox import RecordedSend, UnknownMessageError

MESSAGES_SHOWN = 100
"""The most recent accepted sends shown (the sandbox keeps up to 100,000)."""


@dataclass(frozen=True)
class Button:
    """A button as the page draws it."""

    index: int
    kind: str
    """``postback`` or ``web_url``."""
    title: str
    url: str
    """For web_url buttons; empty when not an http(s) URL (then no link is drawn)."""


@dataclass(frozen=True)
class Message:
    """One accepted button template."""

    message_id: str
    account_id: str
    recipient_id: str
    text: str
    buttons: tuple[Button, ...]
    sent_at: str


def _button(index: int, raw: Any) -> Button:
    raw = raw if isinstance(raw, dict) else {}
    url = str(raw.get("url", ""))
    return Button(
        index=index,
        kind=str(raw.get("type", "")),
        title=str(raw.get("title", "")),
        # Only http(s) becomes a link: the sandbox also records sends made without igbutton.
        url=url if url.lower().startswith(("http://", "https://")) else "",
    )


def _message(record: RecordedSend) -> Message | None:
    body = record.body
    try:
        payload = body["message"]["attachment"]["payload"]
        text, buttons = str(payload["text"]), payload["buttons"]
    except (KeyError, TypeError):
        return None
    return Message(
        message_id=record.message_id or "",
        account_id=record.account_id,
        recipient_id=record.recipient_id or "",
        text=text,
        buttons=tuple(_button(i, b) for i, b in enumerate(buttons)),
        sent_at=time.strftime("%H:%M:%S", time.localtime(record.received_at)),
    )


def _conversations(ctx: ConsoleContext) -> list[tuple[str, list[Message]]]:
    """(recipient, messages oldest first), the most recently active recipient first."""
    assert ctx.sandbox is not None
    recent = ctx.sandbox.accepted()[-MESSAGES_SHOWN:]
    by_recipient: dict[str, list[Message]] = {}
    for record in recent:
        message = _message(record)
        if message is not None:
            # Re-inserted, so the dict ends with the most recently active recipient.
            thread = by_recipient.pop(message.recipient_id, [])
            thread.append(message)
            by_recipient[message.recipient_id] = thread
    return list(reversed(by_recipient.items()))


async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    return ctx.render(
        request,
        "conversation.html",
        conversations=_conversations(ctx),
        tapped=request.query.get("tapped", ""),
        webhook_status=request.query.get("status", ""),
        problem=request.query.get("problem", ""),
    )


async def _tap(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    assert ctx.sandbox is not None
    form = await request.post()
    message_id, index = form.get("message_id"), form.get("button")
    if (
        not isinstance(message_id, str)
        or not isinstance(index, str)
        or not (index.isascii() and index.isdigit())
    ):
        raise web.HTTPBadRequest(text="message_id and button (a number) are required")
    query: dict[str, str]
    try:
        result = await ctx.sandbox.tap(message_id, int(index))
    except (UnknownMessageError, ValueError, RuntimeError) as exc:
        query = {"problem": str(exc)}
    else:
        query = {"tapped": result.title, "status": str(result.webhook_status)}
        if result.webhook_error:
            query["problem"] = result.webhook_error
    # Post/redirect/get: reloading the page does not tap again.
    raise web.HTTPSeeOther(request.app.router["conversation"].url_for().with_query(query))


PAGE = Page(
    slug="conversation",
    title="Conversation",
    order=20,
    routes=(Route("GET", "", _page), Route("POST", "/tap", _tap)),
    available=lambda ctx: ctx.sandbox is not None,
)
