"""The SQL of the SQLite engine's consumer groups: join, claim, ack, inspect.

Same rules as ``_postback_sql``: each function runs inside its caller's transaction.
A claim dead-letters expired deliveries that were on their last attempt, then hands a
member expired or nacked deliveries (counting the attempt), then new postbacks after the
group's position. A stalled member (see ``GroupMember``) claims with limit 0: it only
dead-letters.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from igbutton_server.storage.groups import DeadLetterReason
from igbutton_server.storage.postbacks import (
    AckResult,
    Delivery,
    Filter,
    GroupFilterMismatch,
    GroupInfo,
    GroupOptions,
    Start,
    StartKind,
    StoredPostback,
    TooManyGroups,
    split_group_key,
)
from igbutton_server.storage.sqlite._postback_sql import (
    COLUMNS,
    PAGE_SIZE,
    filter_from_json,
    filter_to_json,
    postback_row,
    read_page,
    start_cursor,
)

_SCAN_LIMIT = 8 * PAGE_SIZE
"""Log rows one claim looks at before returning, so a filter matching little never holds
the write lock for long."""


def join_group(
    conn: sqlite3.Connection,
    group: str,
    flt: Filter,
    start: Start,
    options: GroupOptions,
    now_ms: int,
    max_groups: int | None,
) -> None:
    """Create the group at ``start`` (unless its scope holds ``max_groups`` already), or
    check an existing group's filter. The joining member's ack deadline and max attempts
    become the group's."""
    row = conn.execute(
        "SELECT filter_json FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    deadline_ms = int(options.ack_deadline * 1000)
    if row is None:
        if max_groups is not None and count_groups(conn, split_group_key(group)[0]) >= max_groups:
            raise TooManyGroups(group, max_groups)
        conn.execute(
            "INSERT INTO postback_groups (name, filter_json, position, max_attempts, created_ms,"
            " active_ms, ack_deadline_ms, start_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                group,
                filter_to_json(flt),
                start_cursor(conn, start),
                options.max_attempts,
                now_ms,
                now_ms,
                deadline_ms,
                start_to_json(start),
            ),
        )
        return
    existing = filter_from_json(row[0])
    if existing != flt:
        raise GroupFilterMismatch(group, existing)
    conn.execute(
        "UPDATE postback_groups SET max_attempts = ?, active_ms = ?, ack_deadline_ms = ?"
        " WHERE name = ?",
        (options.max_attempts, now_ms, deadline_ms, group),
    )


def start_to_json(start: Start) -> str:
    """A start position as stored with a group."""
    return json.dumps(
        {"kind": start.kind.value, "after": start.after_sequence, "since": start.since_ms}
    )


def start_from_json(text: str) -> Start:
    """The start stored with a group (latest for a group from before it was stored)."""
    if not text:
        return Start.latest()
    data = json.loads(text)
    return Start(StartKind(data["kind"]), int(data["after"]), int(data["since"]))


def count_groups(conn: sqlite3.Connection, scope: str | None) -> int:
    """How many groups the scope holds (None: the shared scope of open mode)."""
    if scope is None:
        query = "SELECT COUNT(*) FROM postback_groups WHERE instr(name, '/') = 0"
        (count,) = conn.execute(query).fetchone()
    else:
        # Keys of a scope are "<scope>/<name>": a range of the primary key.
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM postback_groups WHERE name > ? AND name < ?",
            (f"{scope}/", f"{scope}0"),
        ).fetchone()
    return int(count)


def touch(conn: sqlite3.Connection, group_keys: Sequence[str], now_ms: int) -> None:
    """Note activity in these groups (their last member left), for the idle sweep."""
    conn.executemany(
        "UPDATE postback_groups SET active_ms = ? WHERE name = ?",
        [(now_ms, group) for group in group_keys],
    )


