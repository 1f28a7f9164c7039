"""The NATS test servers themselves: JetStream answers, and a cluster replicates a stream."""

from __future__ import annotations

import asyncio
import uuid

import nats
from nats.js.api import Header, PubAck, StreamConfig
from nats.js.client import JetStreamContext

from tests.nats_servers import NatsCluster, NatsServer


async def _publish(js: JetStreamContext, subject: str, data: bytes) -> PubAck:
    # While a stream elects its leader (at creation, or after a node dies) publishes fail
    # fast; a client retries within a bound, as igbutton's NATS backend does. A publish
    # can also be stored while its PubAck is lost to the dying node; the message id makes
    # the retry a duplicate that JetStream answers with the first copy's sequence.
    async with asyncio.timeout(30):
        while True:
            try:
                return await js.publish(subject, data, timeout=2, headers={Header.MSG_ID: subject})
            except nats.errors.Error:
                await asyncio.sleep(0.1)


async def test_single_server_has_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_a_repeated_message_id_is_stored_once(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        # The server is shared by the whole session: a stream and subjects of its own.
        name = f"D{uuid.uuid4().hex}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
        first = await _publish(js, f"{name}.1", b"one")
        again = await _publish(js, f"{name}.1", b"one")
        assert (first.seq, first.duplicate) == (1, None)
        assert (again.seq, again.duplicate) == (1, True)
        assert (await js.stream_info(name)).state.messages == 1
    finally:
        await nc.close()


async def test_cluster_replicates_a_stream_and_survives_a_node(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
        assert (await _publish(js, "t.1", b"one")).seq == 1
        nats_cluster.nodes[0].kill()
        assert (await _publish(js, "t.2", b"two")).seq == 2
        info = await js.stream_info("T")
        assert info.state.messages == 2
    finally:
        await nc.close()
