"""Server streams at the gRPC level, through real channels to a real App: a burst of
streams opened at once all open (none CANCELLED), and Health/Watch follows the App into
shutdown (SERVING, NOT_SERVING, then the stream ends OK without holding the shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igbutton.v1 import postback_service_pb2, postback_service_pb2_grpc
from tests.conftest import AppFactory, SettingsFactory, starting_apps

BURST = 3000  # grpc's own pending-call limits (1000 soft, 3000 hard) cancelled ~15 % of it
CHANNELS = 4  # 750 streams each: under max_concurrent_streams, so none waits on the client


@pytest.fixture
async def start_app(make_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps with setting overrides; every one is stopped at the end."""
    async with starting_apps(make_settings) as start:
        yield start


@contextlib.asynccontextmanager
async def channels(port: int, count: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    """``count`` channels, each its own connection, closed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await stack.enter_async_context(channel)
            await asyncio.wait_for(channel.channel_ready(), 10)
            opened.append(channel)
        yield opened


async def first_response(call: grpc.aio.UnaryStreamCall[Any, Any]) -> str:
    """OPEN once the stream's first response (or initial metadata) came, else its code."""
    try:
        await call.initial_metadata()
        if call.done():
            return (await call.code()).name
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return "OPEN"


@pytest.mark.slow
@pytest.mark.parametrize("rpc", ["SubscribePostbacks", "Health/Watch"])
async def test_a_burst_of_streams_opened_at_once_all_open(start_app: AppFactory, rpc: str) -> None:
    app = await start_app()
    async with channels(app.ports.grpc, CHANNELS) as opened:
        calls: list[grpc.aio.UnaryStreamCall[Any, Any]] = []
        for i in range(BURST):
            channel = opened[i % CHANNELS]
            if rpc == "SubscribePostbacks":
                calls.append(
                    postback_service_pb2_grpc.PostbackServiceStub(channel).SubscribePostbacks(
                        postback_service_pb2.SubscribePostbacksRequest(), timeout=60
                    )
                )
            else:
                calls.append(
                    health_pb2_grpc.HealthStub(channel).Watch(
                        health_pb2.HealthCheckRequest(), timeout=60
                    )
                )
        try:
            results = Counter(
                await asyncio.wait_for(asyncio.gather(*map(first_response, calls)), 60)
            )
        finally:
            for call in calls:
                call.cancel()
    assert results == {"OPEN": BURST}


async def test_health_watch_sees_not_serving_then_ends_when_the_app_stops(
    start_app: AppFactory,
) -> None:
    # A grace far longer than the test may take: a Watch left open would hold the stop.
    app = await start_app(grpc={"shutdown_grace_seconds": 120})
    async with channels(app.ports.grpc, 1) as (channel,):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        first = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        # Stopped by start_app's exit too, should an assertion fail before it is awaited.
        stopping = asyncio.ensure_future(app.stop())
        second = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(second, health_pb2.HealthCheckResponse)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF
        assert await watch.code() is grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 20)  # not the 120 s grace