def idle_groups(conn: sqlite3.Connection, idle_since_ms: int) -> list[str]:
    """Groups nobody joined, acked in or left since ``idle_since_ms``."""
    rows = conn.execute(
        "SELECT name FROM postback_groups WHERE active_ms < ? ORDER BY name", (idle_since_ms,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def delete_group(conn: sqlite3.Connection, group: str) -> bool:
    """Remove the group with its deliveries and dead letters; False if there was none."""
    for table in ("postback_group_pending", "postback_dead_letters"):
        conn.execute(
            f"DELETE FROM {table} WHERE group_name = ?",  # noqa: S608 - fixed table names
            (group,),
        )
    return conn.execute("DELETE FROM postback_groups WHERE name = ?", (group,)).rowcount > 0


@dataclass(frozen=True)
class Claim:
    """What one claim handed to a member."""

    deliveries: list[Delivery]
    dead_lettered: tuple[int, ...]
    """Sequences of expired deliveries found on their last attempt and set aside."""
    next_deadline_ms: int | None
    """The earliest deadline still pending in the group: when to claim again."""
    unacked: int
    """Deliveries pending in the group after this claim."""
    more: bool
    """The scan stopped early; claim again at once."""
    deadline_ms: int
    """The deadline of this claim's deliveries: its ack deadline after the claim ran."""


def _dead_letter(
    conn: sqlite3.Connection,
    group: str,
    seq: int,
    attempts: int,
    now_ms: int,
    reason: DeadLetterReason = DeadLetterReason.EXPIRED,
) -> None:
    conn.execute(
        "DELETE FROM postback_group_pending WHERE group_name = ? AND seq = ?", (group, seq)
    )
    conn.execute(
        "INSERT OR REPLACE INTO postback_dead_letters"
        " (group_name, seq, attempts, dead_ms, reason) VALUES (?, ?, ?, ?, ?)",
        (group, seq, attempts, now_ms, reason.value),
    )
    conn.execute(
        "UPDATE postback_groups SET dead_lettered = dead_lettered + 1 WHERE name = ?", (group,)
    )


def _fetch(conn: sqlite3.Connection, seq: int) -> StoredPostback | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM postbacks WHERE seq = ?",  # noqa: S608
        (seq,),
    ).fetchone()
    return None if row is None else postback_row(row)


def claim(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    limit: int,
    ack_deadline_ms: int,
    now_ms: int,
) -> Claim:
    """Hand up to ``limit`` deliveries to ``member``, each due ``ack_deadline_ms`` after
    ``now_ms`` (the time of this transaction, not of the member's call: a claim queued
    behind a busy writer must not hand out deliveries with their time already spent):
    expired or nacked ones first (their attempt counted, or dead-lettered after the
    group's maximum), then new postbacks after the group's position that pass its filter.
    With ``limit`` 0 it only dead-letters the expired last attempts."""
    deadline_ms = now_ms + ack_deadline_ms
    row = conn.execute(
        "SELECT filter_json, position, max_attempts FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        return Claim([], (), None, 0, more=False, deadline_ms=deadline_ms)
    flt, position, max_attempts = filter_from_json(row[0]), int(row[1]), int(row[2])
    deliveries: list[Delivery] = []
    dead: list[int] = []
    _dead_letter_last_attempts(conn, group, dead, max_attempts=max_attempts, now_ms=now_ms)
    _claim_expired(
        conn,
        group,
        member,
        deliveries,
        dead,
        limit=limit,
        max_attempts=max_attempts,
        deadline_ms=deadline_ms,
        now_ms=now_ms,
    )
    more = _claim_new(
        conn,
        group,
        member,
        flt,
        deliveries,
        position=position,
        limit=limit,
        deadline_ms=deadline_ms,
    )
    # Future deadlines only: a stalled member (limit 0) leaves due deliveries to others.
    (next_deadline,) = conn.execute(
        "SELECT MIN(deadline_ms) FROM postback_group_pending"
        " WHERE group_name = ? AND deadline_ms > ?",
        (group, now_ms),
    ).fetchone()
    (unacked,) = conn.execute(
        "SELECT COUNT(*) FROM postback_group_pending WHERE group_name = ?", (group,)
    ).fetchone()
    return Claim(deliveries, tuple(dead), next_deadline, int(unacked), more, deadline_ms)


def _dead_letter_last_attempts(
    conn: sqlite3.Connection, group: str, dead: list[int], *, max_attempts: int, now_ms: int
) -> None:
    """Dead-letter (into ``dead``) expired deliveries that were on their last attempt,
    whoever claims: also a stalled member, which takes no deliveries, so they are not
    left pending while only stalled members are connected."""
    rows = conn.execute(
        "SELECT seq, attempt FROM postback_group_pending WHERE group_name = ?"
        " AND deadline_ms <= ? AND member IS NOT NULL AND attempt >= ? ORDER BY seq LIMIT ?",
        (group, now_ms, max_attempts, _SCAN_LIMIT),
    ).fetchall()
    for seq, attempt in rows:
        _dead_letter(conn, group, seq, attempt, now_ms)
        dead.append(seq)


def _claim_expired(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    deliveries: list[Delivery],
    dead: list[int],
    *,
    limit: int,
    max_attempts: int,
    deadline_ms: int,
    now_ms: int,
) -> None:
    """Add expired or nacked deliveries to ``deliveries`` (up to ``limit``), their attempt
    counted; those past the group's maximum attempts are dead-lettered into ``dead``."""
    while len(deliveries) < limit:
        expired = conn.execute(
            "SELECT seq, attempt FROM postback_group_pending"
            " WHERE group_name = ? AND deadline_ms <= ? ORDER BY seq LIMIT ?",
            (group, now_ms, limit - len(deliveries)),
        ).fetchall()
        if not expired:
            return
        for seq, attempt in expired:
            postback = _fetch(conn, seq)
            if postback is None:  # pruned meanwhile
                conn.execute(
                    "DELETE FROM postback_group_pending WHERE group_name = ? AND seq = ?",
                    (group, seq),
                )
            elif attempt >= max_attempts:
                _dead_letter(conn, group, seq, attempt, now_ms)
                dead.append(seq)
            else:
                ack_id = secrets.token_urlsafe(12)
                conn.execute(
                    "UPDATE postback_group_pending SET attempt = ?, ack_id = ?, deadline_ms = ?,"
                    " member = ? WHERE group_name = ? AND seq = ?",
                    (attempt + 1, ack_id, deadline_ms, member, group, seq),
                )
                deliveries.append(Delivery(postback, ack_id, attempt + 1))


def _claim_new(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    flt: Filter,
    deliveries: list[Delivery],
    *,
    position: int,
    limit: int,
    deadline_ms: int,
) -> bool:
    """Add new postbacks after the group's ``position`` that pass its filter to
    ``deliveries`` (up to ``limit``) and move the position past what was scanned. True if
    the scan stopped at its limit (there may be more)."""
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
    return more


@dataclass(frozen=True)
class AckOutcome:
    """An ack's result plus what the in-process members need to hear."""

    result: AckResult
    settled: frozenset[str]
    """Ack and nack ids no longer held by whoever they were delivered to."""
    dead_lettered: tuple[int, ...]
    """Sequences nacked on their last attempt and set aside."""
    unacked: int | None
    """Deliveries pending in the group after this call; None if there is no such group."""


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
        return AckOutcome(AckResult(0, (*ack_ids, *nack_ids)), frozenset(), (), None)
    max_attempts = int(row[0])
    conn.execute("UPDATE postback_groups SET active_ms = ? WHERE name = ?", (now_ms, group))
    settled: set[str] = set()
    unknown: list[str] = []
    dead: list[int] = []
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
            _dead_letter(conn, group, seq, attempt, now_ms, DeadLetterReason.NACKED)
            dead.append(seq)
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
        AckResult(len(settled), tuple(unknown)), frozenset(settled), tuple(dead), int(unacked)
    )


def group_info(conn: sqlite3.Connection, group: str) -> GroupInfo | None:
    """The group's filter, unacknowledged count and dead-letter count."""
    row = conn.execute(
        "SELECT filter_json FROM postback_groups WHERE name = ?", (group,)
    ).fetchone()
    if row is None:
        return None
    (unacked,) = conn.execute(
        "SELECT COUNT(*) FROM postback_group_pending WHERE group_name = ?", (group,)
    ).fetchone()
    (dead,) = conn.execute(
        "SELECT COUNT(*) FROM postback_dead_letters WHERE group_name = ?", (group,)
    ).fetchone()
    return GroupInfo(
        name=group, filter=filter_from_json(row[0]), unacked=int(unacked), dead_lettered=int(dead)
    )
