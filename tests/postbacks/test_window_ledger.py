"""The WindowLedger contract (storage/windows.py), run on every engine: the latest time
wins, a record older than RECORD_TTL_SECONDS reads as never seen, and pruning keeps the
rest."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from igbutton_server.storage.backends import Storage, open_storage
from igbutton_server.storage.windows import RECORD_TTL_SECONDS
from tests.conftest import Engine, SettingsFactory


@pytest.fixture
async def storage(engine_settings: SettingsFactory) -> AsyncIterator[Storage]:
    opened = await open_storage(engine_settings())
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_latest_time_wins_and_old_records_are_forgotten(
    storage: Storage, engine: Engine
) -> None:
    windows = storage.windows
    now = int(time.time() * 1000)
    forgotten = now - (RECORD_TTL_SECONDS + 3600) * 1000
    # Odd ids (not plain tokens) are stored as well.
    odd = ("acct.with.dots", "person/with*stars")
    await windows.note({("a", "p1"): now - 5000, ("a", "old"): forgotten, odd: now})
    await windows.note({("a", "p1"): now - 9000})  # older: ignored
    await windows.note({("a", "p1"): now - 1000, ("b", "p1"): now - 2000})
    assert await windows.last_message_ms("a", "p1") == now - 1000
    assert await windows.last_message_ms("b", "p1") == now - 2000
    assert await windows.last_message_ms(*odd) == now
    assert await windows.last_message_ms("a", "old") is None
    assert await windows.last_message_ms("a", "never") is None
    # SQLite deletes the old row; JetStream's max age does it on its own.
    assert await windows.prune() == (1 if engine.name == "sqlite" else 0)
    assert await windows.last_message_ms("a", "p1") == now - 1000
    assert await windows.last_message_ms("a", "old") is None
