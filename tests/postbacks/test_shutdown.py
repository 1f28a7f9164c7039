"""App.stop(): webhooks stop first and finish what they are storing, streams end with
UNAVAILABLE / SHUTTING_DOWN, and only then does the store close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import pytest

from igbutton.v1 import postback_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.storage.backends import open_storage
from igbutton_server.storage.postbacks import AppendResult, Filter, NewPostback, Start
from tests.postbacks.conftest import (
    AppFactory,
    Stream,
    WebhookClient,
    delivery,
    eventually,
    postback_item,
    store_of,
)
from tests.postbacks.test_streams import details

Streams = Callable[..., Awaitable[Stream]]


async def test_stop_ends_open_streams_with_shutting_down(
    start_app: AppFactory, streams: Streams
) -> None:
    app = await start_app()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        broadcast = await streams(stub)
        member = await streams(stub, group="g")
        await app.stop()
        for stream in (broadcast, member):
            error = await stream.end()
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert details(error)[0] == "SHUTTING_DOWN"


async def test_stop_finishes_deliveries_being_stored_before_the_store_closes(
    start_app: AppFactory,
    webhook_for: Callable[[App], WebhookClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = await start_app()
    store = store_of(app)
    real_append = store.append
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_append(postbacks: Sequence[NewPostback]) -> AppendResult:
        entered.set()
        await release.wait()
        return await real_append(postbacks)

    monkeypatch.setattr(store, "append", slow_append)
    posting = asyncio.create_task(webhook_for(app).post(delivery(postback_item("in-flight"))))
    await asyncio.wait_for(entered.wait(), 15)
    runner = app._webhook_runner
    assert runner is not None
    stopping = asyncio.create_task(app.stop())

    async def not_listening() -> bool:
        return not runner.sites

    # The webhook stops listening while that delivery is still being stored...
    await eventually(not_listening)
    assert not stopping.done()
    # ...and the store stays open until it is.
    release.set()
    status, answer = await posting
    assert (status, answer["stored"]) == (200, 1)
    await stopping

    reopened = await open_storage(app.settings)
    try:
        cursor = await reopened.postbacks.subscribe(Filter(), Start.earliest())
        assert (await asyncio.wait_for(anext(cursor), 15)).mid == "in-flight"
    finally:
        await reopened.close()
