"""The SQL of the SQLite postback engine: schema and one function per transaction step.

Every function takes a connection and runs inside a transaction its caller opened (the
writer's batch, or a reader's snapshot); none of them commits. Kept apart from the asyncio
side (``postbacks``) so the data rules can be read in one place; the consumer
groups' steps are in ``_group_sql``.

Tables (prefixed ``postback`` because the send path keeps its own tables in the same file):

- ``postbacks``: the log. ``seq`` is AUTOINCREMENT so a sequence is never reused, even after
  pruning the newest rows; one writer means sequences are also committed in order, so a
  reader that has seen ``seq`` N has seen every committed row below it.
- ``postback_groups``: one row per consumer group, keyed by its ``group_key``: its filter,
  ``position`` (the last log sequence it has handed out or skipped) and ``active_ms`` (the
  last join, ack or member leaving, for the idle-group sweep).
- ``postback_group_pending``: deliveries awaiting an ack, with attempt and deadline
  (wall-clock ms, so they survive a restart). A nack sets the deadline to 0.
- ``postback_dead_letters``: postbacks a group gave up on after its maximum attempts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from igbutton_server.storage.postbacks import (
    AppendResult,
    Filter,
    NewPostback,
    Start,
    StartKind,
    StoredPostback,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS postbacks (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT    NOT NULL,
    sender_id    TEXT    NOT NULL,
    mid          TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    tap_time_ms  INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    raw_json     TEXT    NOT NULL,
    standby      INTEGER NOT NULL DEFAULT 0,
    test         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, mid)
);
CREATE INDEX IF NOT EXISTS postbacks_received_ms ON postbacks (received_ms);
CREATE TABLE IF NOT EXISTS postback_groups (
    name          TEXT    PRIMARY KEY,
    filter_json   TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    active_ms     INTEGER NOT NULL DEFAULT 0,
    ack_deadline_ms INTEGER NOT NULL DEFAULT 0,
    start_json    TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS postback_group_pending (
    group_name  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ack_id      TEXT    NOT NULL UNIQUE,
    attempt     INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    member      TEXT,
    PRIMARY KEY (group_name, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postback_group_pending_deadline
    ON postback_group_pending (group_name, deadline_ms);
CREATE TABLE IF NOT EXISTS postback_dead_letters (
    group_name TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    dead_ms    INTEGER NOT NULL,
    reason     TEXT    NOT NULL DEFAULT 'expired',
    PRIMARY KEY (group_name, seq)
) WITHOUT ROWID;
"""

COLUMNS = (
    "seq, account_id, sender_id, mid, title, payload, tap_time_ms, received_ms, raw_json, standby,"
    " test"
)
PAGE_SIZE = 256
"""Rows read per query: what a cursor holds in memory at most."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if they do not exist (idempotent), and add what a file made by
    an earlier version lacks."""
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(postbacks)")}
    if "standby" not in columns:  # postbacks stored before were all from `messaging`
        conn.execute("ALTER TABLE postbacks ADD COLUMN standby INTEGER NOT NULL DEFAULT 0")
    if "test" not in columns:  # and none of them was a test delivery
        conn.execute("ALTER TABLE postbacks ADD COLUMN test INTEGER NOT NULL DEFAULT 0")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(postback_groups)")}
    if "active_ms" not in columns:
        conn.execute("ALTER TABLE postback_groups ADD COLUMN active_ms INTEGER NOT NULL DEFAULT 0")
    # Groups from before GroupService: their deadline and start are shown as unknown (0, '')
    # until a member joins again (which sets the deadline).
    for column, kind in (
        ("ack_deadline_ms", "INTEGER NOT NULL DEFAULT 0"),
        ("start_json", "TEXT NOT NULL DEFAULT ''"),
    ):
        if column not in columns:
            conn.execute(f"ALTER TABLE postback_groups ADD COLUMN {column} {kind}")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(postback_dead_letters)")}
    if "reason" not in columns:  # dead letters from before were not told apart
        conn.execute(
            "ALTER TABLE postback_dead_letters ADD COLUMN reason TEXT NOT NULL DEFAULT 'expired'"
        )
    # Groups from before the idle sweep (0: every group made since sets it) count as
    # active now: a full idle retention passes before any of them may be removed.
    conn.execute(
        "UPDATE postback_groups SET active_ms = ? WHERE active_ms = 0", (int(time.time() * 1000),)
    )


def postback_row(row: tuple[object, ...]) -> StoredPostback:
    seq, account, sender, mid, title, payload, tap_ms, received_ms, raw, standby, test = row
    assert isinstance(seq, int)
    assert isinstance(tap_ms, int)
    assert isinstance(received_ms, int)
    return StoredPostback(
        sequence=seq,
        account_id=str(account),
        sender_id=str(sender),
        mid=str(mid),
        title=str(title),
        payload=str(payload),
        tap_time_ms=tap_ms,
        received_ms=received_ms,
        raw_json=str(raw),
        standby=bool(standby),
        test=bool(test),
    )


def filter_to_json(flt: Filter) -> str:
    """A canonical JSON form of a filter, to store with a group."""
    return json.dumps(
        {"account_ids": sorted(flt.account_ids), "payload_prefix": flt.payload_prefix},
        sort_keys=True,
    )


