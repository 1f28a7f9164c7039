"""The WindowLedger contract (storage/windows.py), run on every engine: the latest time
wins, a record older than RECORD_TTL_SECONDS reads as never seen, and pruning keeps the
rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from igbutton_server.storage.backends import Storage, open_storage
from igbutton_server.storage.nats.windows import NatsWindowLedger
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


async def test_concurrent_notes_of_one_person_keep_the_latest_and_write_little(
    storage: Storage, engine: Engine
) -> None:
    # A burst of deliveries from one person: every note returns once its time (or a later
    # one) is recorded, and on NATS they share compare-and-sets instead of one each.
    windows = storage.windows
    now = int(time.time() * 1000)
    writes = _kv_writes(storage) if engine.name == "nats" else None
    before = None if writes is None else await writes()
    await asyncio.gather(*(windows.note({("a", "burst"): now - 100 + n}) for n in range(50)))
    assert await windows.last_message_ms("a", "burst") == now - 51
    await windows.note({("a", "burst"): now - 60})  # older than what is recorded: ignored
    assert await windows.last_message_ms("a", "burst") == now - 51
    if writes is not None and before is not None:
        assert await writes() - before <= 3  # one per note (50) or more before


def _kv_writes(storage: Storage) -> Callable[[], Awaitable[int]]:
    ledger = storage.windows
    assert isinstance(ledger, NatsWindowLedger)

    async def writes() -> int:
        info = await ledger._conn.js.stream_info(f"KV_{ledger._name}")
        return int(info.state.last_seq)

    return writes


async def test_a_cancelled_note_does_not_lose_the_one_waiting_on_it(storage: Storage) -> None:
    windows = storage.windows
    now = int(time.time() * 1000)
    first = asyncio.create_task(windows.note({("a", "gone"): now - 10}))
    await asyncio.sleep(0)  # under way: its read of the record is out
    second = asyncio.create_task(windows.note({("a", "gone"): now}))
    await asyncio.sleep(0)  # on NATS it waits for the first's compare-and-set
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    async with asyncio.timeout(10):
        await second
    assert await windows.last_message_ms("a", "gone") == now
