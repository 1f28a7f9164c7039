"""Helpers for the postback tests: Meta-shaped deliveries, a signing webhook client and a
gRPC stream reader that never cancels the call by accident."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest

from igbutton.v1 import postback_service_pb2 as pb
from igbutton.v1 import postback_service_pb2_grpc
from igbutton_server.app import SANDBOX_ACCESS_TOKEN, App
from igbutton_server.config import Settings
from igbutton_server.postbacks.webhook import SIGNATURE_HEADER, sign
from igbutton_server.storage.postbacks import (
    Filter,
    NewPostback,
    PostbackStore,
    Start,
    StoredPostback,
)
from tests.conftest import AppFactory, SettingsFactory, starting_apps

T = TypeVar("T")

SECRET = b"test-app-secret"
ROTATED_SECRET = b"rotated-app-secret"
VERIFY_TOKEN = "verify-token-for-tests"
ACCOUNT = "17841400000000000"
OTHER_ACCOUNT = "17841400000000099"
SENDER = "1234567890123456"
WAIT = 15.0
"""Upper bound for anything a test waits for; reached only when something is broken."""
_LARGE_BODY_BYTES = 1024 * 1024


def postback_item(
    mid: str,
    *,
    account: str = ACCOUNT,
    sender: str = SENDER,
    payload: str = "BUY",
    title: str = "Buy now",
    timestamp: int = 1_502_905_976_377,
    **extra: Any,
) -> dict[str, Any]:
    """One ``messaging`` item of a postback, as Meta sends it."""
    return {
        "sender": {"id": sender},
        "recipient": {"id": account},
        "timestamp": timestamp,
        "postback": {"mid": mid, "title": title, "payload": payload, **extra},
    }


def delivery(*items: dict[str, Any], account: str = ACCOUNT, obj: str = "instagram") -> bytes:
    """A webhook body with one entry holding ``items``."""
    entry = {"id": account, "time": int(time.time() * 1000), "messaging": list(items)}
    return json.dumps({"object": obj, "entry": [entry]}).encode()


def postbacks(prefix: str, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """``count`` postback items with mids ``<prefix>-0`` ... and payloads ``P<i>``."""
    return [postback_item(f"{prefix}-{i}", **{"payload": f"P{i}", **kwargs}) for i in range(count)]


class WebhookClient:
    """Posts (signed) deliveries to an App's webhook port."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def post(
        self,
        body: bytes,
        *,
        secret: bytes | None = SECRET,
        signature: str | None = None,
    ) -> tuple[int, Any]:
        """POST ``body`` signed with ``secret`` (or with the given header, or unsigned)."""
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        elif secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, secret)
        # aiohttp warns (an error here) about a large bytes body; a BytesIO is streamed.
        data = io.BytesIO(body) if len(body) > _LARGE_BODY_BYTES else body
        async with self.session.post(self.url, data=data, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def deliver(self, *items: dict[str, Any]) -> dict[str, Any]:
        """Deliver postback items and insist on a 200."""
        status, answer = await self.post(delivery(*items))
        assert status == 200, answer
        assert isinstance(answer, dict)
        return answer


def webhook_url(app: App) -> str:
    """The URL of the App's webhook."""
    return f"http://127.0.0.1:{app.ports.webhook}{app.settings.webhook.path}"


def postback_overrides() -> dict[str, Any]:
    """Settings every postback test App gets: the two accounts the tests post for (the
    webhook skips other accounts' postbacks), a verify token and two app secrets."""
    return {
        "accounts": [
            {"id": ACCOUNT, "access_token": SANDBOX_ACCESS_TOKEN},
            {"id": OTHER_ACCOUNT, "access_token": "other-account-token"},
        ],
        "webhook": {
            "verify_token": VERIFY_TOKEN,
            "app_secrets": [SECRET.decode(), ROTATED_SECRET.decode()],
        },
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@pytest.fixture
async def start_app(engine_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps with ``await start_app(**overrides)`` on the test's ``engine`` (the same
    SQLite file, or the same streams, each time unless overridden); every App still running
    at the end is stopped."""

    def settings(**overrides: Any) -> Settings:
        return engine_settings(**_merge(postback_overrides(), overrides))

    async with starting_apps(settings) as start:
        yield start


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    """The App of the postback tests (sandbox on, verify token, two app secrets)."""
    return await start_app()


def store_of(app: App) -> PostbackStore:
    """The App's postback store."""
    assert app.postback_store is not None
    return app.postback_store


async def appended_during(app: App, action: Awaitable[T]) -> tuple[T, list[StoredPostback]]:
    """Run ``action`` and return what it appended to the log, in order.

    A marker appended after the action bounds the read, so "nothing was stored" is
    checked without waiting for something not to happen.
    """
    store = store_of(app)
    cursor = await store.subscribe(Filter(), Start.latest())
    try:
        result = await action
        marker = f"marker-{uuid.uuid4()}"
        await store.append([NewPostback("marker", "marker", marker, "", "", 0, "{}")])
        appended: list[StoredPostback] = []
        while True:
            postback = await asyncio.wait_for(anext(cursor), WAIT)
            if postback.mid == marker:
                return result, appended
            appended.append(postback)
    finally:
        await cursor.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def webhook(app: App, http: aiohttp.ClientSession) -> WebhookClient:
    """A client for the ``app`` fixture's webhook."""
    return WebhookClient(http, webhook_url(app))


@pytest.fixture
def webhook_for(http: aiohttp.ClientSession) -> Callable[[App], WebhookClient]:
    """Webhook clients for Apps started in the test."""
    return lambda app: WebhookClient(http, webhook_url(app))


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> postback_service_pb2_grpc.PostbackServiceStub:
    """A PostbackService client on the ``app`` fixture."""
    return postback_service_pb2_grpc.PostbackServiceStub(channel)


class Stream:
    """An open SubscribePostbacks call read by a background task into a queue.

    Reading through a queue means a test can wait for a message with a timeout without
    cancelling the RPC (cancelling ``call.read()`` cancels the call).
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self.queue: asyncio.Queue[pb.SubscribePostbacksResponse | grpc.aio.AioRpcError | None]
        self.queue = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, stub: postback_service_pb2_grpc.PostbackServiceStub, **fields: Any
    ) -> Stream:
        """Subscribe, and return once the server has fixed the start position."""
        call = stub.SubscribePostbacks(pb.SubscribePostbacksRequest(**fields))
        stream = cls(call)
        await asyncio.wait_for(call.initial_metadata(), WAIT)
        if stream._reader.done() and stream.error is not None:
            raise stream.error
        return stream

    async def _read(self) -> None:
        try:
            async for message in self.call:
                await self.queue.put(message)
            await self.queue.put(None)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
            await self.queue.put(exc)
        except asyncio.CancelledError:
            pass

    async def next(self, within: float = WAIT) -> pb.SubscribePostbacksResponse:
        """The next message; fails on end of stream, error or timeout."""
        item = await asyncio.wait_for(self.queue.get(), within)
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        assert item is not None, "the stream ended"
        return item

    async def take(self, count: int, within: float = WAIT) -> list[pb.SubscribePostbacksResponse]:
        """The next ``count`` messages."""
        return [await self.next(within) for _ in range(count)]

    async def end(self, within: float = WAIT) -> grpc.aio.AioRpcError | None:
        """Wait for the stream to end; the error it ended with, or None."""
        while True:
            item = await asyncio.wait_for(self.queue.get(), within)
            if item is None or isinstance(item, grpc.aio.AioRpcError):
                return item

    async def cancel(self) -> None:
        """Cancel the call (like a client that went away)."""
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@pytest.fixture
async def streams() -> AsyncIterator[Callable[..., Awaitable[Stream]]]:
    """Open streams with ``await streams(stub, **request_fields)``; all cancelled at the end."""
    opened: list[Stream] = []

    async def open_stream(
        stub: postback_service_pb2_grpc.PostbackServiceStub, **fields: Any
    ) -> Stream:
        stream = await Stream.open(stub, **fields)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        await stream.cancel()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    """Poll ``check`` until it holds, failing after ``within`` seconds (a bound, not a sleep)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
