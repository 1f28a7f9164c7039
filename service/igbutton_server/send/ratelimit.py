"""igbutton's own per-account send rate limit, and Meta's throttling held per account.

A token bucket per Instagram account, kept as the generic cell rate algorithm (one
"theoretical arrival time" per account): a caller reserves the next free slot and sleeps
until it, but only when that slot comes before its deadline; otherwise it is told to come
back later (RESOURCE_EXHAUSTED with RetryInfo) without taking the slot. When Meta throttles
an account, :meth:`AccountRateLimiter.hold` stops every caller of that account until Meta's
estimate has passed, so a throttled account is not hammered by every waiting send.

With several replicas (the NATS backend) :class:`SharedRateLimiter` keeps the bucket and
the holds in a shared RateLedger instead, so the configured rate is the account's, not
each process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from igbutton_server.errors import RateLimited
from igbutton_server.logs import RateLimitedLog
from igbutton_server.storage.postbacks import StorageUnavailable
from igbutton_server.storage.ratelimit import AccountRate, RateLedger

log = logging.getLogger(__name__)
_unreachable_log = RateLimitedLog(log)
"""One line per failed send would flood the log while NATS is down."""

_STALE_SECONDS = 1.0
"""The least time a leased token stays usable after its send time: longer than a lease's
round trip, or a fast account's tokens would be stale on arrival. A replica holds at most
one lease, so a late token never adds more than one lease to a burst."""

_SHARE_HOLD_SECONDS = 10.0
"""How long sharing a hold with the other replicas may take."""


@dataclass
class _Bucket:
    interval: float
    """Seconds per send (1 / rate)."""
    tolerance: float
    """How far ahead of schedule a burst may run: (burst - 1) * interval."""
    next_free: float = float("-inf")
    """The theoretical arrival time of the next send."""
    held_until: float = float("-inf")
    """No send before this (Meta throttled the account)."""


class AccountRateLimiter:
    """Per-account token buckets on one clock (the event loop's monotonic time by default)."""

    def __init__(
        self,
        default_rate: float,
        burst: int,
        rates: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._default_rate = default_rate
        self._burst = burst
        self._rates = dict(rates or {})
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, account_id: str) -> _Bucket:
        bucket = self._buckets.get(account_id)
        if bucket is None:
            rate = self._rates.get(account_id, self._default_rate)
            interval = 1.0 / rate
            bucket = _Bucket(interval=interval, tolerance=(self._burst - 1) * interval)
            self._buckets[account_id] = bucket
        return bucket

    def reserve(self, account_id: str, deadline: float) -> float:
        """Take the next slot and return how long to wait for it, or raise RateLimited.

        ``deadline`` is on the limiter's clock. Nothing is taken when the slot comes after
        the deadline, so a caller that gives up leaves the slot to others.
        """
        bucket = self._bucket(account_id)
        now = self._clock()
        start = max(now, bucket.next_free - bucket.tolerance, bucket.held_until)
        if start > deadline:
            wait = start - now
            if bucket.held_until >= start:
                message = f"account {account_id} is throttled by Meta; retry in {wait:.1f} s"
            else:
                message = f"send rate limit of account {account_id} reached; retry in {wait:.2f} s"
            raise RateLimited(message, retry_after=wait, metadata={"accountId": account_id})
        bucket.next_free = max(bucket.next_free, start) + bucket.interval
        return start - now

    async def acquire(self, account_id: str, deadline: float) -> None:
        """Wait for a send slot of the account, if the wait ends before ``deadline``.

        Raises RateLimited (with ``retry_after``) when it would not.
        """
        wait = self.reserve(account_id, deadline)
        if wait > 0:
            await asyncio.sleep(wait)

    def take_now(self, account_id: str) -> bool:
        """Take a send slot of the account if one is free now, without waiting; else take
        nothing. (An idempotent send that gets one claims its request_id as written.)"""
        bucket = self._bucket(account_id)
        now = self._clock()
        start = max(now, bucket.next_free - bucket.tolerance, bucket.held_until)
        if start > now:
            return False
        bucket.next_free = max(bucket.next_free, start) + bucket.interval
        return True

    def give_back(self, account_id: str) -> None:
        """Return a slot :meth:`take_now` took and nothing used (the send was a repeat)."""
        bucket = self._bucket(account_id)
        bucket.next_free -= bucket.interval

    def hold(self, account_id: str, seconds: float) -> None:
        """Let no send of the account start for ``seconds`` (Meta throttled it)."""
        bucket = self._bucket(account_id)
        bucket.held_until = max(bucket.held_until, self._clock() + max(seconds, 0.0))

    def held_for(self, account_id: str) -> float:
        """Seconds the account is still held back by Meta's throttling (0 when not)."""
        bucket = self._buckets.get(account_id)
        if bucket is None:
            return 0.0
        return max(0.0, bucket.held_until - self._clock())


@dataclass
class _Leased:
    """One account's tokens leased from the shared bucket, as send times (wall clock)."""

    slots: deque[float] = field(default_factory=deque)
    held_until: float = 0.0
    leasing: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One lease at a time per account: the other callers wait for its tokens."""


class SharedRateLimiter(AccountRateLimiter):
    """The per-account token bucket shared by every replica through a RateLedger.

    The bucket itself lives in the ledger (one generic-cell-rate state per account). A
    replica takes ``lease`` tokens at a time (``lease_fraction`` of the account's rate
    per second, at least one) with one compare-and-set, as send times, and hands them to
    its callers in order; so most sends cost no round trip to the ledger. A token whose
    time passed by more than one lease's span (at least a second) is dropped unused; a
    replica leases only when it has none left, so no burst exceeds the configured one by
    more than one lease per replica. Holds are shared
    the same way: one replica's hold reaches the others through the ledger's listener,
    and every lease honours the hold stored with the bucket.
    """

    def __init__(
        self,
        ledger: RateLedger,
        default_rate: float,
        burst: int,
        rates: dict[str, float] | None = None,
        lease_fraction: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(default_rate, burst, rates, clock)
        if not 0 < lease_fraction <= 1:
            raise ValueError("lease_fraction must be in (0, 1]")
        self._ledger = ledger
        self._lease_fraction = lease_fraction
        self._leased: dict[str, _Leased] = {}
        self._sharing: set[asyncio.Task[None]] = set()
        ledger.listen(self._held_elsewhere)

    def lease_size(self, account_id: str) -> int:
        """How many tokens one lease of the account takes."""
        rate = self._rates.get(account_id, self._default_rate)
        return max(1, round(rate * self._lease_fraction))

    def _account(self, account_id: str) -> _Leased:
        leased = self._leased.get(account_id)
        if leased is None:
            leased = self._leased[account_id] = _Leased()
        return leased

    def reserve(self, account_id: str, deadline: float) -> float:
        """Not available: a shared slot needs a round trip (use :meth:`acquire`)."""
        raise NotImplementedError("the shared limiter hands out slots in acquire() only")

    async def acquire(self, account_id: str, deadline: float) -> None:
        """Wait for a send slot of the account, if the wait ends before ``deadline``
        (time.monotonic()). Raises RateLimited (with ``retry_after``) when it would not,
        and StorageUnavailable when the ledger cannot be reached or does not answer before
        the deadline (nothing was sent)."""
        leased = self._account(account_id)
        bucket = self._bucket(account_id)
        while True:
            now = self._clock()
            until = now + (deadline - time.monotonic())
            if leased.held_until > until:
                raise _refused(account_id, leased.held_until - now, throttled=True)
            slots = self._usable(account_id, leased, now)
            if slots:
                if slots[0] > until:
                    raise _refused(account_id, slots[0] - now, throttled=False)
                wait = slots.popleft() - now
                if wait > 0:
                    await asyncio.sleep(wait)
                return
            if leased.leasing.locked():
                # Another caller is leasing: wait for it, then take from its tokens.
                async with self._bounded(account_id, deadline), leased.leasing:
                    continue
            async with leased.leasing, self._bounded(account_id, deadline):
                await self._lease(account_id, bucket, leased, until)

    def take_now(self, account_id: str) -> bool:
        """Take a leased token whose time has come, without a round trip; else nothing."""
        leased = self._account(account_id)
        now = self._clock()
        slots = self._usable(account_id, leased, now)
        if not slots or slots[0] > now or leased.held_until > now:
            return False
        slots.popleft()
        return True

    def _usable(self, account_id: str, leased: _Leased, now: float) -> deque[float]:
        """The account's leased tokens, less those gone stale or voided by a hold."""
        stale = now - max(
            self.lease_size(account_id) * self._bucket(account_id).interval, _STALE_SECONDS
        )
        slots = leased.slots
        while slots and (slots[0] < stale or slots[0] < leased.held_until):
            slots.popleft()
        return slots

    def give_back(self, account_id: str) -> None:
        """Return a token :meth:`take_now` took and nothing used, to be taken next."""
        self._account(account_id).slots.appendleft(self._clock())

    @contextlib.asynccontextmanager
    async def _bounded(self, account_id: str, deadline: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout_at(
                asyncio.get_running_loop().time() + (deadline - time.monotonic())
            ):
                yield
        except TimeoutError:
            raise StorageUnavailable(
                f"the shared rate limit of account {account_id} did not answer before the "
                "deadline; nothing was sent"
            ) from None

    async def _lease(self, account_id: str, bucket: _Bucket, leased: _Leased, until: float) -> None:
        """Take the next lease of tokens from the shared bucket into ``leased.slots``."""
        count = self.lease_size(account_id)
        taken: list[float] = []
        first: list[float] = []

        def take(state: AccountRate) -> AccountRate | None:
            taken.clear()
            first.clear()
            now = self._clock()
            start = max(now, state.next_free - bucket.tolerance, state.held_until)
            first.append(start)
            if start > until:
                return None
            next_free = state.next_free
            for _ in range(count):
                slot = max(now, next_free - bucket.tolerance, state.held_until)
                taken.append(slot)
                next_free = max(next_free, slot) + bucket.interval
            return replace(state, next_free=next_free)

        try:
            state = await self._ledger.update(account_id, take)
        except (StorageUnavailable, OSError) as exc:
            _unreachable_log.log(
                logging.WARNING, "ledger", "the shared rate limit is not reachable: %s", exc
            )
            raise StorageUnavailable(
                f"the shared rate limit of account {account_id} is not reachable ({exc}); "
                "nothing was sent"
            ) from exc
        leased.held_until = max(leased.held_until, state.held_until)
        if not taken:
            now = self._clock()
            throttled = state.held_until >= first[0]
            raise _refused(account_id, first[0] - now, throttled=throttled)
        leased.slots.extend(taken)

    def hold(self, account_id: str, seconds: float) -> None:
        """Let no send of the account start for ``seconds``, on every replica."""
        until = self._clock() + max(seconds, 0.0)
        self._held_elsewhere(account_id, until)
        task = asyncio.get_running_loop().create_task(self._share_hold(account_id, until))
        self._sharing.add(task)
        task.add_done_callback(self._sharing.discard)

    async def _share_hold(self, account_id: str, until: float) -> None:
        try:
            async with asyncio.timeout(_SHARE_HOLD_SECONDS):
                await self._ledger.hold(account_id, until)
        except Exception:  # the hold still applies here; the others learn at their next lease
            log.warning("could not share the hold of account %s", account_id, exc_info=True)

    def _held_elsewhere(self, account_id: str, until: float) -> None:
        leased = self._account(account_id)
        if until > leased.held_until:
            leased.held_until = until
            leased.slots.clear()  # tokens before the hold's end are void

    def held_for(self, account_id: str) -> float:
        """Seconds the account is still held back by Meta's throttling (0 when not)."""
        leased = self._leased.get(account_id)
        if leased is None:
            return 0.0
        return max(0.0, leased.held_until - self._clock())

    async def close(self) -> None:
        """Wait (briefly) for holds still being shared."""
        if self._sharing:
            await asyncio.wait(set(self._sharing), timeout=_SHARE_HOLD_SECONDS)


def _refused(account_id: str, wait: float, *, throttled: bool) -> RateLimited:
    if throttled:
        message = f"account {account_id} is throttled by Meta; retry in {wait:.1f} s"
    else:
        message = f"send rate limit of account {account_id} reached; retry in {wait:.2f} s"
    return RateLimited(message, retry_after=max(wait, 0.0), metadata={"accountId": account_id})
