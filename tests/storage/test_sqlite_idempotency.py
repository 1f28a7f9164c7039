"""The SQLite idempotency store on the file's shared writer: group commit, one writer thread
per file, and a claim that is durable once the claim call returns."""

from __future__ import annotations

import asyncio
import functools
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from igbutton_server.storage.backends import open_storage
from igbutton_server.storage.sqlite import _threads
from igbutton_server.storage.sqlite._threads import SqliteWriter
from igbutton_server.storage.sqlite.idempotency import SqliteIdempotencyStore
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore
from tests.conftest import SettingsFactory
from tests.postbacks.test_store_contract import new

CLAIMS = 50

CHILD = """
import asyncio, sys
from igbutton_server.config import Settings
from igbutton_server.storage.backends import open_storage
from igbutton_server.storage.sqlite import _threads
from igbutton_server.storage.sqlite._threads import SqliteWriter

async def main() -> None:
    settings = Settings.load(storage={"sqlite_path": sys.argv[1]}, sandbox={"enabled": True})
    storage = await open_storage(settings)
    # The store's first claim also removes expired records, in a transaction; the next one
    # is a statement alone, which SQLite commits by itself: both must be on disk.
    for key in ("first", "rid"):
        claimed = await storage.idempotency.claim(key, "fp", lease_seconds=300, ttl_seconds=600)
        assert claimed is None
    print("claimed", flush=True)
    await asyncio.Event().wait()  # killed here, before any close could flush anything

asyncio.run(main())
"""


def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "sqlite-writer")


async def test_concurrent_claims_share_commits(tmp_path: Path) -> None:
    store = SqliteIdempotencyStore(tmp_path / "idem.db")
    store.open()
    try:
        before = store.commits
        results = await asyncio.gather(
            *(store.claim(f"k{i}", "fp", lease_seconds=30, ttl_seconds=60) for i in range(CLAIMS))
        )
        assert results == [None] * CLAIMS
        assert 0 < store.commits - before < CLAIMS
        for i in range(CLAIMS):
            record = await store.get(f"k{i}")
            assert record is not None
            assert record.outcome is None
    finally:
        await store.close()


async def test_sqlite_storage_has_one_writer_for_claims_and_appends(
    make_settings: SettingsFactory,
) -> None:
    before = writer_threads()
    storage = await open_storage(make_settings())
    try:
        postbacks, idempotency = storage.postbacks, storage.idempotency
        assert isinstance(postbacks, SqlitePostbackStore)
        assert isinstance(idempotency, SqliteIdempotencyStore)
        assert writer_threads() == before + 1
        commits = postbacks.commits
        await asyncio.gather(
            *(postbacks.append([new(i)]) for i in range(CLAIMS)),
            *(
                idempotency.claim(f"k{i}", "fp", lease_seconds=30, ttl_seconds=60)
                for i in range(CLAIMS)
            ),
        )
        # The two stores count the same writer's transactions, fewer than their jobs.
        assert idempotency.commits == postbacks.commits
        assert 0 < postbacks.commits - commits < 2 * CLAIMS
    finally:
        await storage.close()
    assert writer_threads() == before


async def test_a_claim_survives_a_kill_right_after_it_returned(tmp_path: Path) -> None:
    path = tmp_path / "igbutton.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line == b"claimed\n"
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), timeout=30) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    reopened = SqliteIdempotencyStore(path)
    reopened.open()
    try:
        records = [await reopened.get(key) for key in ("first", "rid")]
    finally:
        await reopened.close()
    for record in records:
        assert record is not None
        assert record.fingerprint == "fp"
        assert record.outcome is None  # still pending: a repeat must not send again


