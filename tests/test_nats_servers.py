"""The NATS test servers themselves: JetStream answers, and a cluster replicates a stream."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import PubAck, StreamConfig
from nats.js.client import JetStreamContext

from tests.nats_servers import NatsCluster, NatsServer


async def _publish(js: JetStreamContext, subject: str, data: bytes) -> PubAck:
    # While a stream elects its leader (at creation, or after a node dies) publishes fail
    # fast; a client retries within a bound, as igbutton's NATS backend does.
    async with asyncio.timeout(30):
        while True:
            try:
                return await js.publish(subject, data, timeout=2)
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
