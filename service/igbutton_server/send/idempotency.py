"""request_id idempotency (AIP-155): one send per request_id, its outcome replayed.

:class:`IdempotencyStore` is the storage interface (SQLite here; a NATS KV store can
implement the same four operations). :class:`IdempotentSends` is the logic on top:
concurrent duplicates in one process wait on the first call's in-memory future, the first
call claims the request_id in the store, and its outcome is kept for the TTL unless it is a
failure the caller may retry (Meta did not act). A send that may have reached Meta is
never repeated: if it ends without an answer (time_left, dropped connection, cancelled
call, process crash) the request_id keeps SEND_OUTCOME_UNKNOWN.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server.errors import ApiError
from igbutton_server.send.outcome import (
    Outcome,
    SendResult,
    SendTracker,
    dump_outcome,
    is_final,
    load_outcome,
    outcome_unknown,
)

log = logging.getLogger(__name__)

R = errors_pb2.ErrorReason
T = TypeVar("T")

# How long past its caller's deadline a claim stays "in progress" before a repeat treats
# the first attempt as dead (crashed mid-send) and answers SEND_OUTCOME_UNKNOWN.
LEASE_SLACK_SECONDS = 30.0
_POLL_SECONDS = 0.05


def fingerprint(account_id: str, body_json: str) -> str:
    """The request's identity for reuse checks: the account and the exact Graph body."""
    digest = hashlib.sha256()
    digest.update(account_id.encode())
    digest.update(b"\0")
    digest.update(body_json.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Record:
    """What a store holds for one request_id."""

    fingerprint: str
    outcome: Outcome | None
    """None while the first call is still sending."""
    lease_expires_at: float
    """Wall-clock time after which a pending record is presumed abandoned."""


class IdempotencyStore(Protocol):
    """Durable request_id records with a time to live. Expired records count as absent."""

    async def get(self, key: str) -> Record | None:
        """The record for the request_id, if any."""
        ...

    async def claim(
        self, key: str, fingerprint: str, lease_seconds: float, ttl_seconds: float
    ) -> Record | None:
        """Create a pending record. None when created (the caller sends); else the existing one."""
        ...

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """Keep the outcome of the request_id for ``ttl_seconds``."""
        ...

    async def release(self, key: str) -> None:
        """Forget a pending claim (nothing was sent, or the failure is retryable)."""
        ...

    async def close(self) -> None:
        """Release the store's resources."""
        ...


def request_id_reused(key: str) -> ApiError:
    """The error for a request_id already used for a different request."""
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        R.ERROR_REASON_REQUEST_ID_REUSED,
        f"request_id {key!r} was already used for a different request; use a new request_id",
        metadata={"requestId": key},
    )


def _raise_or_return(outcome: Outcome) -> SendResult:
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


@dataclass
class _InFlight:
    fingerprint: str
    future: asyncio.Future[Outcome | None]


class IdempotentSends:
    """Runs a send at most once per request_id and replays its outcome."""

    def __init__(self, store: IdempotencyStore, ttl_seconds: float) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._in_flight: dict[str, _InFlight] = {}

    async def run(
        self,
        key: str,
        fp: str,
        time_left: float,
        send: Callable[[SendTracker], Awaitable[SendResult]],
    ) -> SendResult:
        """The outcome of the send for request_id ``key`` with fingerprint ``fp``.

        ``time_left`` is the caller's remaining time. Raises the ApiError the send ended with
        (or the first call's, or REQUEST_ID_REUSED).
        """
        while True:
            running = self._in_flight.get(key)
            if running is not None:
                if running.fingerprint != fp:
                    raise request_id_reused(key)
                # shield: a waiter that gives up must not cancel the first call's future.
                shared = await asyncio.shield(running.future)
                if shared is None:
                    continue  # the first call ended without sending; try ourselves
                return _raise_or_return(shared)
            entry = _InFlight(fp, asyncio.get_running_loop().create_future())
            self._in_flight[key] = entry
            shared_outcome: Outcome | None = None
            try:
                outcome = await self._first(key, fp, time_left, send, entry)
                shared_outcome = outcome
                return _raise_or_return(outcome)
            finally:
                del self._in_flight[key]
                if not entry.future.done():
                    entry.future.set_result(shared_outcome)

    async def _first(
        self,
        key: str,
        fp: str,
        time_left: float,
        send: Callable[[SendTracker], Awaitable[SendResult]],
        entry: _InFlight,
    ) -> Outcome:
        lease = time_left + LEASE_SLACK_SECONDS
        existing = await self._store.claim(key, fp, lease, self._ttl)
        if existing is not None:
            return await self._existing(key, fp, existing, time.monotonic() + time_left)
        tracker = SendTracker()
        try:
            result = await send(tracker)
        except ApiError as error:
            if is_final(error):
                await asyncio.shield(self._keep(key, fp, error))
            else:
                await self._forget(key)
            return error
        except BaseException:
            # Cancelled (the caller went away) or a bug: only a request that may have
            # reached Meta is kept as unknown; otherwise a retry may send.
            if tracker.written:
                unknown = outcome_unknown("the call ended while Meta was answering")
                entry.future.set_result(unknown)
                await asyncio.shield(self._keep(key, fp, unknown))
            else:
                await asyncio.shield(self._forget(key))
            raise
        # Shielded: a cancellation now must not lose the record of a send that happened.
        await asyncio.shield(self._keep(key, fp, result))
        return result

    async def _keep(self, key: str, fp: str, outcome: Outcome) -> None:
        try:
            await self._store.complete(key, fp, outcome, self._ttl)
        except Exception:
            # The send is over either way; the caller still gets its outcome.
            log.exception("could not store the outcome of request_id %r", key)

    async def _forget(self, key: str) -> None:
        try:
            await self._store.release(key)
        except Exception:
            # The claim stays until its lease ends; a repeat then answers SEND_OUTCOME_UNKNOWN,
            # the safe side.
            log.exception("could not release request_id %r", key)

    async def _existing(self, key: str, fp: str, record: Record, deadline: float) -> Outcome:
        while True:
            if record.fingerprint != fp:
                raise request_id_reused(key)
            if record.outcome is not None:
                return record.outcome
            if record.lease_expires_at <= time.time():
                unknown = outcome_unknown("an earlier call with this request_id did not finish")
                await self._keep(key, fp, unknown)
                return unknown
            if time.monotonic() + _POLL_SECONDS >= deadline:
                return ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    R.ERROR_REASON_REQUEST_IN_PROGRESS,
                    "a send with this request_id is still in progress; retry with the same "
                    "request_id",
                    metadata={"requestId": key},
                )
            await asyncio.sleep(_POLL_SECONDS)
            found = await self._store.get(key)
            if found is None:  # released by its owner: nothing was sent, the caller may retry
                return ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    R.ERROR_REASON_REQUEST_IN_PROGRESS,
                    "an earlier call with this request_id failed without sending; retry",
                    metadata={"requestId": key},
                )
            record = found


