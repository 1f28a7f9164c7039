"""request_id records (AIP-155), as every storage engine must keep them.

Engine-neutral, like ``postbacks``: the operations and their guarantees, and the record that
crosses the boundary. ``sqlite.idempotency`` keeps them in the SQLite file of the postback
log (one process); ``nats.idempotency`` in a JetStream KV bucket that every replica shares.
The logic on top (one send per request_id, outcomes replayed) is the send path's
``IdempotentSends``.

Times in a record are wall-clock seconds since the epoch; durations are seconds.

Every store has an *owner* id, fresh for each process (each open store). A pending claim
carries its owner's id and whether its request may have been written to Meta (see
:meth:`IdempotencyStore.mark_written`). When the owner is gone (a crash: SQLite, a claim
of an earlier process on the file; NATS, a claim whose owner's heartbeat stopped) the claim
is *abandoned*: one never written is taken over by the next claim, so its repeat sends; one
written is answered SEND_OUTCOME_UNKNOWN at once, without waiting for its lease.
"""

from __future__ import annotations

import asyncio
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
    written: bool = True
    """Whether the request may have reached Meta (always True once there is an outcome)."""
    abandoned: bool = False
    """A pending claim whose owner process is gone: it will never get an outcome."""
    own: bool = False
    """A pending claim of this store (this process)."""


class ClaimLost(Exception):
    """The claim is no longer this store's: its owner was presumed gone and another call
    took it over. The request must not be written."""


class IdempotencyStore(Protocol):
    """Durable request_id records with a time to live. Expired records count as absent."""

    async def get(self, key: str) -> Record | None:
        """The record for the request_id, if any."""
        ...

    async def claim(
        self,
        key: str,
        fingerprint: str,
        lease_seconds: float,
        ttl_seconds: float,
        *,
        written: bool = False,
    ) -> Record | None:
        """Create a pending record owned by this store, not yet written (or, with
        ``written``, already marked as :meth:`mark_written` would: the caller writes to Meta
        at once, so one durable write serves both). None when created (the caller sends);
        else the existing one. An abandoned claim that was never written is taken over
        (None); an abandoned written one is returned with ``abandoned`` set.

        Durable on return: once it returns None the claim survives a crash of the process."""
        ...

    async def mark_written(self, key: str) -> None:
        """Record that the request of this store's claim is about to be written to Meta.
        Durable on return; the caller may write only then. Raises ClaimLost if the claim
        is no longer this store's."""
        ...

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """Keep the outcome of the request_id for ``ttl_seconds``; durable on return."""
        ...

    def complete_soon(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> asyncio.Future[None]:
        """:meth:`complete` without waiting: a future done once the outcome is durable (or
        failed). The write may wait a moment (SQLite: up to 20 ms) to share a durable
        write with the next claim instead of costing one of its own. Raises at once if
        the store cannot take it."""
        ...

    async def release(self, key: str) -> None:
        """Forget this store's pending claim (nothing was sent, or the failure is retryable);
        a claim another store took over stays."""
        ...

    def unready_reason(self) -> str | None:
        """None while the store can take claims, else a short reason (for /readyz)."""
        ...

    async def close(self) -> None:
        """Release the store's resources."""
        ...
