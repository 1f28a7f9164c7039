"""Which accounts' postbacks the webhook keeps, and the warning for the others.

Meta delivers a webhook for every account subscribed to the app, including ones this
deployment was never told about (an account added in the App Dashboard, another
environment's test account). Stored, their postbacks would reach every subscriber that
does not filter by account, so by default they are skipped and counted as
``unknown_account``; ``webhook.accept_unknown_accounts`` stores them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Set

from igbutton_server import logs

log = logging.getLogger(__name__)

MAX_REMEMBERED = 1024
"""How many unknown accounts are remembered as warned about. Past it, warnings for new
ones are rate limited instead: a flood of made-up ids cannot grow the memory or the log."""


class AccountCheck:
    """The configured accounts, and a WARNING the first time each unknown one is seen."""

    def __init__(self, accounts: Collection[str], *, accept_unknown: bool) -> None:
        self.known: Set[str] | None = None if accept_unknown else frozenset(accounts)
        """The accounts whose postbacks are kept; None keeps every account's."""
        self._warned: set[str] = set()
        self._overflow = logs.RateLimitedLog(log)

    def report(self, unknown: Collection[str]) -> None:
        """Log, once per account for the life of this object (one per process), that
        postbacks for ``unknown`` accounts were skipped."""
        for account in sorted(unknown):
            if account in self._warned:
                continue
            message = (
                "webhook postbacks for IG ID %.100s skipped: not a configured account "
                "(add it to accounts, or set webhook.accept_unknown_accounts)"
            )
            if len(self._warned) < MAX_REMEMBERED:
                self._warned.add(account)
                log.warning(message, account, extra={"kind": "unknown_account"})
            else:
                self._overflow.log(logging.WARNING, "unknown_account", message, account)
