"""The sandbox's accounts: the tokens it issued, their refreshes, and webhook subscriptions.

Meta's rules as the sandbox plays them (instagram-platform.md, Meta's Refresh Access Token
reference): a long-lived Instagram User token is valid for 60 days (``lifetime_seconds``);
``GET /refresh_access_token?grant_type=ig_refresh_token`` refreshes one that is at least 24
hours old (``min_refresh_age_seconds``) and not expired, answering ``{"access_token",
"token_type": "bearer", "expires_in"}``, and the new token is valid for the lifetime from then.
The old token stays valid until its own expiry. An expired or revoked token answers Graph
code 190 on every call. ``GET/POST me/subscribed_apps`` read and replace the webhook fields the
account is subscribed to.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from igbutton_server.sandbox.graph_rules import GraphError, bad_token, graph_error

DEFAULT_LIFETIME_SECONDS = 60 * 24 * 3600
"""Meta: long-lived Instagram User tokens are valid for 60 days."""
DEFAULT_MIN_REFRESH_AGE_SECONDS = 24 * 3600
"""Meta: a token can be refreshed once it is at least 24 hours old."""

WEBHOOK_FIELDS = frozenset(
    {
        "messages",
        "messaging_postbacks",
        "messaging_seen",
        "message_reactions",
        "messaging_referral",
        "messaging_optins",
        "messaging_handover",
        "standby",
        "comments",
        "live_comments",
        "mentions",
        "story_insights",
    }
)
"""The Instagram webhook fields the sandbox accepts in ``subscribed_fields``."""

SANDBOX_APP_ID = "1000000000000001"
SANDBOX_APP_NAME = "igbutton sandbox app"


@dataclass
class IssuedToken:
    """A token the sandbox accepts, and what it knows about it (never the token itself)."""

    account_id: str
    generation: int
    """0 for a seeded token, then 1, 2, ... for each refresh of the account."""
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class AccountState:
    """One sandbox account: its username, webhook fields and how often it was refreshed."""

    username: str
    subscribed_fields: list[str] = field(default_factory=list)
    refreshes: int = 0
    """Successful refresh_access_token calls for this account."""
    refresh_calls: int = 0
    """Every refresh_access_token call that named one of this account's tokens."""
    generation: int = 0


class TokenRegistry:
    """Tokens by value, accounts by id; ``clock`` is ``time.time`` unless a test says."""

    def __init__(
        self,
        *,
        lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
        min_refresh_age_seconds: float = DEFAULT_MIN_REFRESH_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime_seconds = lifetime_seconds
        self.min_refresh_age_seconds = min_refresh_age_seconds
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}
        self.accounts: dict[str, AccountState] = {}

    @property
    def empty(self) -> bool:
        """No token was registered: the sandbox then accepts any non-empty token."""
        return not self._tokens

    def seed(self, tokens: Mapping[str, str], *, age_seconds: float = 0.0) -> None:
        """Accept exactly these tokens (account id -> token), issued ``age_seconds`` ago."""
        self._tokens.clear()
        now = self._clock()
        for account_id, token in tokens.items():
            self.add(account_id, token, issued_at=now - age_seconds)

    def add(self, account_id: str, token: str, *, issued_at: float | None = None) -> None:
        """Accept one more token for an account (a person who logged in again)."""
        state = self.account(account_id)
        issued = self._clock() if issued_at is None else issued_at
        self._tokens[token] = IssuedToken(
            account_id, state.generation, issued, issued + self.lifetime_seconds
        )

    def account(self, account_id: str) -> AccountState:
        """The account's state, created on first use."""
        state = self.accounts.get(account_id)
        if state is None:
            state = self.accounts[account_id] = AccountState(username=f"sandbox_{account_id}")
        return state

    def issued(self) -> list[str]:
        """Every token the sandbox accepts or accepted (for tests that look for leaks)."""
        return list(self._tokens)

    def lookup(self, token: str | None) -> IssuedToken | None:
        """The issued token with this value, compared in constant time per candidate."""
        if not token:
            return None
        found: IssuedToken | None = None
        given = token.encode()
        for value, issued in self._tokens.items():
            if hmac.compare_digest(value.encode(), given):
                found = issued
        return found

    def check(self, token: str | None) -> IssuedToken | GraphError:
        """The token's record when it is usable now, else Meta's 190 answer."""
        issued = self.lookup(token)
        if issued is None:
            return invalid_token()
        if issued.revoked:
            return revoked_token()
        now = self._clock()
        if now >= issued.expires_at:
            return expired_token(issued.expires_at, now)
        return issued

    def refresh(self, token: str | None) -> tuple[str, int] | GraphError:
        """A new token and its ``expires_in``, or Meta's error for this token."""
        found = self.check(token)
        if isinstance(found, GraphError):
            return found
        state = self.account(found.account_id)
        state.refresh_calls += 1
        now = self._clock()
        if now - found.issued_at < self.min_refresh_age_seconds:
            return too_young()
        state.generation += 1
        state.refreshes += 1
        new = "IGAA" + secrets.token_urlsafe(32)
        self._tokens[new] = IssuedToken(
            found.account_id, state.generation, now, now + self.lifetime_seconds
        )
        return new, int(self.lifetime_seconds)

    def revoke(self, account_id: str) -> None:
        """Make every token of the account answer 190, as after a password change."""
        for issued in self._tokens.values():
            if issued.account_id == account_id:
                issued.revoked = True

    def subscribe(self, account_id: str, fields: str | None) -> GraphError | None:
        """Replace the account's webhook fields with a comma-separated list."""
        names = [f.strip() for f in (fields or "").split(",") if f.strip()]
        if not names:
            return graph_error(100, "The parameter subscribed_fields is required.")
        unknown = sorted(set(names) - WEBHOOK_FIELDS)
        if unknown:
            return graph_error(
                100, f"Param subscribed_fields must be one of {sorted(WEBHOOK_FIELDS)}: {unknown}"
            )
        self.account(account_id).subscribed_fields = list(dict.fromkeys(names))
        return None


def invalid_token() -> GraphError:
    """190: a token Meta cannot parse or never issued (the sandbox's usual answer)."""
    return bad_token()


def expired_token(expired_at: float, now: float) -> GraphError:
    """190/463: Meta's answer to an expired token."""
    when = time.strftime("%A, %d-%b-%y %H:%M:%S", time.gmtime(expired_at))
    current = time.strftime("%A, %d-%b-%y %H:%M:%S", time.gmtime(now))
    return GraphError(
        code=190,
        subcode=463,
        message=(
            f"Error validating access token: Session has expired on {when} PST. "
            f"The current time is {current} PST."
        ),
        type="OAuthException",
    )


def revoked_token() -> GraphError:
    """190/460: the token was invalidated (password changed, app removed)."""
    return GraphError(
        code=190,
        subcode=460,
        message=(
            "Error validating access token: The session has been invalidated because the "
            "user changed their password or Facebook has changed the session for security "
            "reasons."
        ),
        type="OAuthException",
    )


def too_young() -> GraphError:
    """A refresh of a token less than 24 hours old.

    Meta documents the rule, not the error's shape; the sandbox answers code 100 (invalid
    parameter) with a message naming the rule, so a client can tell it from a dead token.
    """
    return graph_error(
        100,
        "The access token is too recent to refresh: refresh a long-lived token only "
        "once it is at least 24 hours old",
        type="OAuthException",
    )
