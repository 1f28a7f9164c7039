"""The messaging window on three igbutton replicas sharing one JetStream cluster: a window
a webhook opens on one replica is seen by the others."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import grpc
import pytest

from igbutton.v1 import send_service_pb2 as spb
from igbutton.v1 import send_service_pb2_grpc
from tests.postbacks.conftest import postback_item
from tests.replicas.conftest import StartReplicas, deliver_like_meta
from tests.replicas.processes import ACCOUNT, Replica

pytestmark = pytest.mark.slow


async def test_a_window_opened_on_one_replica_is_seen_by_the_others(
    start_replicas: StartReplicas,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    a, b, c = start_replicas(3)
    person = "1000000000000077"
    tapped = int(time.time() * 1000) - 60_000
    request = spb.GetMessagingWindowRequest(account_id=ACCOUNT, recipient_id=person)
    for replica in (a, b, c):
        stub = send_service_pb2_grpc.SendServiceStub(channels(replica))
        before = await stub.GetMessagingWindow(request, timeout=10)
        assert before.state == spb.MESSAGING_WINDOW_STATE_UNKNOWN
    await deliver_like_meta(
        http,
        a.webhook_url,
        postback_item("win-1", account=ACCOUNT, sender=person, timestamp=tapped),
    )
    # The webhook answered 200 after the record was stored: the others read it at once.
    for replica in (b, c, a):
        stub = send_service_pb2_grpc.SendServiceStub(channels(replica))
        window = await stub.GetMessagingWindow(request, timeout=10)
        assert window.state == spb.MESSAGING_WINDOW_STATE_OPEN
        assert window.last_message_time.ToMilliseconds() == tapped
        assert window.close_time.ToMilliseconds() == tapped + 24 * 3600 * 1000
