"""Live postbacks: server-sent events of postbacks as they are stored.

The event stream is a broadcast subscriber like any other (``PostbackStore.subscribe``):
a cursor over the log that reads at the browser's pace, so a slow or paused browser costs
the webhook path nothing and no memory. Each event's id is the postback's sequence, so a
reconnecting EventSource (``Last-Event-ID``) or a resumed pause (``?after=``) continues
where it stopped, missing nothing. Filters are those of ``SubscribePostbacks``: accounts
and a payload prefix.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from igbutton_server import metrics
from igbutton_server.config import ACCOUNT_ID_RE
from igbutton_server.console.pages import SESSION_KEY, ConsoleContext, Page, Route
from igbutton_server.errors import api_error
from igbutton_server.postbacks.requests import MAX_PAYLOAD_PREFIX
from igbutton_server.storage.postbacks import Filter, Start, StoredPostback, Subscription

HEARTBEAT_SECONDS = 15.0
"""A comment line this often: proxies keep the stream open, and a browser gone is noticed
(aiohttp does not cancel a handler whose client left)."""
RETRY_MILLISECONDS = 2000
"""How soon a browser reconnects after the stream broke."""
_STREAM = metrics.SUBSCRIBERS.labels(kind="console")


def _event(postback: StoredPostback) -> bytes:
    data = {
        "sequence": postback.sequence,
        "account_id": postback.account_id,
        "sender_id": postback.sender_id,
        "mid": postback.mid,
        "title": postback.title,
        "payload": postback.payload,
        "tap_time_ms": postback.tap_time_ms,
        "received_ms": postback.received_ms,
        "standby": postback.standby,
    }
    # One line of JSON (json.dumps escapes newlines), one write per event.
    return f"id: {postback.sequence}\nevent: postback\ndata: {json.dumps(data)}\n\n".encode()


def _filter(request: web.Request) -> Filter:
    accounts = [a for a in request.query.getall("account", []) if a]
    prefix = request.query.get("prefix", "")
    bad = [a for a in accounts if not ACCOUNT_ID_RE.match(a)]
    if bad or len(prefix) > MAX_PAYLOAD_PREFIX:
        raise web.HTTPBadRequest(text="account must be an IG ID; prefix at most 1000 characters")
    allowed = request[SESSION_KEY].caller
    wanted = frozenset(accounts)
    if allowed is not None and "*" not in allowed.accounts:
        mine = frozenset(allowed.accounts)
        if wanted - mine:
            raise web.HTTPForbidden(text=f"{allowed.name} may not read those accounts")
        wanted = wanted or mine
    return Filter(wanted, prefix)


def _number(value: str, name: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer")
    return int(value)


def _start(request: web.Request) -> Start:
    """After ``Last-Event-ID`` (a reconnect) or ``after`` (a resumed pause), since
    ``since_ms`` (a pause before any postback arrived), else the latest."""
    after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    if after:
        return Start.after(_number(after, "after"))
    since = request.query.get("since_ms", "")
    if since:
        return Start.since(_number(since, "since_ms"))
    return Start.latest()


async def _heartbeat(response: web.StreamResponse, subscription: Subscription) -> None:
    try:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await response.write(b": keep-alive\n\n")
    except ConnectionError:
        await subscription.close()  # the browser left: end the cursor and the handler


async def _events(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    flt, start = _filter(request), _start(request)
    try:
        subscription = await ctx.store.subscribe(flt, start)
    except Exception as exc:
        # Storage unavailable or closing (errors.api_error, the one mapping): 503, and the
        # page tries again. A bug propagates, and aiohttp logs it with its trace.
        error = api_error(exc)
        if error is None:
            raise
        raise web.HTTPServiceUnavailable(text=error.message) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on at once
        }
    )
    _STREAM.inc()
    heartbeat: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        # Sent once the cursor exists: from here on every stored postback reaches it. The
        # server's clock lets a browser that pauses before any postback resume by time.
        hello = json.dumps({"now_ms": int(time.time() * 1000)})
        await response.write(
            f"retry: {RETRY_MILLISECONDS}\nevent: hello\ndata: {hello}\n\n".encode()
        )
        heartbeat = asyncio.create_task(_heartbeat(response, subscription))
        async for postback in subscription:
            await response.write(_event(postback))
    except ConnectionError:
        pass  # the browser went away mid-write
    finally:
        _STREAM.dec()
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.wait([heartbeat])  # unlike awaiting it, keeps our own cancellation
        await subscription.close()
    return response


async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    return ctx.render(
        request,
        "live.html",
        accounts=[a.id for a in ctx.settings.accounts],
        account=request.query.get("account", ""),
        prefix=request.query.get("prefix", ""),
    )


PAGE = Page(
    slug="live",
    title="Live postbacks",
    order=30,
    routes=(Route("GET", "", _page), Route("GET", "/events", _events)),
)
