"""The NATS test servers themselves: JetStream answers, and a cluster replicates a stream."""

from __future__ import annotations

import nats
from nats.js.api import StreamConfig

from tests.nats_servers import NatsCluster, NatsServer


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
        ack = await js.publish("t.1", b"one")
        assert ack.seq == 1
        nats_cluster.nodes[0].kill()
        ack = await js.publish("t.2", b"two", timeout=10)
        assert ack.seq == 2
        info = await js.stream_info("T")
        assert info.state.messages == 2
    finally:
        await nc.close()
