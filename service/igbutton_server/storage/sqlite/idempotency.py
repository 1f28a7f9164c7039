"""request_id records in the table ``idempotency`` of the SQLite file: the IdempotencyStore
of a single process.

Claims, outcomes and releases are jobs of the file's one writer thread, so concurrent claims
share a transaction and its fsync with each other and with postback appends. The writer
answers a job only after its transaction committed with ``synchronous=FULL``: a claim is on
disk before the send path calls Meta, so a crash cannot send twice. Reads use the reader
pool. The claims and the lazy outcomes of one batch are one INSERT (an upsert for the
outcomes; ``_Records``: see :class:`Merge`), not one statement each.

The owner of a claim is the store that made it: a fresh id per process (the file belongs to
one process at a time). A pending claim of another owner was left by an earlier process that
crashed, so it is abandoned at once; ``written`` says whether its request may have reached
Meta.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from igbutton_server.send.outcome import Outcome, dump_outcome, load_outcome
from igbutton_server.storage.idempotency import ClaimLost, Record
from igbutton_server.storage.sqlite._threads import fits
from igbutton_server.storage.sqlite.file import SqliteFile

_STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS idempotency (
    request_id       TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    outcome          TEXT,
    lease_expires_at REAL NOT NULL,
    expires_at       REAL NOT NULL,
    owner            TEXT NOT NULL DEFAULT '',
    written          INTEGER NOT NULL DEFAULT 1
)""",
    "CREATE INDEX IF NOT EXISTS idempotency_expires_at ON idempotency (expires_at)",
)
_ADDED_COLUMNS = {
    # Files of earlier versions: their pending claims count as written (the safe side).
    "owner": "ALTER TABLE idempotency ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    "written": "ALTER TABLE idempotency ADD COLUMN written INTEGER NOT NULL DEFAULT 1",
}
_COLUMNS = "fingerprint, outcome, lease_expires_at, written, owner"

_PRUNE_EVERY_SECONDS = 60.0

_CLAIM = (
    "INSERT INTO idempotency AS old (request_id, fingerprint, outcome, lease_expires_at, "
    "expires_at, owner, written) VALUES (?, ?, NULL, ?, ?, ?, ?) "
    "ON CONFLICT (request_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "outcome = NULL, lease_expires_at = excluded.lease_expires_at, "
    "expires_at = excluded.expires_at, owner = excluded.owner, written = excluded.written "
    "WHERE old.expires_at <= ? OR (old.outcome IS NULL AND old.written = 0 AND old.owner != ?)"
)
"""A new claim, or one taking over a record that counts as absent (expired) or abandoned
before it was written; changes no row when the record stands."""


@functools.cache
def _records_sql(rows: int) -> str:
    # The outcomes' upsert, with the claims' rows in it. A claim has no outcome, and its
    # request_id meeting a record sets the fingerprint to NULL, which the column refuses:
    # the statement fails, SQLite undoes it, and every job of the batch then runs by itself
    # (a claim its _CLAIM, which tells an expired or abandoned record from a standing one).
    # Claims and outcomes have rows of one shape, so the statement's text (and SQLite's
    # prepared statement, cached by text) depends on the number of rows alone.
    return (
        "INSERT INTO idempotency (request_id, fingerprint, outcome, lease_expires_at, "  # noqa: S608 - placeholders only
        "expires_at, owner, written) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows) + " "
        "ON CONFLICT (request_id) DO UPDATE SET "
        "fingerprint = iif(excluded.outcome IS NULL, NULL, excluded.fingerprint), "
        "outcome = excluded.outcome, expires_at = excluded.expires_at, written = 1"
    )


