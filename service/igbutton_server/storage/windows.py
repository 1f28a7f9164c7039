"""The messaging window's record, as every storage engine must keep it: per (account,
person) the time of the person's last message to the business seen in the webhook.

Only the time is kept, never what was written. On NATS the record is a KV bucket every
replica shares (``<stream>_windows``), so a window opened by a webhook on one replica is
seen by the others; on SQLite a table in the one file. A record is kept for
``RECORD_TTL_SECONDS`` after the person's last message: longer than any window (7 days
with HUMAN_AGENT), so a window is known closed for three weeks after it closed, and
unknown after that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

RECORD_TTL_SECONDS = 30 * 24 * 3600
"""How long a person's last message time is kept."""

Person = tuple[str, str]
"""(account id, IGSID)."""


class WindowLedger(Protocol):
    """The last message time of each person, per account."""

    async def note(self, seen: Mapping[Person, int]) -> None:
        """Record these last message times (ms since the epoch); a time older than the
        one recorded is ignored (Meta may deliver late). Durable on return."""
        ...

    async def last_message_ms(self, account_id: str, person_id: str) -> int | None:
        """When the person last wrote to the account, or None if never seen (or longer
        ago than RECORD_TTL_SECONDS)."""
        ...

    async def prune(self) -> int:
        """Remove the records older than RECORD_TTL_SECONDS; return how many. Engines with
        native expiry (a KV bucket's max age) may do nothing and return 0."""
        ...

    async def close(self) -> None:
        """Release the engine."""
        ...
