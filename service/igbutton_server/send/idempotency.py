"""request_id idempotency (AIP-155): one send per request_id, its outcome replayed.

:class:`IdempotentSends` is the logic on top of the storage interface
(``igbutton_server.storage.idempotency``, one store per engine):
concurrent duplicates in one process wait on the first call's in-memory future, the first
call claims the request_id in the store, and its outcome is kept for the TTL unless it is a
failure the caller may retry (Meta did not act). A send that may have reached Meta is
never repeated: if it ends without an answer (time_left, dropped connection, cancelled
call, process crash) the request_id keeps SEND_OUTCOME_UNKNOWN.

A claim must say whether its request may have reached Meta. When the rate limiter has a
slot free at once, the slot is taken first and the claim is stored already marked written:
one durable write before Meta is called. Otherwise the claim is stored "not written" and
marked written (durably) just before the Graph client writes the request, once the limiter
let it go. A claim left by a crashed process (the store reports it abandoned) is answered at
once: SEND_OUTCOME_UNKNOWN if it was written, and taken over (the repeat sends) if it never
was.

The outcome is stored while the caller is answered (it shares the next claim's commit); the
in-flight entry answers repeats until it is durable. A crash before that leaves a written
claim: a repeat answers SEND_OUTCOME_UNKNOWN, never sends again.

When the store is unavailable a claim or a release may fail without the caller knowing
whether it landed (NATS applied a publish whose answer timed out; SQLite committed a claim
and then could not release it). Such request_ids are remembered (up to
``_UNSETTLED_MAX``): the next call for one first releases this process's pending claim,
which did not reach Meta or which Meta did not act on, so the retry the caller was told to
make sends instead of waiting out the claim's lease as "in progress". Likewise a claim of this
process found never written when claiming: no call of this process runs for the request_id
(one at a time, ``run``), so it is a failed call's that landed late.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server.errors import ApiError
from igbutton_server.logs import RateLimitedLog
from igbutton_server.send.outcome import Outcome, SendResult, SendTracker, is_final, outcome_unknown
from igbutton_server.storage.idempotency import ClaimLost, IdempotencyStore, Record
from igbutton_server.storage.postbacks import StorageUnavailable

log = logging.getLogger(__name__)
_unavailable_log = RateLimitedLog(log)
"""While the store is down every send would add a line: bounded (the store logs the cause)."""

R = errors_pb2.ErrorReason

# How long past its caller's deadline a claim stays "in progress" before a repeat treats
# the first attempt as dead (crashed mid-send) and answers SEND_OUTCOME_UNKNOWN.
LEASE_SLACK_SECONDS = 30.0
_POLL_SECONDS = 0.05
_OWN_RETAKES = 3
"""How often a claim releases a never written claim of this process before waiting on it."""
_UNSETTLED_MAX = 10_000
"""request_ids remembered as maybe claimed (see the module); beyond, the oldest is dropped
and its repeat waits for the claim's lease as after a crash."""


def fingerprint(account_id: str, body_json: str) -> str:
    """The request's identity for reuse checks: the account and the exact Graph body."""
    digest = hashlib.sha256()
    digest.update(account_id.encode())
    digest.update(b"\0")
    digest.update(body_json.encode())
    return digest.hexdigest()


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


class SendSlot(Protocol):
    """The rate-limit slot of one send, taken before its claim when it is free at once."""

    def take_now(self) -> bool:
        """Take the slot if it is free now, without waiting; False: take nothing."""
        ...

    def give_back(self) -> None:
        """Return the slot taken, unused (the request_id had a record already)."""
        ...


@dataclass
class _InFlight:
    fingerprint: str
    future: asyncio.Future[Outcome | None]
    storing: bool = False
    """The outcome is being stored after the caller was answered: the entry stays (and
    answers repeats) until it is durable."""


