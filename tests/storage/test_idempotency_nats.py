"""The IdempotencyStore behaviour (tests/send/test_idempotency.py) on a NATS KV bucket, plus
what only a shared store shows: replicas racing on one request_id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from igbutton_server.config import Settings
from igbutton_server.send.outcome import SendResult
from igbutton_server.storage.idempotency import IdempotencyStore
from igbutton_server.storage.nats.idempotency import NatsIdempotencyStore, bucket_key
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.send.test_idempotency import (  # the store-level contract
    test_store_claim_complete_get,
    test_store_expired_records_count_as_absent,
    test_store_keeps_errors,
    test_store_release_forgets_only_pending_claims,
)
from tests.storage.nats_fixtures import nats_test_settings, removing_layout

__all__ = [
    "test_store_claim_complete_get",
    "test_store_expired_records_count_as_absent",
    "test_store_keeps_errors",
    "test_store_release_forgets_only_pending_claims",
]


@pytest.fixture
async def nats_settings(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> AsyncIterator[Settings]:
    """Settings with a bucket of this test's own, removed afterwards."""
    settings = nats_test_settings(make_settings, [nats_server.url])
    async with removing_layout(settings):
        yield settings


@pytest.fixture
async def store(nats_settings: Settings) -> AsyncIterator[IdempotencyStore]:
    """The NATS store (overrides the contract module's SQLite fixture)."""
    opened = await NatsIdempotencyStore.open(nats_settings)
    try:
        yield opened
    finally:
        await opened.close()


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


async def test_an_expired_claim_can_be_taken_over(store: IdempotencyStore) -> None:
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=0) is None
    assert await store.claim("k", "fp2", lease_seconds=30, ttl_seconds=60) is None
    record = await store.get("k")
    assert record is not None
    assert record.fingerprint == "fp2"


async def test_any_request_id_is_a_valid_key(store: IdempotencyStore) -> None:
    for request_id in ("plain-ID_1", "with.dot", "sp ace", "ünïcode", "a/b", "=x"):
        assert await store.claim(request_id, "fp", lease_seconds=30, ttl_seconds=60) is None
    keys = {bucket_key(k) for k in ("with.dot", "=x", "x")}
    assert len(keys) == 3