_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    request_id       TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    outcome          TEXT,
    lease_expires_at REAL NOT NULL,
    expires_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expires_at ON idempotency (expires_at);
"""

_PRUNE_EVERY_SECONDS = 60.0


class SqliteIdempotencyStore:
    """IdempotencyStore in the table ``idempotency`` of a SQLite file (WAL mode).

    One connection, used only from one dedicated thread, so the event loop never
    blocks on the disk. Other parts of igbutton keep their own tables in the same file.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency-db")
        self._db: sqlite3.Connection | None = None
        self._last_prune = 0.0

    def open(self) -> None:
        """Open (and create) the database. Blocks; call at start-up."""
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        if self._db is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, timeout=10.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a claim must be on disk before Meta is called, or a crash could send twice.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            self._open()
            assert self._db is not None
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def get(self, key: str) -> Record | None:
        """See IdempotencyStore.get."""
        now = time.time()

        def read(db: sqlite3.Connection) -> Record | None:
            row = db.execute(
                "SELECT fingerprint, outcome, lease_expires_at FROM idempotency "
                "WHERE request_id = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            return _record(row)

        return await self._run(read)

    async def claim(
        self, key: str, fingerprint: str, lease_seconds: float, ttl_seconds: float
    ) -> Record | None:
        """See IdempotencyStore.claim."""
        now = time.time()

        def write(db: sqlite3.Connection) -> Record | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                if now - self._last_prune > _PRUNE_EVERY_SECONDS:
                    db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
                    self._last_prune = now
                else:
                    db.execute(
                        "DELETE FROM idempotency WHERE request_id = ? AND expires_at <= ?",
                        (key, now),
                    )
                inserted = db.execute(
                    "INSERT OR IGNORE INTO idempotency VALUES (?, ?, NULL, ?, ?)",
                    (key, fingerprint, now + lease_seconds, now + ttl_seconds),
                ).rowcount
                row = None
                if inserted == 0:
                    row = db.execute(
                        "SELECT fingerprint, outcome, lease_expires_at FROM idempotency "
                        "WHERE request_id = ?",
                        (key,),
                    ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return _record(row)

        return await self._run(write)

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """See IdempotencyStore.complete."""
        now = time.time()
        text = dump_outcome(outcome)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) "
                "DO UPDATE SET fingerprint = excluded.fingerprint, outcome = excluded.outcome, "
                "expires_at = excluded.expires_at",
                (key, fingerprint, text, now, now + ttl_seconds),
            )

        await self._run(write)

    async def release(self, key: str) -> None:
        """See IdempotencyStore.release."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM idempotency WHERE request_id = ? AND outcome IS NULL", (key,))

        await self._run(write)

    async def close(self) -> None:
        """Close the connection and stop the thread."""

        def shut(_: sqlite3.Connection | None = None) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def _record(row: tuple[str, str | None, float] | None) -> Record | None:
    if row is None:
        return None
    fp, outcome, lease = row
    return Record(fp, load_outcome(outcome) if outcome is not None else None, lease)