_Row = tuple[str, str, str | None, float, float, str, bool]
"""request_id, fingerprint, outcome, lease_expires_at, expires_at, owner, written: a claim's
row (its outcome None) or an outcome's, for ``_records_sql``."""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the table if it does not exist (idempotent)."""
    for statement in _STATEMENTS:
        conn.execute(statement)
    present = {row[1] for row in conn.execute("PRAGMA table_info(idempotency)")}
    for column, statement in _ADDED_COLUMNS.items():
        if column not in present:
            conn.execute(statement)


class SqliteIdempotencyStore:
    """IdempotencyStore on a SQLite file (WAL, synchronous=FULL).

    Given a :class:`SqliteFile` (opened with :func:`create_schema` among its schemas) it
    shares that file's threads; given a path it opens a file of its own. Call :meth:`open`
    before use.
    """

    def __init__(self, file: SqliteFile | Path) -> None:
        if isinstance(file, Path):
            file = SqliteFile(file, (create_schema,))
        self._file = file
        file.attach()
        self._last_prune = 0.0
        """When the writer last removed every expired record (only the writer touches it)."""
        self._owner = uuid.uuid4().hex
        """This process's claims; any other owner's pending claim was left by a crash."""
        self._records = _Records(self)

    def open(self) -> None:
        """Start the file's threads and create the table if not done yet. Blocks; call at
        start-up, so a bad path stops the process with a clear error."""
        self._file.start_blocking()

    @property
    def commits(self) -> int:
        """Write transactions of the file committed so far (claims may share one)."""
        return self._file.commits

    @property
    def jobs(self) -> int:
        """Writes of the file committed so far (a claim, an outcome, a postback append...)."""
        return self._file.jobs

    async def get(self, key: str) -> Record | None:
        """See IdempotencyStore.get."""
        now = time.time()

        def read(db: sqlite3.Connection) -> Record | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM idempotency WHERE request_id = ? AND expires_at > ?",  # noqa: S608 - constant
                (key, now),
            ).fetchone()
            return self._record(row)

        return await self._file.readers.run(read)

    async def claim(
        self,
        key: str,
        fingerprint: str,
        lease_seconds: float,
        ttl_seconds: float,
        *,
        written: bool = False,
    ) -> Record | None:
        """See IdempotencyStore.claim."""
        now = time.time()
        lease, expires = now + lease_seconds, now + ttl_seconds
        claim = (key, fingerprint, lease, expires, self._owner, written)
        row = (key, fingerprint, None, lease, expires, self._owner, written)  # _records_sql's

        def write(db: sqlite3.Connection) -> Record | None:
            self.prune_if_due(db, now)
            # One statement: insert, or take over an expired record or a
            # crashed process's claim that never reached Meta.
            if db.execute(_CLAIM, (*claim, now, self._owner)).rowcount:
                return None
            row = db.execute(
                f"SELECT {_COLUMNS} FROM idempotency WHERE request_id = ?",  # noqa: S608 - constant
                (key,),
            ).fetchone()
            return self._record(row)

        # Without a savepoint: the prune may stand if the claim fails; each statement is
        # atomic by itself.
        return await self._file.writer.run(
            write,
            savepoint=False,
            patient=True,
            merge=(self._records, row),
        )

    def prune_due(self, now: float) -> bool:
        """Whether the expired records are due for removal (once a ``_PRUNE_EVERY_SECONDS``)."""
        return now - self._last_prune > _PRUNE_EVERY_SECONDS

    def prune_if_due(self, db: sqlite3.Connection, now: float) -> None:
        """Remove every expired record, at most once a ``_PRUNE_EVERY_SECONDS`` (writer)."""
        if self.prune_due(now):
            db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            self._last_prune = now

    async def mark_written(self, key: str) -> None:
        """See IdempotencyStore.mark_written."""

        def write(db: sqlite3.Connection) -> bool:
            updated = db.execute(
                "UPDATE idempotency SET written = 1 "
                "WHERE request_id = ? AND owner = ? AND outcome IS NULL",
                (key, self._owner),
            ).rowcount
            return bool(updated)

        if not await self._file.writer.run(write, savepoint=False):
            raise ClaimLost(key)

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """See IdempotencyStore.complete."""
        await self.complete_soon(key, fingerprint, outcome, ttl_seconds, lazy=False)

    def complete_soon(
        self,
        key: str,
        fingerprint: str,
        outcome: Outcome,
        ttl_seconds: float,
        *,
        lazy: bool = True,
    ) -> asyncio.Future[None]:
        """See IdempotencyStore.complete_soon: a lazy job of the writer, which shares the
        next claim's (or append's) commit."""
        now = time.time()
        row = (key, fingerprint, dump_outcome(outcome), now, now + ttl_seconds, self._owner, True)

        def write(db: sqlite3.Connection) -> None:
            db.execute(_records_sql(1), row)

        return self._file.writer.submit(
            write, savepoint=False, lazy=lazy, merge=(self._records, row)
        )

    async def release(self, key: str) -> None:
        """See IdempotencyStore.release."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM idempotency WHERE request_id = ? AND outcome IS NULL AND owner = ?",
                (key, self._owner),
            )

        await self._file.writer.run(write, savepoint=False)

    def unready_reason(self) -> str | None:
        """None while the file takes writes, else why not (for /readyz)."""
        return self._file.unready_reason()

    async def close(self) -> None:
        """Let go of the file (its threads stop with the last store using it)."""
        await self._file.release()

    def _record(self, row: tuple[str, str | None, float, int, str] | None) -> Record | None:
        if row is None:
            return None
        fp, outcome, lease, written, owner = row
        if outcome is not None:
            return Record(fp, load_outcome(outcome), lease)
        mine = owner == self._owner
        return Record(fp, None, lease, written=bool(written), abandoned=not mine, own=mine)


class _Records:
    """A batch's claims and outcomes as one statement when none of the claims' request_ids
    has a record (the usual case); else None, and each job runs by itself."""

    atomic = True

    def __init__(self, store: SqliteIdempotencyStore) -> None:
        self._store = store

    def run_all(self, conn: sqlite3.Connection, items: Sequence[_Row]) -> list[None] | None:
        if not fits(conn, len(items) * len(items[0])):
            return None
        now = time.time()
        if self._store.prune_due(now) and any(row[2] is None for row in items):
            if not conn.in_transaction:
                return None  # the prune shares the claims' commit, in a transaction
            self._store.prune_if_due(conn, now)
        conn.execute(_records_sql(len(items)), [value for row in items for value in row])
        return [None] * len(items)  # None: claimed (no record stood in the way), or kept
