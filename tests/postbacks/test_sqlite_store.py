"""What only the SQLite engine promises: group commit, paged cursors, WAL, a shared file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from igbutton_server.storage.groups import DeadLetterReason
from igbutton_server.storage.postbacks import Filter, GroupOptions, NewPostback, Start
from igbutton_server.storage.sqlite._postback_sql import PAGE_SIZE
from igbutton_server.storage.sqlite._threads import SqliteWriter
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore
from igbutton_server.storage.together import writes_together
from tests.postbacks.conftest import WAIT
from tests.postbacks.test_store_contract import new, next_of, options


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlitePostbackStore]:
    opened = await SqlitePostbackStore.open(tmp_path / "sub" / "postbacks.db")
    yield opened
    await opened.close()


async def test_concurrent_appends_share_transactions(store: SqlitePostbackStore) -> None:
    before = store.commits
    results = await asyncio.gather(*(store.append([new(i)]) for i in range(50)))
    assert sum(r.stored for r in results) == 50
    # One fsync per transaction: 50 deliveries at once must not cost 50 of them.
    assert store.commits - before < 10


async def test_a_slow_subscriber_holds_at_most_a_page(store: SqlitePostbackStore) -> None:
    total = 3 * PAGE_SIZE + 5
    for start in range(0, total, 500):
        await store.append([new(i) for i in range(start, min(start + 500, total))])
    sub = await store.subscribe(Filter(), Start.earliest())
    seen = [await next_of(sub)]
    assert len(sub._buffer) <= PAGE_SIZE
    seen += [await next_of(sub) for _ in range(total - 1)]
    assert [p.mid for p in seen] == [f"m{i}" for i in range(total)]


async def test_database_is_in_wal_mode_with_our_own_tables(
    store: SqlitePostbackStore, tmp_path: Path
) -> None:
    path = tmp_path / "sub" / "postbacks.db"
    with sqlite3.connect(path) as other:  # the send path's own connection to the same file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.execute("CREATE TABLE IF NOT EXISTS idempotency (request_id TEXT PRIMARY KEY)")
        other.execute("INSERT INTO idempotency VALUES ('r1')")
    other.close()
    assert (await store.append([new(1)])).stored == 1


async def test_a_failing_job_does_not_sink_its_batch(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "w.db", lambda c: c.execute("CREATE TABLE t (x)"))
    await writer.start()
    try:

        def bad(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (1)")
            raise ValueError("boom")

        good = asyncio.ensure_future(writer.run(lambda c: c.execute("INSERT INTO t VALUES (2)")))
        with pytest.raises(ValueError, match="boom"):
            await writer.run(bad)
        await good
        rows = await writer.run(lambda c: c.execute("SELECT x FROM t").fetchall())
        assert rows == [(2,)]
    finally:
        await writer.close()


async def test_writes_together_commit_as_one_and_a_missing_one_is_not_waited_for(
    tmp_path: Path,
) -> None:
    writer = SqliteWriter(tmp_path / "w.db", lambda c: c.execute("CREATE TABLE t (x)"))
    await writer.start()
    try:

        async def insert(x: int, late: bool = False) -> None:
            if late:  # the loop held up between the writes: the writer wakes for the first
                time.sleep(0.002)  # noqa: ASYNC251 - holding up the loop is the point
            await writer.run(lambda c: c.execute("INSERT INTO t VALUES (?)", (x,)))

        before = writer.commits
        with writes_together(3):
            await asyncio.gather(insert(1), insert(2, late=True), insert(3, late=True))
        assert writer.commits - before == 1
        # Said to come together, but the second never does (its caller failed first, say):
        # the first is committed all the same, within a bound, never left waiting.
        before = writer.commits
        with writes_together(2):
            await asyncio.wait_for(insert(4), WAIT)
        assert writer.commits - before == 1
        rows = await writer.run(lambda c: c.execute("SELECT x FROM t ORDER BY x").fetchall())
        assert rows == [(1,), (2,), (3,), (4,)]
    finally:
        await writer.close()


async def test_a_new_postback_is_durable_before_append_returns(tmp_path: Path) -> None:
    path = tmp_path / "postbacks.db"
    store = await SqlitePostbackStore.open(path)
    try:
        await store.append([NewPostback("a", "s", "m1", "t", "p", 0, "{}")])
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT mid FROM postbacks").fetchall() == [("m1",)]
        other.close()
    finally:
        await store.close()


async def test_a_live_subscriber_is_served_from_memory(
    store: SqlitePostbackStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = await store.subscribe(Filter(), Start.latest())
    reads = 0
    real_run = store._readers.run

    async def counting_run(work: object) -> object:
        nonlocal reads
        reads += 1
        return await real_run(work)  # type: ignore[arg-type]

    monkeypatch.setattr(store._readers, "run", counting_run)
    await store.append([new(i) for i in range(3)])
    got = [await next_of(sub) for _ in range(3)]
    assert [p.mid for p in got] == [new(i).mid for i in range(3)]
    assert reads == 0


async def test_a_cursor_behind_the_memory_tail_reads_the_log_without_a_gap(
    store: SqlitePostbackStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("igbutton_server.storage.sqlite.postbacks._TAIL_SIZE", 4)
    for i in range(10):
        await store.append([new(i)])
    sub = await store.subscribe(Filter(), Start.earliest())
    got = [await next_of(sub) for _ in range(10)]
    assert [p.mid for p in got] == [new(i).mid for i in range(10)]
    assert [p.sequence for p in got] == sorted(p.sequence for p in got)
    await store.append([new(10)])
    assert (await next_of(sub)).mid == new(10).mid


async def test_a_claim_behind_a_busy_writer_still_gets_the_whole_ack_deadline(
    store: SqlitePostbackStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member looks at the clock, then its claim waits for the writer (a loaded machine):
    # its deliveries are due an ack deadline after the claim ran, not after the member
    # looked, or one comes out with its time spent and goes at once to another member.
    clock = [1_800_000_000_000]
    monkeypatch.setattr("igbutton_server.storage.sqlite.postbacks._now_ms", lambda: clock[0])
    first = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=1))
    second = await store.join_group("g", Filter(), Start.latest(), options(ack_deadline=1))
    await store.append([new(1)])
    busy, release = threading.Event(), threading.Event()

    def occupy(_: sqlite3.Connection) -> None:
        busy.set()
        release.wait(WAIT)

    blocker = asyncio.ensure_future(store._writer.run(occupy))
    try:
        assert await asyncio.to_thread(busy.wait, WAIT)
        claiming = asyncio.ensure_future(anext(first))
        deadline = time.monotonic() + WAIT
        while store._writer._queue.qsize() == 0:  # until the claim is queued behind it
            assert time.monotonic() < deadline, "the member did not claim"
            await asyncio.sleep(0)
        clock[0] += 1500  # the writer was busy for longer than the ack deadline
    finally:
        release.set()
    await blocker
    got = await asyncio.wait_for(claiming, WAIT)
    assert (got.postback.mid, got.attempt) == ("m1", 1)
    await store.append([new(2)])
    other = await next_of(second)
    assert (other.postback.mid, other.attempt) == ("m2", 1)  # not m1's second attempt


async def test_pruned_postbacks_are_not_served_from_memory(store: SqlitePostbackStore) -> None:
    await store.append([new(i) for i in range(5)])
    assert await store.prune(older_than_ms=2**62) == 5
    await store.append([new(5)])
    sub = await store.subscribe(Filter(), Start.earliest())
    assert (await next_of(sub)).mid == new(5).mid


_SCHEMA_BEFORE_STANDBY = """
CREATE TABLE postbacks (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT    NOT NULL,
    sender_id    TEXT    NOT NULL,
    mid          TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    tap_time_ms  INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    raw_json     TEXT    NOT NULL,
    UNIQUE (account_id, mid)
);
INSERT INTO postbacks (account_id, sender_id, mid, title, payload, tap_time_ms, received_ms,
    raw_json) VALUES ('a', 's', 'old', 't', 'p', 1, 2, '{}');