class IdempotentSends:
    """Runs a send at most once per request_id and replays its outcome."""

    def __init__(self, store: IdempotencyStore, ttl_seconds: float) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._in_flight: dict[str, _InFlight] = {}
        self._storing: set[asyncio.Future[None]] = set()
        """Outcomes being stored after their callers were answered."""
        self._unsettled: dict[str, None] = {}
        """request_ids that may hold a pending claim of this process whose call failed before
        writing to Meta (the claim may have landed after its error)."""

    async def run(
        self,
        key: str,
        fp: str,
        time_left: float,
        send: Callable[[SendTracker], Awaitable[SendResult]],
        slot: SendSlot | None = None,
    ) -> SendResult:
        """The outcome of the send for request_id ``key`` with fingerprint ``fp``.

        ``time_left`` is the caller's remaining time. Raises the ApiError the send ended with
        (or the first call's, or REQUEST_ID_REUSED). With a ``slot`` that is free at once,
        the claim is stored already marked written (one durable write instead of two) and
        the send's first attempt uses that slot; otherwise the claim is stored unwritten
        and marked written once the rate limiter lets the send go, so a crash while it
        waits lets a repeat send.
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
                outcome = await self._first(key, fp, time_left, send, entry, slot)
                shared_outcome = outcome
                return _raise_or_return(outcome)
            finally:
                if not entry.storing:
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
        slot: SendSlot | None,
    ) -> Outcome:
        claimed = await self._claim(key, fp, time_left, slot)
        if not isinstance(claimed, bool):
            return claimed
        ready = claimed

        async def mark_written() -> None:
            try:
                await self._store.mark_written(key)
            except ClaimLost:
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    R.ERROR_REASON_REQUEST_IN_PROGRESS,
                    "another call with this request_id took the send over; retry with the "
                    "same request_id",
                    metadata={"requestId": key},
                ) from None

        tracker = SendTracker(None if ready else mark_written, slot_taken=ready)
        try:
            result = await send(tracker)
        except ApiError as error:
            if is_final(error):
                self._keep_after_answer(key, fp, error, entry)
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
        self._keep_after_answer(key, fp, result, entry)
        return result

    def _keep_after_answer(self, key: str, fp: str, outcome: Outcome, entry: _InFlight) -> None:
        """Store the outcome while the caller is answered, not before.

        The claim (durable before Meta was called) already rules out a second send; the
        outcome only decides what a repeat is told. Until it is durable the in-flight entry
        stays and answers repeats in this process; if the process dies before (within one
        commit, at most about 20 ms on SQLite), a repeat is told SEND_OUTCOME_UNKNOWN, as
        for a crash while Meta was answering. So one send pays one fsync on the path to its
        answer (the claim), and its outcome shares the next claim's commit. The store's own
        future, not the caller's task: the caller's cancellation must not lose the record of
        a send that happened.
        """
        entry.future.set_result(outcome)
        entry.storing = True
        # A future of the store's, not a task: no coroutine to run per send.
        try:
            stored = self._store.complete_soon(key, fp, outcome, self._ttl)
        except Exception as exc:  # noqa: BLE001 - reported like a failed write, below
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(exc)
        self._storing.add(stored)

        def done(future: asyncio.Future[None]) -> None:
            self._storing.discard(future)
            if self._in_flight.get(key) is entry:
                del self._in_flight[key]
            if not future.cancelled() and (error := future.exception()) is not None:
                self._not_kept(key, error)

        stored.add_done_callback(done)

    async def flush(self) -> None:
        """Wait until every outcome being stored is durable (before the store closes)."""
        while self._storing:
            await asyncio.wait(set(self._storing))

    async def _claim(
        self, key: str, fp: str, time_left: float, slot: SendSlot | None
    ) -> bool | Outcome:
        """Claim the request_id: whether this call's claim is marked written (its rate-limit
        slot taken at once; it sends), or the outcome to answer (the first call's, or an
        error)."""
        lease = time_left + LEASE_SLACK_SECONDS
        deadline = time.monotonic() + time_left
        if key in self._unsettled:
            # Only this call runs for the key in this process (``run``), so a pending claim
            # of ours is the failed call's, and it did not reach Meta or Meta did not act.
            # Remembered until a claim of this call's own replaces it (the failed one may
            # still land).
            await self._store.release(key)
        retakes = 0
        while True:
            ready = slot is not None and slot.take_now()
            try:
                existing = await self._store.claim(key, fp, lease, self._ttl, written=ready)
            except BaseException as exc:
                if ready and slot is not None:
                    slot.give_back()
                if isinstance(exc, StorageUnavailable):
                    self._unsettle(key)
                raise
            if existing is None:
                self._unsettled.pop(key, None)
                return ready
            if ready and slot is not None:
                slot.give_back()
            if (
                existing.own
                and existing.outcome is None
                and not existing.written
                and existing.fingerprint == fp
                and retakes < _OWN_RETAKES
            ):
                # A claim of this process never written, and no call of it runs: a failed
                # call's, landed late (NATS applied a publish whose answer timed out).
                retakes += 1
                await self._store.release(key)
                continue
            outcome = await self._existing(key, fp, existing, deadline)
            if outcome is not None:
                return outcome
            # Abandoned before it was written: claim again (the store takes it over).

    async def _keep(self, key: str, fp: str, outcome: Outcome) -> None:
        try:
            await self._store.complete(key, fp, outcome, self._ttl)
        except Exception as exc:  # noqa: BLE001 - the send is over either way: logged
            self._not_kept(key, exc)

    @staticmethod
    def _not_kept(key: str, exc: BaseException) -> None:
        """Log an outcome that could not be stored: the send is over either way, and the
        caller still gets its outcome."""
        if isinstance(exc, StorageUnavailable):  # the cause is in the message; no trace
            _unavailable_log.log(
                logging.ERROR,
                "complete",
                "could not store the outcome of request_id %r: %s",
                key,
                exc,
            )
        else:
            log.error("could not store the outcome of request_id %r", key, exc_info=exc)

    async def _forget(self, key: str) -> None:
        try:
            await self._store.release(key)
        except StorageUnavailable as exc:
            # The next call for the key releases it first; the store's own log line and
            # readiness already say why.
            self._unsettle(key)
            _unavailable_log.log(
                logging.WARNING, "release", "could not release request_id %r: %s", key, exc
            )
        except Exception:
            # The claim stays until its lease ends; a repeat then answers SEND_OUTCOME_UNKNOWN,
            # the safe side.
            log.exception("could not release request_id %r", key)

    def _unsettle(self, key: str) -> None:
        self._unsettled[key] = None
        if len(self._unsettled) > _UNSETTLED_MAX:
            del self._unsettled[next(iter(self._unsettled))]

    async def _existing(self, key: str, fp: str, record: Record, deadline: float) -> Outcome | None:
        """The outcome for a repeat of an existing record; None: claim it again."""
        while True:
            if record.fingerprint != fp:
                raise request_id_reused(key)
            if record.outcome is not None:
                return record.outcome
            if record.abandoned and not record.written:
                return None
            if record.abandoned or record.lease_expires_at <= time.time():
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
