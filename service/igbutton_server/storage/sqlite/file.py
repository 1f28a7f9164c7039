"""One SQLite file and the threads that use it, shared by every store kept in it.

The postback log and the idempotency records live in the same file. Sharing its writer
thread means one process has one writer per file: concurrent claims and appends share a
transaction and its fsync (group commit), and no second connection waits on the file's
write lock. Each store attaches when it is built and releases when it closes; the last one
to close stops the threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from igbutton_server.storage.sqlite._threads import SqliteReaders, SqliteWriter

Schema = Callable[[sqlite3.Connection], None]
"""Creates a store's tables if they do not exist; run by the writer before its first job."""


class SqliteFile:
    """The writer (group commit) and the reader pool of one SQLite file."""

    def __init__(self, path: Path, schemas: Sequence[Schema]) -> None:
        self.path = path
        self._schemas = tuple(schemas)
        self.writer = SqliteWriter(path, self._create_tables)
        self.readers = SqliteReaders(path, writer=self.writer)
        self._started = False
        self._users = 0

    def _create_tables(self, conn: sqlite3.Connection) -> None:
        for schema in self._schemas:
            schema(conn)

    @property
    def commits(self) -> int:
        """Write transactions committed so far (several jobs, of any store, may share one)."""
        return self.writer.commits

    @property
    def jobs(self) -> int:
        """Writes of any store committed so far (each a job of one of the transactions)."""
        return self.writer.jobs

    def unready_reason(self) -> str | None:
        """None while the file takes writes, else why not (for /readyz)."""
        if not self._started:
            return None
        return self.writer.problem

    async def start(self) -> None:
        """Create the folder and the tables if needed and start the writer (once)."""
        await asyncio.to_thread(self.start_blocking)

    def start_blocking(self) -> None:
        """:meth:`start` for synchronous start-up code. Blocks."""
        if self._started:
            return
        self._started = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer.start_blocking()

    def attach(self) -> None:
        """A store now uses the file (until its :meth:`release`)."""
        self._users += 1

    async def release(self) -> None:
        """A store is done with the file; the last one closes the threads."""
        self._users -= 1
        if self._users == 0:
            await self.writer.close()
            await self.readers.close()