"""


async def test_a_file_from_before_the_standby_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(_SCHEMA_BEFORE_STANDBY)
    old.close()
    store = await SqlitePostbackStore.open(path)
    try:
        await store.append(
            [
                NewPostback("a", "s", "new", "t", "p", 0, "{}", standby=True),
                NewPostback("a", "s", "test", "t", "p", 0, "{}", test=True),
            ]
        )
        cursor = await store.subscribe(Filter(), Start.earliest())
        got = [await next_of(cursor) for _ in range(3)]
        await cursor.close()
    finally:
        await store.close()
    # The standby and test columns were added; the old row is neither.
    assert [(p.mid, p.standby, p.test) for p in got] == [
        ("old", False, False),
        ("new", True, False),
        ("test", False, True),
    ]


_GROUP_TABLES_BEFORE_GROUP_SERVICE = """
CREATE TABLE postback_groups (
    name          TEXT    PRIMARY KEY,
    filter_json   TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    active_ms     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE postback_dead_letters (
    group_name TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    dead_ms    INTEGER NOT NULL,
    PRIMARY KEY (group_name, seq)
) WITHOUT ROWID;
INSERT INTO postback_groups (name, filter_json, position, max_attempts, dead_lettered,
    created_ms, active_ms)
    VALUES ('g', '{"account_ids": [], "payload_prefix": ""}', 1, 3, 1, 5, 5);
INSERT INTO postback_dead_letters (group_name, seq, attempts, dead_ms) VALUES ('g', 1, 3, 7);
"""


async def test_group_tables_from_before_group_operations_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(_SCHEMA_BEFORE_STANDBY + _GROUP_TABLES_BEFORE_GROUP_SERVICE)
    old.close()
    store = await SqlitePostbackStore.open(path)
    try:
        details = await store.get_group("g")
        # Unknown until a member joins: the deadline (0) and the start (latest).
        assert (details.ack_deadline, details.start, details.max_attempts) == (
            0.0,
            Start.latest(),
            3,
        )
        page = await store.list_dead_letters("g")
        assert [(d.postback.mid, d.reason, d.attempts, d.dead_ms) for d in page.dead_letters] == [
            ("old", DeadLetterReason.EXPIRED, 3, 7)
        ]
        member = await store.join_group(
            "g",
            Filter(),
            Start.earliest(),
            GroupOptions(ack_deadline=12, max_unacked=1, max_attempts=3),
        )
        assert (await store.get_group("g")).ack_deadline == 12.0
        assert await store.redrive_dead_letters("g", None) == 1
        redriven = await next_of(member)
        assert (redriven.postback.mid, redriven.attempt) == ("old", 1)
        await member.close()
    finally:
        await store.close()
