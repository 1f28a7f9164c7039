"""The consumer settings broadcast readers share: where a consumer starts reading the log,
and the ephemeral, ack-free reader that broadcast cursors and the shared tail create."""

from __future__ import annotations

import datetime
import uuid

from nats.js import api

from igbutton_server.storage.nats._connection import NatsConnection
from igbutton_server.storage.postbacks import Start, StartKind

INACTIVE_THRESHOLD_SECONDS = 60.0
"""An ephemeral consumer nobody pulls from for this long is removed by the server."""


def deliver_policy(start: Start) -> api.ConsumerConfig:
    """The consumer settings that begin reading the log at ``start``."""
    if start.kind is StartKind.EARLIEST or (
        start.kind is StartKind.SINCE_TIME and start.since_ms <= 0
    ):
        return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    if start.kind is StartKind.AFTER_SEQUENCE:
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start.after_sequence + 1,
        )
    if start.kind is StartKind.SINCE_TIME:
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.datetime.fromtimestamp(start.since_ms / 1000, tz=datetime.UTC),
        )
    return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)


async def add_reader(
    conn: NatsConnection, prefix: str, start: Start, account_ids: frozenset[str]
) -> str:
    """Create an ephemeral consumer that reads the log from ``start`` without acks (memory
    storage, one replica), as broadcast cursors and the shared tail do; return its name."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    config = deliver_policy(start)
    config.name = name
    config.ack_policy = api.AckPolicy.NONE
    config.filter_subjects = conn.layout.account_subjects(account_ids)
    config.mem_storage = True
    config.num_replicas = 1
    config.inactive_threshold = INACTIVE_THRESHOLD_SECONDS
    await conn.js.add_consumer(conn.layout.stream, config)
    return name
