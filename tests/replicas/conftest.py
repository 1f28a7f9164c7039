"""Fixtures for multi-replica tests: igbutton processes on a 3-node JetStream cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from igbutton_server.postbacks.webhook import SIGNATURE_HEADER, sign
from tests.nats_servers import NatsCluster
from tests.postbacks.conftest import delivery
from tests.replicas.processes import APP_SECRET, Replica, SandboxProcess

StartReplicas = Callable[..., list[Replica]]


@pytest.fixture
def start_replicas(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[StartReplicas]:
    """Start igbutton replicas on the test's cluster: ``start_replicas(2)``."""
    started: list[Replica] = []

    def start(
        count: int, graph_url: str | None = None, env: dict[str, str] | None = None
    ) -> list[Replica]:
        batch = []
        for _ in range(count):
            replica = Replica(
                name=f"r{len(started) + 1}",
                workdir=tmp_path / "replicas",
                nats_urls=nats_cluster.urls,
                extra_env=dict(env or {}),
            )
            if graph_url is not None:
                replica.graph_url = graph_url
            started.append(replica)
            batch.append(replica)
            replica.start()
        for replica in batch:
            replica.wait_ready()
        return batch

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[SandboxProcess]:
    """One sandbox process that every replica sends to."""
    sandbox = SandboxProcess(tmp_path / "sandbox")
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client."""
    async with aiohttp.ClientSession() as session:
        yield session


async def deliver_like_meta(
    http: aiohttp.ClientSession, url: str, *items: dict[str, Any], within: float = 60.0
) -> None:
    """POST a signed delivery and, like Meta, repeat it until it is answered 200."""
    body = delivery(*items)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, APP_SECRET.encode()),
    }
    deadline = time.monotonic() + within
    while True:
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                if resp.status == 200:
                    return
                status = resp.status
        except aiohttp.ClientError as exc:
            status = str(exc)
        assert time.monotonic() < deadline, f"delivery never accepted (last: {status})"
        await asyncio.sleep(0.2)  # Meta's retry interval, shortened


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[Replica], grpc.aio.Channel]]:
    """gRPC channels to replicas, closed at the end."""
    opened: list[grpc.aio.Channel] = []

    def open_channel(replica: Replica) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(replica.grpc_target)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()


@pytest.fixture
async def streams(
    channels: Callable[[Replica], grpc.aio.Channel],
) -> AsyncIterator[Callable[..., Any]]:
    """Open SubscribePostbacks streams on replicas: ``await streams(replica, **fields)``;
    all cancelled before the channels close."""
    from igbutton.v1 import postback_service_pb2_grpc
    from tests.postbacks.conftest import Stream

    opened: list[Stream] = []

    async def open_stream(replica: Replica, **fields: Any) -> Stream:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channels(replica))
        stream = await Stream.open(stub, **fields)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        await stream.cancel()
