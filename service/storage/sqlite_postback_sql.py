"""The SQL of the SQLite postback engine: schema and one function per transaction step.

Every function takes a connection and runs inside a transaction its caller opened (the
writer's batch, or a reader's snapshot); none of them commits. Kept apart from the asyncio
side (``sqlite_postbacks``) so the data rules can be read in one place.

Tables (prefixed ``postback`` because the send path keeps its own tables in the same file):

- ``postbacks``: the log. ``seq`` is AUTOINCREMENT so a sequence is never reused, even after
  pruning the newest rows; one writer means sequences are also committed in order, so a
  reader that has seen ``seq`` N has seen every committed row below it.
- ``postback_groups``: one row per consumer group: its filter and ``position`` (the last
  log sequence it has handed out or skipped).
- ``postback_group_pending``: deliveries awaiting an ack, with attempt and deadline
  (wall-clock ms, so they survive a restart). A nack sets the deadline to 0.
- ``postback_dead_letters``: postbacks a group gave up on after its maximum attempts.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from service.storage.postbacks import (
    AckResult,
    AppendResult,
    Delivery,
    Filter,
    GroupFilterMismatch,
    GroupInfo,
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
    UNIQUE (account_id, mid)
);
CREATE INDEX IF NOT EXISTS postbacks_received_ms ON postbacks (received_ms);
CREATE TABLE IF NOT EXISTS postback_groups (
    name          TEXT    PRIMARY KEY,
    filter_json   TEXT    NOT NULL,
    position      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL
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
    PRIMARY KEY (group_name, seq)
) WITHOUT ROWID;
"""

_COLUMNS = "seq, account_id, sender_id, mid, title, payload, tap_time_ms, received_ms, raw_json"
PAGE_SIZE = 256
"""Rows read per query: what a cursor holds in memory at most."""
_SCAN_LIMIT = 8 * PAGE_SIZE
"""Log rows one claim looks at before returning, so a filter matching little never holds
the write lock for long."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if they do not exist (idempotent)."""
    conn.executescript(SCHEMA)


def _postback(row: tuple[object, ...]) -> StoredPostback:
    seq, account, sender, mid, title, payload, tap_ms, received_ms, raw = row
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


def append(conn: sqlite3.Connection, postbacks: Sequence[NewPostback], now_ms: int) -> AppendResult:
    """Insert postbacks not yet in the log, keyed on (account_id, mid)."""
    stored = 0
    for p in postbacks:
        cursor = conn.execute(
            "INSERT INTO postbacks (account_id, sender_id, mid, title, payload, tap_time_ms,"
            " received_ms, raw_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account_id, mid) DO NOTHING RETURNING seq",
            (
                p.account_id,
                p.sender_id,
                p.mid,
                p.title,
                p.payload,
                p.tap_time_ms,
                now_ms,
                p.raw_json,
            ),
        )
        if cursor.fetchone() is not None:
            stored += 1
    return AppendResult(stored=stored, duplicates=len(postbacks) - stored)


def last_sequence(conn: sqlite3.Connection) -> int:
    """The highest sequence ever assigned (0 for an empty log), pruned rows included."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'postbacks'").fetchone()
    return int(row[0]) if row else 0


def read_page(conn: sqlite3.Connection, after: int, limit: int = PAGE_SIZE) -> list[StoredPostback]:
    """Up to ``limit`` postbacks with a sequence above ``after``, in order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM postbacks WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
        (after, limit),
    ).fetchall()
    return [_postback(r) for r in rows]


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


# --- consumer groups ---


def join_group(
    conn: sqlite3.Connection,
    group: str,
    flt: Filter,
    start: Start,
    max_attempts: int,
    now_ms: int,
) -> None:
    """Create the group at ``start``, or check an existing group's filter."""
    row = conn.execute(
        "SELECT filter_json FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO postback_groups (name, filter_json, position, max_attempts, created_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (group, filter_to_json(flt), start_cursor(conn, start), max_attempts, now_ms),
        )
        return
    existing = filter_from_json(row[0])
    if existing != flt:
        raise GroupFilterMismatch(group, existing)
    conn.execute(
        "UPDATE postback_groups SET max_attempts = ? WHERE name = ?", (max_attempts, group)
    )


@dataclass(frozen=True)
class Claim:
    """What one claim handed to a member."""

    deliveries: list[Delivery]
    dead_lettered: int
    """Expired deliveries found on their last attempt and set aside."""
    next_deadline_ms: int | None
    """The earliest deadline still pending in the group: when to claim again."""
    unacked: int
    """Deliveries pending in the group after this claim."""
    more: bool
    """The scan stopped early; claim again at once."""


def _dead_letter(
    conn: sqlite3.Connection, group: str, seq: int, attempts: int, now_ms: int
) -> None:
    conn.execute(
        "DELETE FROM postback_group_pending WHERE group_name = ? AND seq = ?", (group, seq)
    )
    conn.execute(
        "INSERT OR REPLACE INTO postback_dead_letters (group_name, seq, attempts, dead_ms)"
        " VALUES (?, ?, ?, ?)",
        (group, seq, attempts, now_ms),
    )
    conn.execute(
        "UPDATE postback_groups SET dead_lettered = dead_lettered + 1 WHERE name = ?", (group,)
    )


def _fetch(conn: sqlite3.Connection, seq: int) -> StoredPostback | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM postbacks WHERE seq = ?",  # noqa: S608
        (seq,),
    ).fetchone()
    return None if row is None else _postback(row)


