"""SQLite off the event loop: one writer thread with group commit, and a few reader threads.

SQLite allows one writer at a time and an fsync per commit is the expensive part, so one
thread owns the write connection and every write is a *job* queued to it. The thread takes
everything queued, runs each job in its own savepoint inside one transaction, commits once
(one fsync for the lot) and then resolves each caller's future. A job that fails rolls back
only its savepoint; a failed commit fails the whole batch. Readers use separate connections
(WAL lets them read while the writer writes) in a small thread pool.

Jobs of one kind that a single statement can do together (idempotency claims and outcomes,
appends, window notes: :class:`Merge`) run as one statement per batch when the batch holds
several, and a batch of nothing else runs that statement without BEGIN and COMMIT (SQLite
commits a statement outside a transaction by itself). Every statement hands the GIL to the
event loop and back (Python's sqlite3 releases it around each step), and under load the
event loop keeps it for up to the switch interval before the writer gets it again: a batch
of 30 jobs run one by one took milliseconds at the tail while the callers of all 30 waited
for its commit.

The writer keeps the file's health for readiness (:attr:`SqliteWriter.problem`): a failed
transaction (locked, full, read-only, corrupt) sets it and fails its jobs with
StorageUnavailable; while it is set, the writer probes with a small real write every
``_CHECK_SECONDS`` and clears it once one commits. Before every batch and every
``_CHECK_SECONDS`` it also compares the path's device and inode with the file it opened: a
file removed or replaced under it would take writes that nobody will ever read, so from
then on every job fails. A corrupt file (SQLite says so on a write or a read) does not heal
either: from then on every job and every read fails at once, until an operator restores the
file and restarts the process.

A storage fault raised inside a job (full, read-only, I/O, corrupt) fails the whole batch
like a failed commit, never as that job's own error: its callers get StorageUnavailable, not
SQLite's exception. The writer logs one ERROR line when the file's problem starts or
changes and one WARNING when it ends, not one per batch: a flood of webhooks during an
outage must not flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from igbutton_server.storage import together
from igbutton_server.storage.postbacks import StorageCorrupt, StorageUnavailable, StoreClosed

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH = 512
"""Jobs per transaction; bounds how long one commit holds the write lock."""
_BUSY_TIMEOUT_MS = 10_000
"""Other processes' connections to the same file may hold the lock (readers)."""
_WRITER_BUSY_TIMEOUT_MS = 1_000
"""How long the writer waits for a lock another process holds before failing its batch:
short, so sends fail fast and readiness shows it instead of callers waiting out deadlines."""
_LAZY_SECONDS = 0.02
"""How long a lazy job (an idempotent send's outcome, its caller already answered) waits
for a job that is not (the next send's claim, an append) to share a commit with."""
_GROUP_DELAY_SECONDS = 0.004
"""How long a batch of *patient* jobs (idempotency claims) waits for more before it commits,
when the batch before it had company (two or more jobs whose callers wait). Under
concurrency one commit then covers several times more claims: a commit's fsync costs about
170 µs of CPU on a small VM whatever the batch's size, the largest part of a claim's cost
(docs/performance.md). A caller alone (one job a batch) never waits; appends (a webhook
answer Meta waits for) never do."""
_TOGETHER_SECONDS = 0.02
"""How long a batch holding some of the writes made together (storage.together) waits for
the rest: they are queued microseconds apart unless the event loop is held up."""
_CHECK_SECONDS = 0.5
"""How often an idle writer checks its file (and, while it has a problem, probes it)."""
_PROBE = (
    "CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at REAL)",
    "INSERT OR REPLACE INTO storage_probe VALUES (1, julianday('now'))",
)


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT), WAL and durable commits."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    timeout = _BUSY_TIMEOUT_MS if readonly else _WRITER_BUSY_TIMEOUT_MS
    conn.execute(f"PRAGMA busy_timeout={timeout}")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    else:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns, so a 200 to Meta survives power loss.
        conn.execute("PRAGMA synchronous=FULL")
    return conn


class Merge(Protocol):
    """A kind of job that one statement can run for several at once (see
    :meth:`SqliteWriter.submit`)."""

    atomic: bool
    """Whether ``run_all`` runs one statement, whatever it writes (or, outside a
    transaction, returns None first): a batch of nothing but this kind's jobs then runs it
    outside a transaction, SQLite committing the statement by itself."""

    def run_all(self, conn: sqlite3.Connection, items: Sequence[Any]) -> list[Any] | None:
        """Run the jobs given by their ``items``, in the open transaction (or, for an
        ``atomic`` kind's batch of nothing else, outside one); each one's result, in order.
        None, or an exception from a statement that SQLite undid by itself (a constraint):
        nothing was written, and each job runs its own ``work`` instead. What this writes
        before the statement that failed must stand on its own."""
        ...