def filter_from_json(text: str) -> Filter:
    """The filter stored with a group."""
    data = json.loads(text)
    return Filter(frozenset(data["account_ids"]), data["payload_prefix"])


# --- the log ---


_APPEND_COLUMNS = (
    "account_id, sender_id, mid, title, payload, tap_time_ms, received_ms, raw_json, standby, test"
)
_APPEND_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
APPEND_VALUES = 10
"""Values bound per postback appended."""


def _values(p: NewPostback, now_ms: int) -> tuple[object, ...]:
    return (
        p.account_id,
        p.sender_id,
        p.mid,
        p.title,
        p.payload,
        p.tap_time_ms,
        now_ms,
        p.raw_json,
        int(p.standby),
        int(p.test),
    )


def _stored(p: NewPostback, sequence: int, now_ms: int) -> StoredPostback:
    return StoredPostback(
        sequence=sequence,
        account_id=p.account_id,
        sender_id=p.sender_id,
        mid=p.mid,
        title=p.title,
        payload=p.payload,
        tap_time_ms=p.tap_time_ms,
        received_ms=now_ms,
        raw_json=p.raw_json,
        standby=p.standby,
        test=p.test,
    )


Appended = tuple[AppendResult, list[StoredPostback]]
"""What one append stored, and the rows it stored in sequence order (for live cursors)."""


def append(conn: sqlite3.Connection, postbacks: Sequence[NewPostback], now_ms: int) -> Appended:
    """Insert postbacks not yet in the log, keyed on (account_id, mid); also return the rows
    stored, in sequence order, so live cursors can be served without reading them back."""
    stored: list[StoredPostback] = []
    for p in postbacks:
        row = conn.execute(
            f"INSERT INTO postbacks ({_APPEND_COLUMNS}) VALUES {_APPEND_ROW}"  # noqa: S608 - constant
            " ON CONFLICT (account_id, mid) DO NOTHING RETURNING seq",
            _values(p, now_ms),
        ).fetchone()
        if row is not None:
            stored.append(_stored(p, int(row[0]), now_ms))
    return AppendResult(stored=len(stored), duplicates=len(postbacks) - len(stored)), stored


def append_new(
    conn: sqlite3.Connection, appends: Sequence[Sequence[NewPostback]], now_ms: int
) -> list[Appended]:
    """:func:`append` of several appends in one statement, for postbacks none of which is in
    the log yet (the usual case): raises sqlite3.IntegrityError, the statement undone, if
    one is (a delivery Meta sent again), and :func:`append` then tells them apart.

    One INSERT of n rows takes n consecutive sequences in order (AUTOINCREMENT: one above the
    highest ever used, per row, under the one writer's lock), so the rows' sequences follow
    from the last one without reading them back."""
    postbacks = [p for one in appends for p in one]
    values = [value for p in postbacks for value in _values(p, now_ms)]
    last = conn.execute(
        f"INSERT INTO postbacks ({_APPEND_COLUMNS}) VALUES "  # noqa: S608 - placeholders only
        + ", ".join([_APPEND_ROW] * len(postbacks)),
        values,
    ).lastrowid
    if last is None:
        raise RuntimeError("SQLite gave no rowid for an INSERT")
    sequence = last - len(postbacks)
    results: list[Appended] = []
    for one in appends:
        stored = []
        for p in one:
            sequence += 1
            stored.append(_stored(p, sequence, now_ms))
        results.append((AppendResult(stored=len(stored), duplicates=0), stored))
    return results


def last_sequence(conn: sqlite3.Connection) -> int:
    """The highest sequence ever assigned (0 for an empty log), pruned rows included."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'postbacks'").fetchone()
    return int(row[0]) if row else 0


def read_page(conn: sqlite3.Connection, after: int, limit: int = PAGE_SIZE) -> list[StoredPostback]:
    """Up to ``limit`` postbacks with a sequence above ``after``, in order."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM postbacks WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
        (after, limit),
    ).fetchall()
    return [postback_row(r) for r in rows]


def start_cursor(conn: sqlite3.Connection, start: Start) -> int:
    """The sequence a cursor starting at ``start`` has already 'seen'."""
    if start.kind is StartKind.EARLIEST:
        return 0
    if start.kind is StartKind.AFTER_SEQUENCE:
        return start.after_sequence
    if start.kind is StartKind.SINCE_TIME:
        row = conn.execute(
            "SELECT MIN(seq) FROM postbacks WHERE received_ms >= ?", (start.since_ms,)
        ).fetchone()
        if row[0] is not None:
            return int(row[0]) - 1
    return last_sequence(conn)


def prune(conn: sqlite3.Connection, older_than_ms: int, limit: int) -> int:
    """Delete up to ``limit`` postbacks received before ``older_than_ms``, with their
    group deliveries and dead letters."""
    deleted = conn.execute(
        "DELETE FROM postbacks WHERE seq IN"
        " (SELECT seq FROM postbacks WHERE received_ms < ? ORDER BY seq LIMIT ?)",
        (older_than_ms, limit),
    ).rowcount
    if deleted:
        for table in ("postback_group_pending", "postback_dead_letters"):
            conn.execute(
                f"DELETE FROM {table} WHERE NOT EXISTS"  # noqa: S608 - fixed table names
                f" (SELECT 1 FROM postbacks p WHERE p.seq = {table}.seq)"
            )
    return deleted
