"""What this replica saw of each account lately: its name and webhook fields at Meta, its
last postback, Meta's last usage headers and throttle. In memory, per replica: it is what
AccountService reports, not state anything depends on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Usage:
    """Meta's usage headers on one answer, verbatim."""

    app_usage: str
    business_use_case_usage: str
    received_ms: int


@dataclass
class Seen:
    """One account's recent activity."""

    username: str = ""
    subscribed_fields: list[str] = field(default_factory=list)
    subscription_checked_ms: int | None = None
    last_postback_ms: int | None = None
    usage: Usage | None = None
    hold_until: float = 0.0
    """Unix time until which Meta's throttle holds the account, as seen here."""
    hold_reason: str = ""


class AccountActivity:
    """Recent activity per account id."""

    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}

    def of(self, account_id: str) -> Seen:
        """The account's activity (empty for one never seen)."""
        seen = self._seen.get(account_id)
        if seen is None:
            seen = self._seen[account_id] = Seen()
        return seen

    def note_postbacks(self, account_ids: set[str]) -> None:
        """Postbacks of these accounts were stored just now."""
        now = int(time.time() * 1000)
        for account_id in account_ids:
            self.of(account_id).last_postback_ms = now

    def note_usage(self, account_id: str, app_usage: str | None, business: str | None) -> None:
        """A Graph answer for the account carried usage headers."""
        if app_usage or business:
            self.of(account_id).usage = Usage(
                app_usage or "", business or "", int(time.time() * 1000)
            )

    def note_hold(self, account_id: str, seconds: float, reason: str) -> None:
        """Meta throttled the account: sends wait ``seconds``."""
        seen = self.of(account_id)
        seen.hold_until = max(seen.hold_until, time.time() + seconds)
        seen.hold_reason = reason

    def note_subscription(self, account_id: str, fields: list[str]) -> None:
        """Meta reported these webhook fields for the account just now."""
        seen = self.of(account_id)
        seen.subscribed_fields = list(fields)
        seen.subscription_checked_ms = int(time.time() * 1000)
