"""request_id records (AIP-155), as every storage engine must keep them.

Engine-neutral, like ``postbacks``: the operations and their guarantees, and the record that
crosses the boundary. ``sqlite.idempotency`` keeps them in the SQLite file of the postback
log (one process); ``nats.idempotency`` in a JetStream KV bucket that every replica shares.
The logic on top (one send per request_id, outcomes replayed) is the send path's
``IdempotentSends``.

Times in a record are wall-clock seconds since the epoch; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from igbutton_server.send.outcome import Outcome


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
        """Create a pending record. None when created (the caller sends); else the existing one.

        Durable on return: once it returns None the claim survives a crash of the process,
        so the caller may call Meta."""
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
