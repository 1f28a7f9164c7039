"""igbutton's own per-account send rate limit, and Meta's throttling held per account.

A token bucket per Instagram account, kept as the generic cell rate algorithm (one
"theoretical arrival time" per account): a caller reserves the next free slot and sleeps
until it, but only when that slot comes before its deadline; otherwise it is told to come
back later (RESOURCE_EXHAUSTED with RetryInfo) without taking the slot. When Meta throttles
an account, :meth:`AccountRateLimiter.hold` stops every caller of that account until Meta's
estimate has passed, so a throttled account is not hammered by every waiting send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from igbutton_server.errors import RateLimited


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