def _insert(key: str) -> Callable[[sqlite3.Connection], None]:
    def work(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t VALUES (?)", (key,))

    return work


def _table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")


async def test_a_lazy_write_shares_the_next_writes_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long window, so the test does not depend on how fast the second job follows.
    monkeypatch.setattr(_threads, "_LAZY_SECONDS", 30.0)
    writer = SqliteWriter(tmp_path / "w.db", _table)
    await writer.start()
    try:
        before = writer.commits
        lazy = asyncio.ensure_future(writer.run(_insert("outcome"), savepoint=False, lazy=True))
        await asyncio.sleep(0)  # queued (and maybe picked up) first
        await writer.run(_insert("claim"))
        await lazy
        assert writer.commits - before == 1
        assert writer.jobs == 2
    finally:
        await writer.close()


async def test_a_lazy_write_alone_is_committed_and_close_commits_what_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SqliteWriter(tmp_path / "w.db", _table)
    await writer.start()
    try:
        async with asyncio.timeout(10):  # the default window is 20 ms: no second job needed
            await writer.run(_insert("alone"), lazy=True)
        assert writer.commits == 1
        monkeypatch.setattr(_threads, "_LAZY_SECONDS", 30.0)
        waiting = asyncio.ensure_future(writer.run(_insert("at-close"), lazy=True))
        await asyncio.sleep(0)
    finally:
        async with asyncio.timeout(10):  # close does not wait out the window
            await writer.close()
    await waiting
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert sorted(r[0] for r in db.execute("SELECT k FROM t")) == ["alone", "at-close"]
    db.close()


class _SleepWatch:
    """The writer thread's ``time.sleep``, counted: the group-commit delay is one sleep."""

    def __init__(self) -> None:
        self.sleeping = threading.Event()
        self.sleeps = 0
        self._sleep = _threads.time.sleep

    def __call__(self, seconds: float) -> None:
        self.sleeps += 1
        self.sleeping.set()
        self._sleep(seconds)


async def _until(flag: threading.Event) -> None:
    assert await asyncio.to_thread(flag.wait, 10), "the writer never waited"


async def _held_writer(
    writer: SqliteWriter, jobs: list[Callable[[], asyncio.Future[None]]]
) -> None:
    """Run ``jobs`` as one batch: queued while the writer is busy with a job that waits."""
    release = threading.Event()
    busy = writer.submit(lambda _db: release.wait(10))
    queued = [job() for job in jobs]
    release.set()
    await busy
    await asyncio.gather(*queued)


async def test_claims_under_load_wait_a_moment_to_share_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = _SleepWatch()
    monkeypatch.setattr(_threads.time, "sleep", watch)
    monkeypatch.setattr(_threads, "_GROUP_DELAY_SECONDS", 0.5)
    writer = SqliteWriter(tmp_path / "w.db", _table)
    await writer.start()
    try:
        # Two claims in one batch: the writer has company, so the next claim's batch waits.
        claims = [functools.partial(writer.submit, _insert(k), patient=True) for k in "ab"]
        await _held_writer(writer, claims)
        assert watch.sleeps == 0  # the batch after a lone job did not wait
        before = writer.commits
        third = writer.submit(_insert("c"), patient=True)
        await _until(watch.sleeping)  # the writer waits for company: give it some
        fourth = writer.submit(_insert("d"), patient=True)
        await asyncio.gather(third, fourth)
        assert (writer.commits - before, watch.sleeps) == (1, 1)
    finally:
        await writer.close()


async def test_appends_and_a_lone_caller_never_wait_for_company(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = _SleepWatch()
    monkeypatch.setattr(_threads.time, "sleep", watch)
    monkeypatch.setattr(_threads, "_GROUP_DELAY_SECONDS", 30.0)  # a wait would show
    writer = SqliteWriter(tmp_path / "w.db", _table)
    await writer.start()
    try:
        async with asyncio.timeout(10):
            # Appends (not patient) after a batch with company: committed at once.
            appends = [functools.partial(writer.submit, _insert(k)) for k in "ab"]
            await _held_writer(writer, appends)
            await writer.run(_insert("c"))
            # One caller's claims, one at a time: each batch alone, none waits.
            for key in "def":
                await writer.run(_insert(key), patient=True)
        assert watch.sleeps == 0
    finally:
        await writer.close()
