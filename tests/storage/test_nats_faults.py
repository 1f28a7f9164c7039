"""The NATS stores under real faults, on a nats-server of the test's own that it stops and
starts: a send with a request_id fails fast with UNAVAILABLE / STORAGE_UNAVAILABLE naming the
store (never INTERNAL), /readyz says not ready, and both recover when NATS is back. The same
for the shared rate-limit bucket, which every send without a request_id passes too, and for
every other call that reads or writes NATS: acks, streams, groups, messaging windows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from igbutton.v1 import group_service_pb2 as gpb
from igbutton.v1 import (
    group_service_pb2_grpc,
    postback_service_pb2_grpc,
    send_service_pb2,
    send_service_pb2_grpc,
)
from igbutton.v1 import postback_service_pb2 as pb
from igbutton_server.app import App
from igbutton_server.sandbox import Fault
from igbutton_server.storage.nats.postbacks import NatsPostbackStore
from tests.conftest import SettingsFactory, unique_nats_storage
from tests.nats_servers import NatsCluster, NatsServer
from tests.postbacks.conftest import (
    ACCOUNT,
    WAIT,
    Stream,
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


@pytest.fixture
async def three_nodes(
    make_settings: SettingsFactory, nats_cluster: NatsCluster
) -> AsyncIterator[tuple[App, list[NatsServer]]]:
    """An App on the 3-node cluster with streams of 3 replicas, and the two nodes a test
    stops to take JetStream's quorum away (they run again once it ends)."""
    settings = make_settings(storage=unique_nats_storage(nats_cluster.urls, replicas=3))
    others = nats_cluster.nodes[1:]
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            yield instance, others
        finally:
            await instance.stop()
            for node in others:
                if node.process is None:
                    node.start_healthy()  # so the streams can be removed


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


async def _first_of(
    stub: postback_service_pb2_grpc.PostbackServiceStub, **fields: object
) -> pb.SubscribePostbacksResponse:
    """Open a stream and read its first message: a stream refused at once raises its
    error here (``Stream.open`` may return before its reader has seen it)."""
    stream = await Stream.open(stub, **fields)
    try:
        return await stream.next(FAST_SECONDS)
    finally:
        await stream.cancel()


