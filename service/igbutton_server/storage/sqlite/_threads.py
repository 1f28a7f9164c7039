"""SQLite off the event loop: one writer thread with group commit, and a few reader threads.

SQLite allows one writer at a time and an fsync per commit is the expensive part, so one
thread owns the write connection and every write is a *job* queued to it. The thread takes
everything queued, runs each job in its own savepoint inside one transaction, commits once
(one fsync for the lot) and then resolves each caller's future. A job that fails rolls back
only its savepoint; a failed commit fails the whole batch. Readers use separate connections
(WAL lets them read while the writer writes) in a small thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from igbutton_server.storage.postbacks import StoreClosed

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH = 512
"""Jobs per transaction; bounds how long one commit holds the write lock."""
_BUSY_TIMEOUT_MS = 10_000
"""Other processes' connections to the same file may hold the lock."""


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT), WAL and durable commits."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns, so a 200 to Meta survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
    return conn


@dataclass
class _Job(Generic[T]):
    work: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    on_commit: Callable[[T], None] | None


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the job's effect stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SqliteWriter:
    """The one thread that writes; concurrent jobs share a transaction and its fsync."""

    def __init__(self, path: Path, setup: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._setup = setup
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._closed = False
        self.commits = 0
        """Transactions committed (each covering one or more jobs); for tests and metrics."""

    async def start(self) -> None:
        """Open the connection, run ``setup`` (the schema) and start taking jobs."""
        await asyncio.to_thread(self.start_blocking)

    def start_blocking(self) -> None:
        """:meth:`start` for synchronous start-up code. Blocks."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    async def run(
        self,
        work: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``work`` in the writer's next transaction; return once it is committed.

        ``on_commit`` runs on the event loop after the commit, even if the caller was
        cancelled meanwhile (the job's effect is durable either way).
        """
        if self._closed:
            raise StoreClosed("the store is closed")
        if not self._started.is_set():
            raise RuntimeError("the SQLite writer was not started")  # a job would wait forever
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, future, loop, on_commit))
        return await future

    async def close(self) -> None:
        """Finish every queued job, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.ident is not None:  # never started: nothing to wait for
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            conn = connect(self._path, readonly=False)
            self._setup(conn)
        except BaseException as exc:  # noqa: BLE001 - reported to start(), which raises it
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch: list[_Job[Any]] = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
                try:
                    self._commit(conn, batch)
                except Exception:  # never let the writer die: callers would wait forever
                    log.exception("SQLite writer failed on a batch")
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.work(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the job's caller
                    # A job's own failure (a bug, or a constraint) must not sink the batch.
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.exception("SQLite transaction failed; failing %d jobs", len(batch))
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            outcomes = [(job, None, exc) for job in batch]
        for job, result, error in outcomes:
            try:
                if error is None and job.on_commit is not None:
                    job.loop.call_soon_threadsafe(job.on_commit, result)
                job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
            except RuntimeError:  # the caller's loop is closed; nobody is waiting
                pass


class SqliteReaders:
    """A small pool of read-only connections used from worker threads."""

    def __init__(self, path: Path, size: int = 2) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="sqlite-reader")
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read in a worker thread and return its result."""
        if self._closed:
            raise StoreClosed("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, work)
        except RuntimeError as exc:  # the executor was shut down under us
            raise StoreClosed("the store is closed") from exc

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self._path, readonly=True)
            with self._lock:
                self._all.append(conn)
        try:
            return work(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._idle.put(conn)

    async def close(self) -> None:
        """Wait for reads in flight, then close every connection."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
