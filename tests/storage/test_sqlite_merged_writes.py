"""Writes of one kind in one batch of the SQLite writer run as one statement: idempotency
claims and their outcomes, appends, window notes; a batch of nothing else runs it without a
transaction. Each test queues its writes while the writer is busy, so they make one batch,
and reads the SQL the writer ran."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from igbutton_server.send.outcome import SendResult
from igbutton_server.storage.postbacks import Filter, Start, StorageUnavailable
from igbutton_server.storage.sqlite import _threads, idempotency, windows
from igbutton_server.storage.sqlite.file import SqliteFile
from igbutton_server.storage.sqlite.idempotency import SqliteIdempotencyStore
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore, create_schema
from igbutton_server.storage.sqlite.windows import SqliteWindowLedger
from tests.postbacks.test_store_contract import new, take

WRITES = 40


def traced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the writer's connection runs, in order (its trace callback)."""
    statements: list[str] = []
    connect = _threads.connect

    def connect_traced(path: Path, *, readonly: bool) -> sqlite3.Connection:
        conn = connect(path, readonly=readonly)
        if not readonly:
            conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(_threads, "connect", connect_traced)
    return statements


async def one_batch(file: SqliteFile, calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls``, their writes queued while the writer runs a job that waits."""
    started, release = threading.Event(), threading.Event()

    def hold(_db: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    busy = file.writer.submit(hold)
    assert await asyncio.to_thread(started.wait, 10), "the writer never ran the job"
    tasks = [asyncio.ensure_future(call()) for call in calls]
    await asyncio.sleep(0)  # one turn of the loop: every task has queued its write
    release.set()
    await busy
    async with asyncio.timeout(10):
        return await asyncio.gather(*tasks)


def count(statements: list[str], prefix: str) -> int:
    return sum(1 for s in statements if s.startswith(prefix))


def after_hold(statements: list[str]) -> list[str]:
    """The statements of the batch after :func:`one_batch`'s holding job (its own
    transaction ends with the first COMMIT)."""
    return statements[statements.index("COMMIT") + 1 :]


def on_disk(path: Path) -> dict[str, tuple[str, str | None]]:
    """Every record of the file, read by a connection of its own: request_id to
    (fingerprint, outcome)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT request_id, fingerprint, outcome FROM idempotency").fetchall()
    db.close()
    return {key: (fp, outcome) for key, fp, outcome in rows}


def claim(store: SqliteIdempotencyStore, key: str) -> Callable[[], Awaitable[Any]]:
    return functools.partial(store.claim, key, "fp", lease_seconds=30, ttl_seconds=60)


S = TypeVar("S")


@dataclass
class OnFile(Generic[S]):
    """A store on a file of its own, and the SQL its writer runs."""

    file: SqliteFile
    store: S
    statements: list[str]


Idempotency = OnFile[SqliteIdempotencyStore]
Log = OnFile[SqlitePostbackStore]


@pytest.fixture
async def idem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Idempotency]:
    statements = traced(monkeypatch)
    file = SqliteFile(tmp_path / "igbutton.db", (idempotency.create_schema,))
    store = SqliteIdempotencyStore(file)
    store.open()
    try:
        yield OnFile(file, store, statements)
    finally:
        await store.close()


def claims(idem: Idempotency) -> list[Callable[[], Awaitable[Any]]]:
    return [claim(idem.store, f"k{i}") for i in range(WRITES)]


async def test_a_batch_of_new_claims_is_one_statement_outside_a_transaction(
    idem: Idempotency, tmp_path: Path
) -> None:
    # The store's first claim removes expired records (then once a minute), in a transaction.
    assert await idem.store.claim("first", "fp", lease_seconds=30, ttl_seconds=60) is None
    idem.statements.clear()
    commits = idem.file.commits
    results = await one_batch(idem.file, claims(idem))
    assert results == [None] * WRITES  # every one claimed
    # No BEGIN, no COMMIT: SQLite commits the one INSERT by itself, durably.
    batch = after_hold(idem.statements)
    assert len(batch) == 1
    assert batch[0].startswith("INSERT INTO idempotency")
    assert idem.file.commits - commits == 2  # the holding job's and the claims'
    claimed = {f"k{i}": ("fp", None) for i in range(WRITES)}
    assert on_disk(tmp_path / "igbutton.db") == {"first": ("fp", None), **claimed}
    for i in range(WRITES):
        record = await idem.store.get(f"k{i}")
        assert record is not None
        assert (record.fingerprint, record.outcome, record.own) == ("fp", None, True)


