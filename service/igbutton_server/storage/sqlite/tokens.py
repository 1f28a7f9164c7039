"""The token records in a SQLite file of their own, readable by its owner only.

Not in the postback log's file: that one is copied, inspected and backed up as data; this
one holds secrets. It is created with mode 0600 (and set to it again on every open, should
someone have widened it), in rollback-journal mode, whose journal SQLite creates with the
database file's permissions. One process uses it (the SQLite engine serves one replica), so
each operation opens a short connection in a worker thread: refreshes are rare.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from igbutton_server.storage.tokens import StoredToken, TokenRecord

FILE_MODE = 0o600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_tokens (
    account_id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    revision INTEGER NOT NULL
)
"""


def tokens_path(sqlite_path: Path) -> Path:
    """The token file beside the postback log's: ``igbutton.db`` -> ``igbutton.tokens.db``."""
    return sqlite_path.with_name(f"{sqlite_path.stem}.tokens.db")


class SqliteTokenStore:
    """TokenStore on one SQLite file (mode 0600). Build with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SqliteTokenStore:
        """Create the file (0600) and its table if needed."""
        store = cls(path)
        await asyncio.to_thread(store._create)
        return store

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the start, so the file is never readable by others, not even
        # for the moment between creating and chmod.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        os.chmod(self.path, FILE_MODE)
        with self._connect() as conn:
            conn.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    async def get(self, account_id: str) -> StoredToken | None:
        """See TokenStore.get."""
        return await asyncio.to_thread(self._get, account_id)

    def _get(self, account_id: str) -> StoredToken | None:
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT record, revision FROM account_tokens WHERE account_id = ?", (account_id,)
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        return StoredToken(TokenRecord.decode(row[0]), int(row[1]))

    async def put(self, account_id: str, record: TokenRecord, revision: int | None) -> int | None:
        """See TokenStore.put."""
        return await asyncio.to_thread(self._put, account_id, record, revision)

    def _put(self, account_id: str, record: TokenRecord, revision: int | None) -> int | None:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT revision FROM account_tokens WHERE account_id = ?", (account_id,)
            ).fetchone()
            current = None if row is None else int(row[0])
            if current != revision:
                conn.execute("ROLLBACK")
                return None
            new = 1 if current is None else current + 1
            conn.execute(
                "INSERT INTO account_tokens (account_id, record, revision) VALUES (?, ?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET record = excluded.record, "
                "revision = excluded.revision",
                (account_id, record.encode(), new),
            )
            conn.execute("COMMIT")
            return new
        finally:
            conn.close()

    async def close(self) -> None:
        """Nothing is held open between operations."""
