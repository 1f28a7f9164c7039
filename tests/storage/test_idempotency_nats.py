"""What only the NATS IdempotencyStore shows: replicas racing on one request_id, and
request_ids that are not valid KV keys. The contract every engine passes is in
tests/send/test_idempotency.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from igbutton_server.config import Settings
from igbutton_server.send.outcome import SendResult
from igbutton_server.storage.nats.idempotency import NatsIdempotencyStore, bucket_key
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.storage.nats_fixtures import nats_test_settings, removing_layout


@pytest.fixture
async def nats_settings(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> AsyncIterator[Settings]:
    """Settings with a bucket of this test's own, removed afterwards."""
    settings = nats_test_settings(make_settings, [nats_server.url])
    async with removing_layout(settings):
        yield settings


async def test_replicas_racing_on_one_request_id_have_one_winner(nats_settings: Settings) -> None:
    replicas = [await NatsIdempotencyStore.open(nats_settings) for _ in range(3)]
    try:
        for round_ in range(10):
            key = f"race-{round_}"
            results = await asyncio.gather(
                *(r.claim(key, "fp", lease_seconds=30, ttl_seconds=60) for r in replicas * 3)
            )
            assert sum(1 for r in results if r is None) == 1, results
            assert all(r is None or r.fingerprint == "fp" for r in results)
        await replicas[0].complete("race-0", "fp", SendResult("r", "m"), ttl_seconds=60)
        seen = await replicas[2].get("race-0")
        assert seen is not None
        assert seen.outcome == SendResult("r", "m")
    finally:
        for replica in replicas:
            await replica.close()


def test_distinct_request_ids_get_distinct_bucket_keys() -> None:
    keys = {bucket_key(k) for k in ("with.dot", "=x", "x")}
    assert len(keys) == 3
