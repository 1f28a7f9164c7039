"""The accounts' access tokens as igbutton refreshed them, kept for every replica.

Engine-neutral, like ``ratelimit``: one record per Instagram account, changed only by a
compare-and-set on its revision, so that of several replicas exactly one takes the lease
that lets it refresh, and every one then reads the refreshed token. ``sqlite.tokens`` keeps
the records in a file of their own, readable by its owner only (0600); ``nats.tokens`` in a
JetStream KV bucket that every replica watches. The token is a secret: an engine never logs
it, and a record's ``repr`` leaves it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class TokenRecord:
    """The token an account sends with now, and what igbutton knows about it."""

    token: str = field(repr=False)
    """The access token (a secret)."""
    seed_digest: str
    """SHA-256 (hex) of the configured token this one descends from: when the configured
    token changes, the record no longer matches and the configured token wins."""
    obtained_ms: int
    """When igbutton got this token: the refresh that issued it, or when the configured
    token was first seen (its age counts from then; Meta refreshes tokens a day old)."""
    expires_ms: int | None = None
    """When Meta said it expires (from the refresh answer); None until the first refresh."""
    refreshed_ms: int | None = None
    """When igbutton last refreshed the account's token successfully."""
    reauthorization_required: bool = False
    """Meta answered 190 for this token: it is dead until a person logs in again and a new
    token is configured."""
    lease_holder: str = ""
    """The replica refreshing the token now, if any."""
    lease_until_ms: int = 0
    """Until when that replica's lease holds (a crashed holder's lease runs out)."""
    failures: int = 0
    """Refreshes that failed in a row (not 190); the backoff grows with it."""
    retry_at_ms: int = 0
    """No replica tries to refresh again before this (the backoff after a failure)."""
    last_error: str = ""
    """Why the last refresh failed (Meta's message, tokens redacted); '' after a success."""

    def encode(self) -> bytes:
        """The record as JSON bytes, for the engines."""
        return json.dumps(
            {
                "token": self.token,
                "seed_digest": self.seed_digest,
                "obtained_ms": self.obtained_ms,
                "expires_ms": self.expires_ms,
                "refreshed_ms": self.refreshed_ms,
                "reauthorization_required": self.reauthorization_required,
                "lease_holder": self.lease_holder,
                "lease_until_ms": self.lease_until_ms,
                "failures": self.failures,
                "retry_at_ms": self.retry_at_ms,
                "last_error": self.last_error,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TokenRecord:
        """A record from :meth:`encode`'s bytes (ValueError, KeyError or TypeError if not)."""
        value = json.loads(raw)
        return cls(
            token=str(value["token"]),
            seed_digest=str(value["seed_digest"]),
            obtained_ms=int(value["obtained_ms"]),
            expires_ms=None if value.get("expires_ms") is None else int(value["expires_ms"]),
            refreshed_ms=None if value.get("refreshed_ms") is None else int(value["refreshed_ms"]),
            reauthorization_required=bool(value.get("reauthorization_required", False)),
            lease_holder=str(value.get("lease_holder", "")),
            lease_until_ms=int(value.get("lease_until_ms", 0)),
            failures=int(value.get("failures", 0)),
            retry_at_ms=int(value.get("retry_at_ms", 0)),
            last_error=str(value.get("last_error", "")),
        )


@dataclass(frozen=True)
class StoredToken:
    """A record and the revision it was read at (the compare-and-set's expectation)."""

    record: TokenRecord
    revision: int


class TokenStore(Protocol):
    """Per-account token records shared by every replica."""

    async def get(self, account_id: str) -> StoredToken | None:
        """The account's record, or None when there is none yet."""
        ...

    async def put(self, account_id: str, record: TokenRecord, revision: int | None) -> int | None:
        """Write the record if the account's record is still at ``revision`` (None: if
        there is none yet); its new revision, or None when another write came first."""
        ...

    async def close(self) -> None:
        """Release the store's resources."""
        ...
