"""The send rate limit's shared state, as a storage engine keeps it for every replica.

Engine-neutral, like ``idempotency``: one small record per Instagram account, changed
only by an atomic read-modify-write, and holds (Meta throttled the account) announced to
every replica. ``nats.ratelimit`` keeps them in a JetStream KV bucket. SQLite serves one
process, whose in-process limiter needs no shared state. The algorithm on top (a token
bucket handed out in leases) is the send path's ``SharedRateLimiter``.

Times are wall-clock seconds since the epoch (the replicas' clocks are assumed in sync).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AccountRate:
    """The shared token bucket of one account (generic cell rate algorithm)."""

    next_free: float = 0.0
    """The theoretical arrival time of the next send (0: the bucket is full)."""
    held_until: float = 0.0
    """No send before this (Meta throttled the account)."""


HoldListener = Callable[[str, float], None]
"""Called with (account_id, held_until) when any replica holds an account."""


class RateLedger(Protocol):
    """Per-account rate state shared by every replica."""

    async def update(
        self, account_id: str, change: Callable[[AccountRate], AccountRate | None]
    ) -> AccountRate:
        """Apply ``change`` to the account's current state atomically (it may be called
        again on a newer state when another replica wrote first) and return what was
        written, or the state read when ``change`` returned None (nothing written).
        Raises StorageUnavailable when the ledger cannot be reached, OSError when the state
        keeps changing under it."""
        ...

    async def hold(self, account_id: str, until: float) -> None:
        """Hold the account until ``until`` (never shortens a hold) and announce it to
        every replica's listener."""
        ...

    def listen(self, listener: HoldListener) -> None:
        """Call ``listener`` for every hold announced, including those current at start."""
        ...

    def unready_reason(self) -> str | None:
        """None while the ledger can be reached, else a short reason (for /readyz)."""
        ...

    async def close(self) -> None:
        """Release the ledger's resources."""
        ...
