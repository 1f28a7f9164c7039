"""The NATS stores under real faults, on a nats-server of the test's own that it stops and
starts: a send with a request_id fails fast with UNAVAILABLE / STORAGE_UNAVAILABLE naming the
store (never INTERNAL), /readyz says not ready, and both recover when NATS is back. The same
for the shared rate-limit bucket, which every send without a request_id passes too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest

from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.sandbox import Fault
from igbutton_server.storage.nats.postbacks import NatsPostbackStore
from tests.conftest import SettingsFactory, unique_nats_storage
from tests.nats_servers import NatsCluster, NatsServer
from tests.postbacks.conftest import (
    WAIT,
    WebhookClient,
    delivery,
    eventually,
    postbacks,
    webhook_url,
)
from tests.send.conftest import details, send_request, stub_for
from tests.storage.nats_fixtures import nats_test_settings, removing_layout

RID = "5f0c2a8e-4b7d-4e11-9c3a-2d6f7a1b0e42"
FAST_SECONDS = 3.0
"""A fast failure: well inside the call's 10 s deadline and nats-py's 5 s request timeout."""


@pytest.fixture
async def app(make_settings: SettingsFactory, restartable_server: NatsServer) -> AsyncIterator[App]:
    """An App on the test's own nats-server, which the test stops and starts again; its
    pruner runs every 0.2 s, so also while NATS is down."""
    settings = nats_test_settings(
        make_settings, [restartable_server.url], postbacks={"prune_interval_seconds": 0.2}
    )
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            yield instance
        finally:
            try:
                await instance.stop()  # also while NATS is down, as after a failed test
            finally:
                if restartable_server.process is None:
                    restartable_server.start_healthy()  # so the streams can be removed


async def _readyz(app: App) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{app.ports.http}/readyz") as resp,
    ):
        return resp.status, await resp.text()


async def _unavailable_send(app: App, request_id: str) -> tuple[float, str]:
    """Send; the failure must be UNAVAILABLE / STORAGE_UNAVAILABLE. Its time and message."""
    async with stub_for(app) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=request_id), timeout=10)
        elapsed = time.monotonic() - started
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"), got
    return elapsed, got.message


async def _send_when_leader_is_back(
    stub: send_service_pb2_grpc.SendServiceStub,
) -> send_service_pb2.SendButtonTemplateResponse:
    """Send with RID, retrying UNAVAILABLE (as clients do) while the cluster elects the
    leaders of the rate-limit bucket; each failure must be STORAGE_UNAVAILABLE."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        except grpc.aio.AioRpcError as exc:
            got = details(exc)
            assert got.reason == "STORAGE_UNAVAILABLE", got
            assert time.monotonic() < deadline, got
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("request_id", [RID, ""], ids=["request_id", "no_request_id"])
async def test_nats_stopped_fails_sends_fast_and_recovers(
    app: App, restartable_server: NatsServer, request_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    restartable_server.stop()

    async def unready() -> bool:
        return (await _readyz(app))[0] == 503

    await eventually(unready)
    assert "NATS" in (await _readyz(app))[1]
    elapsed, message = await _unavailable_send(app, request_id)
    assert elapsed < FAST_SECONDS
    # The message names the store that failed, so an operator knows where to look.
    store = "idempotency" if request_id else "rate-limit"
    assert "NATS" in message, message
    assert store in message, message
    assert app.sandbox is not None
    assert app.sandbox.received == []
    async with aiohttp.ClientSession() as http:
        status, _ = await WebhookClient(http, webhook_url(app)).post(
            delivery(*postbacks("while-down", 1))
        )
    assert status == 503

    restartable_server.start_healthy()  # same ports and data

    async def ready() -> bool:
        return (await _readyz(app))[0] == 200

    await eventually(ready, within=WAIT + 10)
    async with stub_for(app) as stub:
        answer = await stub.SendButtonTemplate(send_request(request_id=request_id), timeout=10)
    assert answer.message_id
    assert len(app.sandbox.received) == 1
    # Not one traceback for the outage (requests it cut off time out after 5 s: long gone).
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"


async def test_an_app_stops_cleanly_while_nats_is_down(
    make_settings: SettingsFactory, restartable_server: NatsServer
) -> None:
    settings = nats_test_settings(make_settings, [restartable_server.url])
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            restartable_server.stop()

            async def unready() -> bool:
                return (await _readyz(instance))[0] == 503

            await eventually(unready)
            # Something waiting in a client's buffer for the reconnect, as a publish made
            # just before the disconnect was noticed would.
            store = instance.postback_store
            assert isinstance(store, NatsPostbackStore)
            await store.conn.client.publish("igbutton.test.buffered", b"x")
            started = time.monotonic()
            await instance.stop()  # raised ConnectionResetError from nats-py's close before
            assert time.monotonic() - started < WAIT
        finally:
            await instance.stop()
            restartable_server.start_healthy()  # so the streams can be removed


async def test_jetstream_without_quorum_fails_sends_fast_and_recovers(
    make_settings: SettingsFactory, nats_cluster: NatsCluster
) -> None:
    """NATS answers but JetStream cannot: two of three nodes gone, so the R3 bucket has no
    leader. The client stays connected (to the survivor); the store's requests go
    unanswered (no responders, or nats-py's request timeout)."""
    settings = make_settings(storage=unique_nats_storage(nats_cluster.urls, replicas=3))
    others = nats_cluster.nodes[1:]
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            for node in others:
                node.stop()

            async def unready() -> bool:
                return (await _readyz(instance))[0] == 503

            await eventually(unready, within=WAIT + 10)
            elapsed, message = await _unavailable_send(instance, RID)
            assert elapsed < 6.0  # at most nats-py's 5 s request timeout, not the deadline
            assert "NATS idempotency store" in message, message
            # The next ones do not each wait for the timeout: only the heartbeat tries.
            elapsed, message = await _unavailable_send(instance, RID)
            assert elapsed < FAST_SECONDS
            assert "NATS idempotency store" in message, message
            # Without a request_id the shared rate-limit bucket is the store that fails.
            elapsed, message = await _unavailable_send(instance, "")
            assert elapsed < 6.0
            assert "rate-limit bucket" in message, message
            elapsed, message = await _unavailable_send(instance, "")
            assert elapsed < FAST_SECONDS
            assert "rate-limit bucket" in message, message
            assert instance.sandbox is not None
            assert instance.sandbox.received == []
            for node in others:
                node.start_healthy()

            async def ready() -> bool:
                return (await _readyz(instance))[0] == 200

            await eventually(ready, within=WAIT + 30)
            async with stub_for(instance) as stub:
                answer = await _send_when_leader_is_back(stub)
            assert answer.message_id
            assert len(instance.sandbox.received) == 1
        finally:
            await instance.stop()
            for node in others:
                if node.process is None:
                    node.start_healthy()  # so the streams can be removed


async def test_a_release_nats_missed_does_not_block_the_retry(
    make_settings: SettingsFactory, restartable_server: NatsServer
) -> None:
    """Meta answers a transient error (it did not act) while NATS is down, so the claim
    cannot be released: the caller is told to retry, and its retry (NATS back) must send,
    not wait out the claim's lease as "in progress"."""
    settings = nats_test_settings(
        make_settings, [restartable_server.url], graph={"max_attempts": 1}
    )
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            assert instance.sandbox is not None
            sandbox = instance.sandbox
            sandbox.add_fault(
                Fault(kind="graph_error", code=2, is_transient=True, delay_seconds=1.0)
            )
            async with stub_for(instance) as stub:
                first = asyncio.ensure_future(
                    stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
                )

                async def at_meta() -> bool:  # claimed and marked written
                    return len(sandbox.received) == 1

                await eventually(at_meta)
                restartable_server.stop()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await first
                assert details(caught.value).reason == "GRAPH_UNAVAILABLE"
                restartable_server.start_healthy()  # same ports and data

                async def ready() -> bool:
                    return (await _readyz(instance))[0] == 200

                await eventually(ready, within=WAIT + 10)
                reply = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
            assert reply.message_id
            assert len(sandbox.received) == 2
        finally:
            try:
                await instance.stop()
            finally:
                if restartable_server.process is None:
                    restartable_server.start_healthy()  # so the streams can be removed
