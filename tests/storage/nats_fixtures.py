"""Helpers for tests that need igbutton's JetStream layout on the session nats-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.js.errors import NotFoundError

from igbutton_server.config import Settings
from igbutton_server.storage.nats._connection import NatsLayout
from igbutton_server.storage.nats.postbacks import NatsPostbackStore
from tests.conftest import SettingsFactory, unique_nats_storage


def nats_test_settings(
    make_settings: SettingsFactory, servers: list[str], **overrides: Any
) -> Settings:
    """Settings for the NATS backend with fresh names (see unique_nats_storage)."""
    return make_settings(storage=unique_nats_storage(servers), **overrides)


@contextlib.asynccontextmanager
async def removing_layout(settings: Settings) -> AsyncIterator[NatsLayout]:
    """Yield the settings' layout; delete its streams afterwards, so the session
    server does not accumulate test streams."""
    layout = NatsLayout.from_settings(settings)
    try:
        yield layout
    finally:
        client = await nats.connect(settings.storage.nats.servers)
        try:
            js = client.jetstream()
            for name in (
                layout.stream,
                layout.dead_letter_stream,
                f"KV_{layout.delivery_bucket}",
                f"KV_{layout.idempotency_bucket}",
            ):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def store_opener(
    settings: Settings,
) -> AsyncIterator[Callable[[], Awaitable[NatsPostbackStore]]]:
    """Yield a function that opens a store on the settings' streams (each one stands for a
    replica, or a restart); close every store and remove the streams afterwards."""
    opened: list[NatsPostbackStore] = []

    async def open_one() -> NatsPostbackStore:
        store = await NatsPostbackStore.open(settings)
        opened.append(store)
        return store

    async with removing_layout(settings):
        yield open_one
        for store in opened:
            await store.close()