def claim(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    limit: int,
    deadline_ms: int,
    now_ms: int,
) -> Claim:
    """Hand up to ``limit`` deliveries to ``member``: expired or nacked ones first (their
    attempt counted, or dead-lettered after the group's maximum), then new postbacks after
    the group's position that pass its filter."""
    row = conn.execute(
        "SELECT filter_json, position, max_attempts FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        return Claim([], 0, None, 0, more=False)
    flt, position, max_attempts = filter_from_json(row[0]), int(row[1]), int(row[2])
    deliveries: list[Delivery] = []
    dead = 0

    while len(deliveries) < limit:
        expired = conn.execute(
            "SELECT seq, attempt FROM postback_group_pending"
            " WHERE group_name = ? AND deadline_ms <= ? ORDER BY seq LIMIT ?",
            (group, now_ms, limit - len(deliveries)),
        ).fetchall()
        if not expired:
            break
        for seq, attempt in expired:
            postback = _fetch(conn, seq)
            if postback is None:  # pruned meanwhile
                conn.execute(
                    "DELETE FROM postback_group_pending WHERE group_name = ? AND seq = ?",
                    (group, seq),
                )
            elif attempt >= max_attempts:
                _dead_letter(conn, group, seq, attempt, now_ms)
                dead += 1
            else:
                ack_id = secrets.token_urlsafe(12)
                conn.execute(
                    "UPDATE postback_group_pending SET attempt = ?, ack_id = ?, deadline_ms = ?,"
                    " member = ? WHERE group_name = ? AND seq = ?",
                    (attempt + 1, ack_id, deadline_ms, member, group, seq),
                )
                deliveries.append(Delivery(postback, ack_id, attempt + 1))

    scanned = 0
    more = False
    while len(deliveries) < limit and not more:
        page = read_page(conn, position)
        if not page:
            break
        for postback in page:
            position = postback.sequence
            scanned += 1
            if flt.matches(postback):
                ack_id = secrets.token_urlsafe(12)
                conn.execute(
                    "INSERT INTO postback_group_pending"
                    " (group_name, seq, ack_id, attempt, deadline_ms, member)"
                    " VALUES (?, ?, ?, 1, ?, ?)",
                    (group, postback.sequence, ack_id, deadline_ms, member),
                )
                deliveries.append(Delivery(postback, ack_id, 1))
                if len(deliveries) >= limit:
                    break
            if scanned >= _SCAN_LIMIT:
                more = True
                break
    conn.execute("UPDATE postback_groups SET position = ? WHERE name = ?", (position, group))

    next_deadline, unacked = conn.execute(
        "SELECT MIN(deadline_ms), COUNT(*) FROM postback_group_pending WHERE group_name = ?",
        (group,),
    ).fetchone()
    return Claim(deliveries, dead, next_deadline, int(unacked), more)


@dataclass(frozen=True)
class AckOutcome:
    """An ack's result plus what the in-process members need to hear."""

    result: AckResult
    settled: frozenset[str]
    """Ack and nack ids no longer held by whoever they were delivered to."""
    dead_lettered: int
    unacked: int
    """Deliveries pending in the group after this call."""


def ack(
    conn: sqlite3.Connection,
    group: str,
    ack_ids: Sequence[str],
    nack_ids: Sequence[str],
    now_ms: int,
) -> AckOutcome:
    """Delete acknowledged deliveries; make nacked ones due at once (or dead-letter them
    if that was their last attempt)."""
    row = conn.execute(
        "SELECT max_attempts FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        return AckOutcome(AckResult(0, (*ack_ids, *nack_ids)), frozenset(), 0, 0)
    max_attempts = int(row[0])
    settled: set[str] = set()
    unknown: list[str] = []
    dead = 0
    for ack_id in ack_ids:
        deleted = conn.execute(
            "DELETE FROM postback_group_pending WHERE group_name = ? AND ack_id = ?",
            (group, ack_id),
        ).rowcount
        if deleted:
            settled.add(ack_id)
        else:
            unknown.append(ack_id)
    for ack_id in nack_ids:
        found = conn.execute(
            "SELECT seq, attempt FROM postback_group_pending"
            " WHERE group_name = ? AND ack_id = ? AND member IS NOT NULL",
            (group, ack_id),
        ).fetchone()
        if found is None:
            unknown.append(ack_id)
            continue
        seq, attempt = found
        settled.add(ack_id)
        if attempt >= max_attempts:
            _dead_letter(conn, group, seq, attempt, now_ms)
            dead += 1
        else:
            conn.execute(
                "UPDATE postback_group_pending SET deadline_ms = 0, member = NULL"
                " WHERE group_name = ? AND seq = ?",
                (group, seq),
            )
    (unacked,) = conn.execute(
        "SELECT COUNT(*) FROM postback_group_pending WHERE group_name = ?", (group,)
    ).fetchone()
    return AckOutcome(
        AckResult(len(settled), tuple(unknown)), frozenset(settled), dead, int(unacked)
    )


def group_info(conn: sqlite3.Connection, group: str) -> GroupInfo | None:
    """The group's filter, unacknowledged count and dead-letter count."""
    row = conn.execute(
        "SELECT filter_json, dead_lettered FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        return None
    (unacked,) = conn.execute(
        "SELECT COUNT(*) FROM postback_group_pending WHERE group_name = ?", (group,)
    ).fetchone()
    return GroupInfo(
        name=group, filter=filter_from_json(row[0]), unacked=int(unacked), dead_lettered=int(row[1])
    )