async def test_nats_stopped_fails_every_other_call_fast_and_loses_no_ack(
    app: App, restartable_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Acks, streams, groups and windows while NATS is down: UNAVAILABLE /
    STORAGE_UNAVAILABLE naming the postback store, at once, as sends are (they were
    INTERNAL, each after nats-py's 5 s timeout); the ack taken again once NATS is back."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel,
        aiohttp.ClientSession() as http,
    ):
        postbacks_stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        groups = group_service_pb2_grpc.GroupServiceStub(channel)
        sends = send_service_pb2_grpc.SendServiceStub(channel)
        member = await Stream.open(postbacks_stub, group="orders", max_unacked=10)
        await WebhookClient(http, webhook_url(app)).deliver(*postbacks("held", 1))
        held = await member.next()
        await member.cancel()
        restartable_server.stop()
        store = app.postback_store
        assert isinstance(store, NatsPostbackStore)

        async def unready() -> bool:  # and the postback store's client knows it
            return (await _readyz(app))[0] == 503 and not store.conn.connected

        await eventually(unready)
        name = "groups/orders"
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "AckPostbacks": lambda: postbacks_stub.AckPostbacks(
                pb.AckPostbacksRequest(group="orders", ack_ids=[held.ack_id]), timeout=10
            ),
            "ModifyAckDeadline": lambda: groups.ModifyAckDeadline(
                gpb.ModifyAckDeadlineRequest(
                    name=name, ack_ids=[held.ack_id], ack_deadline=Duration(seconds=60)
                ),
                timeout=10,
            ),
            "ListGroups": lambda: groups.ListGroups(gpb.ListGroupsRequest(), timeout=10),
            "GetGroup": lambda: groups.GetGroup(gpb.GetGroupRequest(name=name), timeout=10),
            "SeekGroup": lambda: groups.SeekGroup(
                gpb.SeekGroupRequest(name=name, after_sequence=0), timeout=10
            ),
            "DeleteGroup": lambda: groups.DeleteGroup(
                gpb.DeleteGroupRequest(name=name), timeout=10
            ),
            "ListDeadLetters": lambda: groups.ListDeadLetters(
                gpb.ListDeadLettersRequest(parent=name), timeout=10
            ),
            "RedriveDeadLetters": lambda: groups.RedriveDeadLetters(
                gpb.RedriveDeadLettersRequest(name=name), timeout=10
            ),
            "PurgeDeadLetters": lambda: groups.PurgeDeadLetters(
                gpb.PurgeDeadLettersRequest(name=name), timeout=10
            ),
            "GetMessagingWindow": lambda: sends.GetMessagingWindow(
                send_service_pb2.GetMessagingWindowRequest(
                    account_id=ACCOUNT, recipient_id="someone"
                ),
                timeout=10,
            ),
            "SubscribePostbacks (group)": lambda: _first_of(
                postbacks_stub, group="orders", max_unacked=10
            ),
            "SubscribePostbacks": lambda: _first_of(postbacks_stub),
        }
        for call, make in calls.items():
            started = time.monotonic()
            try:
                await make()
            except grpc.aio.AioRpcError as exc:
                failure = exc
            else:
                pytest.fail(f"{call} answered while NATS is down")
            elapsed = time.monotonic() - started
            got = details(failure)
            assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"), (
                call,
                got,
            )
            assert "NATS" in got.message, (call, got)
            assert elapsed < FAST_SECONDS, (call, elapsed)

        restartable_server.start_healthy()

        async def ready() -> bool:
            return (await _readyz(app))[0] == 200

        await eventually(ready, within=WAIT + 10)
        acked = await postbacks_stub.AckPostbacks(
            pb.AckPostbacksRequest(group="orders", ack_ids=[held.ack_id]), timeout=10
        )
        assert (acked.applied_count, list(acked.unknown_ack_ids)) == (1, [])
        group = (await groups.GetGroup(gpb.GetGroupRequest(name=name), timeout=10)).group
        assert group.unacked_count == 0
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
    three_nodes: tuple[App, list[NatsServer]],
) -> None:
    """NATS answers but JetStream cannot: two of three nodes gone, so the R3 bucket has no
    leader. The client stays connected (to the survivor); the store's requests go
    unanswered (no responders, or nats-py's request timeout)."""
    instance, others = three_nodes
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


async def test_an_ack_without_quorum_is_unavailable_and_applies_once_nats_is_back(
    three_nodes: tuple[App, list[NatsServer]],
) -> None:
    """The replicas' outage seen from a group: the client is connected, the delivery
    ledger has no leader, so the ack's read goes unanswered for nats-py's timeout. It is
    UNAVAILABLE naming the postback store (it was INTERNAL), and the same ack, retried as
    clients do once JetStream answers again, applies."""
    instance, others = three_nodes
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{instance.ports.grpc}") as channel,
        aiohttp.ClientSession() as http,
    ):
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await Stream.open(stub, group="orders", max_unacked=10)
        await WebhookClient(http, webhook_url(instance)).deliver(*postbacks("held", 1))
        held = await member.next()
        for node in others:
            node.stop()
        ack = pb.AckPostbacksRequest(group="orders", ack_ids=[held.ack_id])
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AckPostbacks(ack, timeout=10)
        # nats-py's 5 s request timeout, then the answer: not the call's deadline.
        assert time.monotonic() - started < 9.0
        got = details(caught.value)
        assert (got.code, got.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
        ), got
        assert "NATS postback store" in got.message, got
        for node in others:
            node.start_healthy()
        deadline = time.monotonic() + WAIT + 30
        while True:
            try:
                reply = await stub.AckPostbacks(ack, timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                retried = details(exc)
                assert retried.reason == "STORAGE_UNAVAILABLE", retried
                assert time.monotonic() < deadline, retried
            await asyncio.sleep(0.2)  # a client's retry backoff
        assert (reply.applied_count, list(reply.unknown_ack_ids)) == (1, [])
        await member.cancel()


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
