"""The messaging window's record on SQLite (storage.windows), in the shared file."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Mapping, Sequence

from igbutton_server.storage.sqlite._threads import fits
from igbutton_server.storage.sqlite.file import SqliteFile
from igbutton_server.storage.windows import RECORD_TTL_SECONDS, Person

_PRUNE_BATCH = 5000

_Row = tuple[str, str, int]
"""account_id, person_id, last_ms."""


@functools.cache
def _note_sql(rows: int) -> str:
    # max(): a late delivery never moves a window back.
    return (
        "INSERT INTO messaging_windows (account_id, person_id, last_ms) VALUES "  # noqa: S608 - placeholders only
        + ", ".join(["(?, ?, ?)"] * rows)
        + " ON CONFLICT (account_id, person_id)"
        " DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)"
    )


class _Notes:
    """A batch's window notes as one upsert."""

    atomic = True

    def run_all(self, conn: sqlite3.Connection, items: Sequence[list[_Row]]) -> list[None] | None:
        rows = [row for item in items for row in item]
        if not fits(conn, 3 * len(rows)):
            return None
        conn.execute(_note_sql(len(rows)), [value for row in rows for value in row])
        return [None] * len(items)


_NOTES = _Notes()

SCHEMA = """
CREATE TABLE IF NOT EXISTS messaging_windows (
    account_id   TEXT    NOT NULL,
    person_id    TEXT    NOT NULL,
    last_ms      INTEGER NOT NULL,
    PRIMARY KEY (account_id, person_id)
) WITHOUT ROWID;
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the table if it does not exist (idempotent)."""
    conn.executescript(SCHEMA)


class SqliteWindowLedger:
    """WindowLedger on the file's writer thread and reader pool."""

    def __init__(self, file: SqliteFile) -> None:
        file.attach()
        self._file = file

    async def note(self, seen: Mapping[Person, int]) -> None:
        """See WindowLedger.note."""
        rows = [(account, person, ms) for (account, person), ms in seen.items()]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(_note_sql(1), rows)

        # No savepoint: each upsert only raises a time, so rows that stand when a later
        # one fails are right by themselves (and the delivery is retried in full).
        await self._file.writer.run(write, savepoint=False, merge=(_NOTES, rows))

    async def last_message_ms(self, account_id: str, person_id: str) -> int | None:
        """See WindowLedger.last_message_ms."""
        oldest = int(time.time() * 1000) - RECORD_TTL_SECONDS * 1000

        def read(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT last_ms FROM messaging_windows WHERE account_id = ? AND person_id = ?"
                " AND last_ms >= ?",
                (account_id, person_id, oldest),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._file.readers.run(read)

    async def prune(self) -> int:
        """See WindowLedger.prune: in batches, so appends never wait long for the lock."""
        oldest = int(time.time() * 1000) - RECORD_TTL_SECONDS * 1000
        total = 0
        while True:
            deleted = await self._file.writer.run(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM messaging_windows WHERE (account_id, person_id) IN"
                        " (SELECT account_id, person_id FROM messaging_windows"
                        "  WHERE last_ms < ? LIMIT ?)",
                        (oldest, _PRUNE_BATCH),
                    ).rowcount
                )
            )
            total += deleted
            if deleted < _PRUNE_BATCH:
                return total

    async def close(self) -> None:
        """See WindowLedger.close."""
        await self._file.release()