@dataclass
class _Job(Generic[T]):
    work: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    on_commit: Callable[[T], None] | None
    savepoint: bool = True
    lazy: bool = False
    patient: bool = False
    merge: Merge | None = None
    item: Any = None
    together: together.Together | None = None


def _tally(job: _Job[Any], owed: list[together.Together]) -> list[together.Together]:
    """``owed`` (the groups of writes made together that the batch has some of and awaits
    the rest of) once ``job`` is in the batch."""
    group = job.together
    if group is not None:
        group.seen += 1
        if group.seen < group.count and group not in owed:
            owed = [*owed, group]
    return [g for g in owed if g.seen < g.count]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the job's effect stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_Outcome = tuple[_Job[Any], Any, BaseException | None]
"""A job, and its result or its error."""


def _resolve_all(outcomes: list[_Outcome]) -> None:
    """On the callers' loop: each committed job's ``on_commit``, then every future, in order."""
    for job, result, error in outcomes:
        if error is None and job.on_commit is not None:
            try:
                job.on_commit(result)
            except Exception:  # one callback's bug must not leave the other callers waiting
                log.exception("SQLite on_commit callback failed")
        _resolve(job.future, result, error)


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
        self.jobs = 0
        """Jobs run in committed transactions; for tests and metrics."""
        self.problem: str | None = None
        """Why the file cannot take writes now (None: it can). Set and cleared by the thread."""
        self._identity: tuple[int, int] | None = None
        self._gone = False
        """The file was removed or replaced: permanent for this process."""
        self._corrupt = False
        """SQLite reported the file corrupt: permanent for this process."""
        self._lock = threading.Lock()
        """Guards ``problem`` changes made from reader threads (see :meth:`fault`)."""
        self._company = False
        """The last batch had two or more jobs whose callers wait (see _GROUP_DELAY_SECONDS)."""

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
        *,
        savepoint: bool = True,
        lazy: bool = False,
        patient: bool = False,
        merge: tuple[Merge, Any] | None = None,
    ) -> T:
        """Run ``work`` in the writer's next transaction; return once it is committed.
        See :meth:`submit`."""
        return await self.submit(
            work, on_commit, savepoint=savepoint, lazy=lazy, patient=patient, merge=merge
        )

    def submit(
        self,
        work: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
        *,
        savepoint: bool = True,
        lazy: bool = False,
        patient: bool = False,
        merge: tuple[Merge, Any] | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``work`` for the writer's next transaction: a future done once it is
        committed (or failed). Raises at once if the store cannot take it.

        ``on_commit`` runs on the event loop after the commit, even if the caller was
        cancelled meanwhile (the job's effect is durable either way). ``savepoint=False``
        saves the two statements of the job's own savepoint, for a job whose statements
        may stand each on its own if a later one fails (SQLite undoes a failed statement
        by itself): a single statement, say. A ``lazy`` job may wait up to
        ``_LAZY_SECONDS`` for a job that is not, to share its transaction (and fsync)
        instead of committing alone: for writes whose caller need not wait for them. A
        ``patient`` job's batch may wait ``_GROUP_DELAY_SECONDS`` for company under load.
        With ``merge=(kind, item)``, the batch's jobs of that kind run as one
        ``kind.run_all`` (one statement) when there are several, ``work`` being the job
        alone; such jobs run before the batch's others, so their order among the others
        must not matter (jobs on different keys).
        """
        if self._closed:
            raise StoreClosed("the store is closed")
        if not self._started.is_set():
            raise RuntimeError("the SQLite writer was not started")  # a job would wait forever
        if self._start_error is not None:
            # The thread reported why it could not open the file and ended: nobody would
            # ever take the job (a store closing after a failed start writes one).
            raise StoreClosed(f"the SQLite store did not open: {self._start_error}")
        if self._gone or self._corrupt:
            raise StorageUnavailable(f"SQLite store unavailable: {self.problem}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        kind, item = merge if merge is not None else (None, None)
        job = _Job(work, future, loop, on_commit, savepoint, lazy, patient, kind, item)
        job.together = together.current()
        self._queue.put(job)
        return future

    async def close(self) -> None:
        """Finish every queued job, then close the connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.ident is not None:  # never started: nothing to wait for
            await asyncio.to_thread(self._thread.join)

    def _open(self) -> sqlite3.Connection | None:
        """The write connection with the schema in place; None after reporting why not."""
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self._path, readonly=False)
            self._setup(conn)
            stat = os.stat(self._path)
            self._identity = (stat.st_dev, stat.st_ino)
        except sqlite3.DatabaseError as exc:
            # Not OperationalError (locked, cannot open): the file is not a database.
            if type(exc) is sqlite3.DatabaseError:
                self._start_error = StorageCorrupt(f"SQLite file {self._path} is corrupt: {exc}")
            elif isinstance(exc, sqlite3.OperationalError):
                # Read-only, full, locked, cannot be opened: one line for the operator.
                self._start_error = StorageUnavailable(
                    f"SQLite file {self._path} cannot be used: {_describe(self._path, exc)}"
                )
            else:
                self._start_error = exc
        except BaseException as exc:  # noqa: BLE001 - reported to start(), which raises it
            self._start_error = exc
        else:
            return conn
        if conn is not None:
            conn.close()
        self._started.set()
        return None

    def _run(self) -> None:
        conn = self._open()
        if conn is None:
            return
        self._started.set()
        try:
            stopping = False
            while not stopping:
                try:
                    first = self._queue.get(timeout=_CHECK_SECONDS)
                except queue.Empty:
                    self._check(conn)
                    continue
                if first is None:
                    break
                batch, stopping = self._gather(first)
                try:
                    if self._file_gone() or self._corrupt:
                        self._fail(
                            batch, StorageUnavailable(f"SQLite store unavailable: {self.problem}")
                        )
                    else:
                        self._commit(conn, batch)
                except Exception:  # never let the writer die: callers would wait forever
                    log.exception("SQLite writer failed on a batch")
        finally:
            conn.close()

    def _gather(self, first: _Job[Any]) -> tuple[list[_Job[Any]], bool]:
        """The batch that starts with ``first``: every job queued now; the rest of the
        writes made together with any of them, within ``_TOGETHER_SECONDS``; and if all of
        them are lazy, what comes within ``_LAZY_SECONDS`` until a job that is not. Whether
        the writer was told to stop meanwhile."""
        batch: list[_Job[Any]] = [first]
        lazy = first.lazy
        now = time.monotonic()
        until, owed_until = now + _LAZY_SECONDS, now + _TOGETHER_SECONDS
        delayed = not self._company
        owed = _tally(first, [])
        while len(batch) < _MAX_BATCH:
            try:
                if owed:
                    job = self._queue.get(timeout=max(0.0, owed_until - time.monotonic()))
                elif lazy:
                    job = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                if owed:  # the rest did not come in time: commit what is here
                    owed = []
                    continue
                if delayed or lazy or not all(j.patient or j.lazy for j in batch):
                    break
                # One sleep, then whatever came: one wake-up of this thread (and one
                # hand-over of the GIL), not one per job arriving.
                delayed = True
                time.sleep(_GROUP_DELAY_SECONDS)
                continue
            if job is None:
                return batch, True
            batch.append(job)
            lazy = lazy and job.lazy
            if job.together is not None:  # only such a job changes what is owed
                if not owed:
                    owed_until = time.monotonic() + _TOGETHER_SECONDS
                owed = _tally(job, owed)
        self._company = sum(1 for job in batch if not job.lazy) >= 2
        return batch, False

    def _file_gone(self) -> bool:
        """Whether the path no longer names the file the writer opened (checked each time
        until it is gone; then for good)."""
        if self._gone:
            return True
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            found = None
        else:
            found = (stat.st_dev, stat.st_ino)
        if found == self._identity:
            return False
        self._gone = True
        self.problem = f"the SQLite file {self._path} was removed or replaced while in use"
        log.error("%s; writes fail from now on, restart the process", self.problem)
        return True

    @property
    def corrupt(self) -> bool:
        """Whether SQLite reported the file corrupt (reads fail too)."""
        return self._corrupt

    def fault(self, exc: sqlite3.Error) -> StorageUnavailable | None:
        """If ``exc`` is a storage fault (see :func:`is_fault`), note it as the file's problem
        (logged when it starts or changes) and return the error for callers; else None.
        Safe from any thread (readers report theirs)."""
        if not is_fault(exc):
            return None
        with self._lock:
            if not self._gone and not self._corrupt:
                problem = _describe(self._path, exc)
                if _is_corrupt(exc):
                    self._corrupt = True
                    log.error(
                        "%s; reads and writes fail from now on: restore the file from a "
                        "backup (or remove it) and restart the process",
                        problem,
                    )
                elif problem != self.problem:
                    log.error("%s; failing writes until it takes one again", problem)
                self.problem = problem
        failure = StorageUnavailable(f"SQLite store unavailable: {self.problem}")
        failure.__cause__ = exc
        return failure

    def _check(self, conn: sqlite3.Connection) -> None:
        """Idle: notice a removed file; while there is a problem, probe with a real write."""
        if self._file_gone() or self._corrupt or self.problem is None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _PROBE:
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if self.fault(exc) is None:  # not a storage fault: still report why
                self.problem = _describe(self._path, exc)
        else:
            log.warning("the SQLite file %s takes writes again", self._path)
            self.problem = None

    def _fail(self, batch: list[_Job[Any]], error: BaseException) -> None:
        self._finish([(job, None, error) for job in batch])

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        outcomes, merge = self._alone(conn, batch)
        if outcomes is None:
            outcomes = self._transaction(conn, batch, merge=merge)
        self._finish(outcomes)

    def _alone(
        self, conn: sqlite3.Connection, batch: list[_Job[Any]]
    ) -> tuple[list[_Outcome] | None, bool]:
        """A batch of nothing but one atomic :class:`Merge` kind's jobs (say, only
        idempotency claims and outcomes, the send path's) as its one statement, without
        BEGIN and COMMIT: SQLite commits it by itself, as durably. Each statement is a
        hand-over of the GIL to the event loop and back, a wait of up to the switch interval
        under load: BEGIN, the statement and COMMIT are three, the statement alone one.

        The outcomes, or None, and whether the batch's transaction may still merge: None
        and True for any other batch, None and False when the statement met a constraint
        (SQLite undid it; each job then finds out for itself)."""
        kind = batch[0].merge
        if kind is None or not kind.atomic or any(job.merge is not kind for job in batch):
            return None, True
        try:
            results = kind.run_all(conn, [job.item for job in batch])
        except Exception as exc:  # noqa: BLE001 - SQLite's, or a bug in a Merge: the batch fails
            if isinstance(exc, sqlite3.Error) and not is_fault(exc) and not conn.in_transaction:
                return None, False
            failure = self._failed(conn, exc, len(batch))
            return [(job, None, failure) for job in batch], False
        if results is None:
            return None, True
        self._committed(len(batch))
        return [(job, result, None) for job, result in zip(batch, results, strict=True)], False

    def _transaction(
        self, conn: sqlite3.Connection, batch: list[_Job[Any]], *, merge: bool
    ) -> list[_Outcome]:
        """Run the batch in one transaction (its jobs of a kind as one statement if
        ``merge``): each job's outcome, or the batch's failure."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            outcomes = self._jobs(conn, batch) if merge else [self._job(conn, j) for j in batch]
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - SQLite's, or a bug in a Merge: the batch fails
            failure = self._failed(conn, exc, len(batch))
            return [(job, None, failure) for job in batch]
        self._committed(len(batch))
        return outcomes

    def _committed(self, jobs: int) -> None:
        self.commits += 1
        self.jobs += jobs
        if self.problem is not None:
            log.warning("the SQLite file %s takes writes again", self._path)
            self.problem = None

    def _failed(self, conn: sqlite3.Connection, exc: Exception, jobs: int) -> BaseException:
        """Roll a failed transaction back; the error for its jobs."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback:  # the first error is the one that matters
                log.warning("rollback after %r failed: %r", exc, rollback)
        if not isinstance(exc, sqlite3.Error):  # a bug of ours: logged with its trace
            log.error("SQLite writer failed on a batch; failing %d jobs", jobs, exc_info=exc)
            failure = StorageUnavailable("SQLite store unavailable: the writer failed (logged)")
        elif (fault := self.fault(exc)) is not None:
            return fault
        else:  # a bug in SQL of ours, not the file: logged with its trace
            log.error("SQLite transaction failed; failing %d jobs", jobs, exc_info=exc)
            failure = StorageUnavailable(f"SQLite store unavailable: {_describe(self._path, exc)}")
        failure.__cause__ = exc
        return failure

    def _jobs(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[_Outcome]:
        """Run the batch's jobs in the open transaction: those of a :class:`Merge` kind
        with company as one ``run_all`` each, then every other one by itself."""
        if len(batch) == 1:  # a caller alone: nothing to merge
            return [self._job(conn, batch[0])]
        kinds: dict[Merge, list[_Job[Any]]] = {}
        for job in batch:
            if job.merge is not None:
                kinds.setdefault(job.merge, []).append(job)
        merged: dict[int, _Outcome] = {}
        for kind, jobs in kinds.items():
            if len(jobs) < 2:
                continue
            results = self._merged(conn, kind, jobs)
            if results is not None:
                for job, result in zip(jobs, results, strict=True):
                    merged[id(job)] = (job, result, None)
        return [merged.get(id(job)) or self._job(conn, job) for job in batch]

    @staticmethod
    def _merged(conn: sqlite3.Connection, kind: Merge, jobs: list[_Job[Any]]) -> list[Any] | None:
        """``kind.run_all`` for ``jobs``; None: each runs by itself instead."""
        try:
            return kind.run_all(conn, [job.item for job in jobs])
        except sqlite3.Error as exc:
            if not conn.in_transaction or is_fault(exc):
                raise  # the batch fails, as in _job
            return None  # the statement was undone; each job finds out for itself

    @staticmethod
    def _job(conn: sqlite3.Connection, job: _Job[Any]) -> _Outcome:
        """Run one job of the open transaction, in its own savepoint unless it has none."""
        if job.savepoint:
            conn.execute("SAVEPOINT job")
        try:
            result = job.work(conn)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and (not conn.in_transaction or is_fault(exc)):
                # SQLite rolled the whole transaction back, or the file cannot take writes
                # (full, read-only, I/O, corrupt): the batch fails, not the job.
                raise
            # A job's own failure (a bug, or a constraint) must not sink the batch.
            if job.savepoint:
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error:
                    raise exc from None  # the job's error is the one to report
            return (job, None, exc)
        if job.savepoint:
            conn.execute("RELEASE job")
        return (job, result, None)

    def _finish(self, outcomes: list[_Outcome]) -> None:
        # One wake-up of each event loop for the whole batch, not one per job.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, done in by_loop.items():
            # RuntimeError: the caller's loop is closed; nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, done)


_FAULT_WORDS = ("locked", "busy", "full", "readonly", "read-only", "disk i/o", "malformed")


def fits(conn: sqlite3.Connection, values: int) -> bool:
    """Whether one statement of ``conn`` may bind that many values (a Merge's statement)."""
    return values <= conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    # Plain DatabaseError is SQLITE_CORRUPT / SQLITE_NOTADB ("file is not a database").
    return type(exc) is sqlite3.DatabaseError or "malformed" in str(exc)


def is_fault(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error is the file's (locked, full, read-only, I/O, corrupt), not
    the statement's (a constraint, a bug)."""
    if _is_corrupt(exc):
        return True
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in _FAULT_WORDS
    )


def _describe(path: Path, exc: sqlite3.Error) -> str:
    """A short reason for readiness and for callers, from SQLite's error."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        what = "is locked by another connection"
    elif "full" in text:
        what = "cannot take writes: the disk is full"
    elif "readonly" in text or "read-only" in text:
        what = "is read-only"
    elif _is_corrupt(exc):
        what = "is corrupt"
    elif "disk i/o" in text.lower():
        what = "cannot be read or written (disk I/O error)"
    else:
        what = "cannot take writes"
    return f"the SQLite file {path} {what} ({text})"


class SqliteReaders:
    """A small pool of read-only connections used from worker threads. With the file's
    writer, a storage fault on a read is the file's problem too (see SqliteWriter.fault),
    and reads of a file known to be corrupt fail at once."""

    def __init__(self, path: Path, size: int = 2, writer: SqliteWriter | None = None) -> None:
        self._path = path
        self._writer = writer
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="sqlite-reader")
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read in a worker thread and return its result."""
        if self._closed:
            raise StoreClosed("the store is closed")
        if self._writer is not None and self._writer.corrupt:
            raise StorageUnavailable(f"SQLite store unavailable: {self._writer.problem}")
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
        except sqlite3.Error as exc:
            failure = None if self._writer is None else self._writer.fault(exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # never mask the read's own error
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