async def test_a_taken_request_id_in_the_batch_sends_every_claim_its_own_way(
    idem: Idempotency,
) -> None:
    assert await idem.store.claim("k0", "fp", lease_seconds=30, ttl_seconds=60) is None
    await idem.store.complete("k0", "fp", SendResult("r", "m0"), ttl_seconds=60)
    idem.statements.clear()
    results = await one_batch(idem.file, claims(idem))
    # The one INSERT failed on k0 and was undone; then each claim by itself, in a
    # transaction of the batch.
    batch = after_hold(idem.statements)
    assert count(batch, "INSERT INTO idempotency") == 1 + WRITES
    assert (count(batch, "BEGIN"), count(batch, "COMMIT")) == (1, 1)
    assert results[0] is not None
    assert results[0].outcome == SendResult("r", "m0")  # the first send's, replayed
    assert results[1:] == [None] * (WRITES - 1)
    for i in range(1, WRITES):
        record = await idem.store.get(f"k{i}")
        assert record is not None
        assert record.outcome is None


async def test_a_batch_of_outcomes_is_one_upsert_and_each_is_kept(idem: Idempotency) -> None:
    await one_batch(idem.file, claims(idem))
    idem.statements.clear()

    def complete(i: int) -> Callable[[], Awaitable[None]]:
        result = SendResult("r", f"m{i}")
        return functools.partial(idem.store.complete, f"k{i}", "fp", result, 60)

    await one_batch(idem.file, [complete(i) for i in range(WRITES)])
    assert count(idem.statements, "INSERT INTO idempotency") == 1
    for i in range(WRITES):
        record = await idem.store.get(f"k{i}")
        assert record is not None
        assert record.outcome == SendResult("r", f"m{i}")


async def test_claims_and_outcomes_of_one_batch_are_one_statement(
    idem: Idempotency, tmp_path: Path
) -> None:
    half = WRITES // 2
    await one_batch(idem.file, [claim(idem.store, f"k{i}") for i in range(half)])
    idem.statements.clear()

    def complete(i: int) -> Callable[[], Awaitable[None]]:
        result = SendResult("r", f"m{i}")
        return functools.partial(idem.store.complete, f"k{i}", "fp", result, 60)

    # The send path under load: the outcomes of sends done, the claims of sends starting.
    writes = [complete(i) for i in range(half)]
    writes += [claim(idem.store, f"k{i}") for i in range(half, WRITES)]
    assert await one_batch(idem.file, writes) == [None] * WRITES
    batch = after_hold(idem.statements)
    assert len(batch) == 1
    assert batch[0].startswith("INSERT INTO idempotency")
    records = on_disk(tmp_path / "igbutton.db")
    assert {k: v for k, v in records.items() if v[1] is None} == {
        f"k{i}": ("fp", None) for i in range(half, WRITES)
    }
    for i in range(half):
        record = await idem.store.get(f"k{i}")
        assert record is not None
        assert record.outcome == SendResult("r", f"m{i}")


async def test_a_claim_and_the_outcome_of_its_request_id_in_one_batch_replay_it(
    idem: Idempotency,
) -> None:
    # A client retrying at once: its request_id's outcome and its new claim share a batch.
    # The claim meets a record, the one statement fails and each job runs by itself in turn.
    assert await idem.store.claim("k0", "fp", lease_seconds=30, ttl_seconds=60) is None
    result = SendResult("r", "m0")
    writes: list[Callable[[], Awaitable[Any]]] = [
        functools.partial(idem.store.complete, "k0", "fp", result, 60),
        claim(idem.store, "k0"),
        claim(idem.store, "k1"),
    ]
    done, replayed, claimed = await one_batch(idem.file, writes)
    assert (done, claimed) == (None, None)
    assert replayed is not None
    assert replayed.outcome == result


async def test_notes_of_one_batch_are_one_upsert_and_the_latest_time_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    statements = traced(monkeypatch)
    file = SqliteFile(tmp_path / "igbutton.db", (windows.create_schema,))
    ledger = SqliteWindowLedger(file)
    file.start_blocking()
    try:
        now = int(time.time() * 1000)
        statements.clear()
        # The same person in several notes of the batch, the latest neither first nor last.
        times = [now - 5000, now - 1000, now - 9000]
        notes = [functools.partial(ledger.note, {("a", "p"): ms}) for ms in times]
        notes += [functools.partial(ledger.note, {("a", f"q{i}"): now}) for i in range(WRITES)]
        await one_batch(file, notes)
        assert count(statements, "INSERT INTO messaging_windows") == 1
        assert await ledger.last_message_ms("a", "p") == now - 1000
        for i in range(WRITES):
            assert await ledger.last_message_ms("a", f"q{i}") == now
    finally:
        await file.release()


