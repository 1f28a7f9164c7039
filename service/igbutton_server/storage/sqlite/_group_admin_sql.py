"""The SQL of the SQLite engine's group operations (``storage.groups``): details, seek,
dead letters and deadlines. Same rules as ``_group_sql``: each function runs inside its
caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from igbutton_server.storage.groups import (
    DeadLetter,
    DeadLetterPage,
    DeadLetterReason,
    GroupDetails,
)
from igbutton_server.storage.postbacks import Start
from igbutton_server.storage.sqlite._group_sql import start_from_json
from igbutton_server.storage.sqlite._postback_sql import (
    COLUMNS,
    filter_from_json,
    postback_row,
    start_cursor,
)

_LOG_COLUMNS = ", ".join(f"l.{c.strip()}" for c in COLUMNS.split(","))


def group_keys(conn: sqlite3.Connection) -> list[str]:
    """Every group's key, in order."""
    return [str(r[0]) for r in conn.execute("SELECT name FROM postback_groups ORDER BY name")]


def details(conn: sqlite3.Connection, group: str, members: int) -> GroupDetails | None:
    """The group's details (``members`` is counted by the caller), or None."""
    row = conn.execute(
        "SELECT filter_json, position, max_attempts, ack_deadline_ms, start_json"
        " FROM postback_groups WHERE name = ?",
        (group,),
    ).fetchone()
    if row is None:
        return None
    flt = filter_from_json(row[0])
    position = int(row[1])
    backlog_query = "SELECT COUNT(*) FROM postbacks WHERE seq > ?"
    args: list[object] = [position]
    if flt.account_ids:
        marks = ", ".join("?" for _ in flt.account_ids)
        backlog_query += f" AND account_id IN ({marks})"
        args.extend(sorted(flt.account_ids))
    (backlog,) = conn.execute(backlog_query, args).fetchone()
    unacked, redelivered, oldest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(p.attempt > 1), 0), MIN(l.received_ms)"
        " FROM postback_group_pending p LEFT JOIN postbacks l ON l.seq = p.seq"
        " WHERE p.group_name = ?",
        (group,),
    ).fetchone()
    (dead,) = conn.execute(
        "SELECT COUNT(*) FROM postback_dead_letters WHERE group_name = ?", (group,)
    ).fetchone()
    return GroupDetails(
        key=group,
        filter=flt,
        start=start_from_json(str(row[4])),
        ack_deadline=int(row[3]) / 1000,
        max_attempts=int(row[2]),
        members=members,
        position=position,
        backlog=int(backlog),
        unacked=int(unacked),
        redelivered=int(redelivered),
        dead_lettered=int(dead),
        oldest_unacked_ms=None if oldest is None else int(oldest),
    )


def exists(conn: sqlite3.Connection, group: str) -> bool:
    """Whether the group exists."""
    found = conn.execute("SELECT 1 FROM postback_groups WHERE name = ?", (group,)).fetchone()
    return found is not None


def seek(conn: sqlite3.Connection, group: str, to: Start) -> bool:
    """Move the group's position to ``to`` and drop its pending deliveries: those before
    count as acknowledged, those after are scanned again from attempt 1. False if there is
    no such group."""
    moved = conn.execute(
        "UPDATE postback_groups SET position = ? WHERE name = ?",
        (start_cursor(conn, to), group),
    ).rowcount
    if moved:
        conn.execute("DELETE FROM postback_group_pending WHERE group_name = ?", (group,))
    return moved > 0


def dead_letter_page(
    conn: sqlite3.Connection, group: str, after: int, limit: int
) -> DeadLetterPage:
    """Up to ``limit`` dead letters above sequence ``after`` whose postback is retained."""
    rows = conn.execute(
        f"SELECT d.attempts, d.dead_ms, d.reason, {_LOG_COLUMNS}"  # noqa: S608 - fixed columns
        " FROM postback_dead_letters d JOIN postbacks l ON l.seq = d.seq"
        " WHERE d.group_name = ? AND d.seq > ? ORDER BY d.seq LIMIT ?",
        (group, after, limit + 1),
    ).fetchall()
    letters = [
        DeadLetter(
            postback=postback_row(tuple(row[3:])),
            reason=DeadLetterReason(row[2]),
            attempts=int(row[0]),
            dead_ms=int(row[1]),
        )
        for row in rows[:limit]
    ]
    more = len(rows) > limit and bool(letters)
    return DeadLetterPage(letters, letters[-1].postback.sequence if more else None)


def redrive(conn: sqlite3.Connection, group: str, sequences: Sequence[int] | None) -> int:
    """Move dead letters (None: all) back to pending at attempt 0, due at once, so the next
    claim delivers them as attempt 1; return how many moved."""
    if sequences is None:
        chosen = [
            int(r[0])
            for r in conn.execute(
                "SELECT d.seq FROM postback_dead_letters d JOIN postbacks l ON l.seq = d.seq"
                " WHERE d.group_name = ?",
                (group,),
            )
        ]
    else:
        chosen = sorted(set(sequences))
    moved = 0
    for seq in chosen:
        removed = conn.execute(
            "DELETE FROM postback_dead_letters WHERE group_name = ? AND seq = ?"
            " AND EXISTS (SELECT 1 FROM postbacks l WHERE l.seq = ?)",
            (group, seq, seq),
        ).rowcount
        if not removed:
            continue
        # A claim hands out expired entries (deadline passed) with attempt + 1.
        conn.execute(
            "INSERT OR IGNORE INTO postback_group_pending"
            " (group_name, seq, ack_id, attempt, deadline_ms, member)"
            " VALUES (?, ?, 'redrive-' || ? || '-' || lower(hex(randomblob(8))), 0, 0, NULL)",
            (group, seq, seq),
        )
        moved += 1
    return moved


def purge(conn: sqlite3.Connection, group: str) -> int:
    """Remove the group's dead letters; return how many."""
    return conn.execute("DELETE FROM postback_dead_letters WHERE group_name = ?", (group,)).rowcount


@dataclass(frozen=True)
class Extended:
    """What a deadline change applied."""

    applied: dict[str, int]
    """Ack id -> its new deadline (ms)."""
    unknown: tuple[str, ...]


def set_deadlines(
    conn: sqlite3.Connection, group: str, ack_ids: Sequence[str], deadline_ms: int
) -> Extended:
    """Give deliveries held by a member (not expired and taken back) a new deadline."""
    applied: dict[str, int] = {}
    unknown: list[str] = []
    for ack_id in ack_ids:
        changed = conn.execute(
            "UPDATE postback_group_pending SET deadline_ms = ?"
            " WHERE group_name = ? AND ack_id = ? AND member IS NOT NULL",
            (deadline_ms, group, ack_id),
        ).rowcount
        if changed:
            applied[ack_id] = deadline_ms
        else:
            unknown.append(ack_id)
    return Extended(applied, tuple(unknown))