async def test_a_batch_too_big_for_one_statement_runs_each_write_by_itself(
    idem: Idempotency, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "fits", lambda _conn, _values: False)
    idem.statements.clear()
    results = await one_batch(idem.file, claims(idem))
    assert results == [None] * WRITES
    assert count(idem.statements, "INSERT INTO idempotency") == WRITES


class _Broken:
    """A Merge with a bug."""

    atomic = False  # its batch runs in a transaction

    def run_all(self, conn: sqlite3.Connection, items: Sequence[Any]) -> list[Any] | None:  # noqa: ARG002
        conn.execute("INSERT INTO t VALUES ('merged')")
        raise ValueError("a bug")


async def test_a_bug_in_a_merge_fails_its_batch_and_writes_nothing(tmp_path: Path) -> None:
    def table(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")

    file = SqliteFile(tmp_path / "w.db", (table,))
    file.start_blocking()
    try:
        broken = _Broken()

        def write(key: str) -> Callable[[], Awaitable[Any]]:
            def work(db: sqlite3.Connection) -> None:
                db.execute("INSERT INTO t VALUES (?)", (key,))

            return functools.partial(file.writer.run, work, merge=(broken, key))

        calls = [write(f"k{i}") for i in range(3)]
        with pytest.raises(StorageUnavailable, match="the writer failed"):
            await one_batch(file, calls)
        # The writer goes on: the next batch commits.
        await file.writer.run(lambda db: db.execute("INSERT INTO t VALUES ('after')"))
    finally:
        await file.release()
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert [r[0] for r in db.execute("SELECT k FROM t")] == ["after"]
    db.close()


@pytest.fixture
async def log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Log]:
    statements = traced(monkeypatch)
    file = SqliteFile(tmp_path / "igbutton.db", (create_schema,))
    store = await SqlitePostbackStore.open(file)
    try:
        yield OnFile(file, store, statements)
    finally:
        await store.close()


async def test_a_batch_of_new_appends_is_one_insert_in_sequence_order(
    log: Log, tmp_path: Path
) -> None:
    statements, file, store = log.statements, log.file, log.store
    cursor = await store.subscribe(Filter(), Start.earliest())
    statements.clear()
    # Deliveries of one and of three postbacks, side by side.
    sizes = [1, 3] * (WRITES // 2)
    batches, i = [], 0
    for size in sizes:
        batches.append([new(i + k) for k in range(size)])
        i += size
    appends = [functools.partial(store.append, batch) for batch in batches]
    results = await one_batch(file, appends)
    assert count(statements, "INSERT INTO postbacks") == 1
    assert [(r.stored, r.duplicates) for r in results] == [(n, 0) for n in sizes]
    seen = await take(cursor, i)
    assert [p.mid for p in seen] == [f"m{k}" for k in range(i)]
    assert [p.sequence for p in seen] == list(range(1, i + 1))
    await cursor.close()
    # The sequences served from memory are the file's.
    with sqlite3.connect(tmp_path / "igbutton.db") as db:
        rows = db.execute("SELECT seq, mid FROM postbacks ORDER BY seq").fetchall()
    db.close()
    assert rows == [(p.sequence, p.mid) for p in seen]


async def test_appends_repeating_a_postback_are_told_apart_one_by_one(log: Log) -> None:
    file, store = log.file, log.store
    await store.append([new(0)])
    # m0 is in the log; m1 comes in two deliveries of the same batch; m2 is new.
    appends = [
        functools.partial(store.append, batch)
        for batch in ([new(0), new(2)], [new(1)], [new(1)], [new(3)])
    ]
    results = await one_batch(file, appends)
    assert [(r.stored, r.duplicates) for r in results] == [(1, 1), (1, 0), (0, 1), (1, 0)]
    cursor = await store.subscribe(Filter(), Start.earliest())
    assert sorted(p.mid for p in await take(cursor, 4)) == ["m0", "m1", "m2", "m3"]
    await cursor.close()
    # A delivery of several with one repeat, alone: all but the repeat are stored.
    result = await store.append([new(3), new(4), new(5)])
    assert (result.stored, result.duplicates) == (2, 1)
