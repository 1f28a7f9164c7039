"""What CheckAccount (and ``igbutton doctor``) checks for an account, one finding per check,
each saying what to do; and SubscribeAccount's subscription.

The checks, in order: ``token`` (GET /me answers for this account), ``refresh`` (the last
refresh did not fail), ``subscription`` (Meta reports messaging_postbacks and messages among
the account's webhook fields), ``app_secret`` (one is configured), ``webhook_self_test``
(igbutton's own webhook endpoint accepts a delivery signed with the app secret: a change of
the field ``igbutton_self_test`` that the webhook recognises, answers with its nonce, and
never stores).
"""

from __future__ import annotations

import enum
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.accounts.graph import AccountCallError, AccountGraph
from igbutton_server.accounts.tokens import AccountTokens, TokenStatus
from igbutton_server.config import Settings
from igbutton_server.errors import AccountCheckFailed, ReauthorizationRequired
from igbutton_server.postbacks.parse import SELF_TEST_FIELD
from igbutton_server.postbacks.webhook import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("messages", "messaging_postbacks")
"""What postbacks need (messaging_postbacks) and what Meta's messaging setup expects too."""
_FIX = "run `igbutton doctor --fix` (AccountService.SubscribeAccount)"
_REAUTHORIZE = (
    "log in again with the account, put the new long-lived token in the account's "
    "access_token_file (re-read on change or SIGHUP)"
)


class Severity(enum.Enum):
    """How bad a finding is (the proto's FindingSeverity without prefix)."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """The result of one check."""

    check: str
    severity: Severity
    message: str
    action: str = ""


class AccountChecks:
    """Checks and subscriptions, on the account's current token."""

    def __init__(
        self,
        settings: Settings,
        tokens: AccountTokens,
        graph: AccountGraph,
        activity: AccountActivity,
        webhook_url: Callable[[], str | None],
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._graph = graph
        self._activity = activity
        self._webhook_url = webhook_url

    async def look_up(self, account_id: str) -> None:
        """Read the account's name and webhook fields from Meta into its activity, and say
        in the log when postbacks cannot arrive (at start; never raises)."""
        token = self._tokens.token(account_id)
        if self._tokens.status(account_id) is TokenStatus.REAUTHORIZATION_REQUIRED:
            return
        try:
            _, username = await self._graph.me(token)
            self._activity.of(account_id).username = username
            fields = await self._graph.subscribed_fields(token)
        except AccountCallError as exc:
            if exc.token_rejected:
                await self._tokens.rejected(account_id, token)
            log.warning(
                "cannot read the account at Meta",
                extra={"account_id": account_id, "error": exc.message},
            )
            return
        self._activity.note_subscription(account_id, fields)
        if "messaging_postbacks" not in fields:
            log.warning(
                "the account is not subscribed to messaging_postbacks: no postback will "
                "arrive; run `igbutton doctor --fix` (AccountService.SubscribeAccount)",
                extra={"account_id": account_id, "subscribed_fields": fields},
            )

    async def check(self, account_id: str) -> list[Finding]:
        """Every check, in order."""
        findings = [await self._token(account_id)]
        error = self._tokens.last_error(account_id)
        if error:
            findings.append(
                Finding(
                    "refresh",
                    Severity.WARNING,
                    f"the last token refresh failed: {error}",
                    "igbutton retries with backoff; if it keeps failing, configure a new token",
                )
            )
        else:
            findings.append(Finding("refresh", Severity.OK, "no refresh failed"))
        findings.append(await self._subscription(account_id))
        findings.append(self._app_secret())
        findings.append(await self._self_test(account_id))
        return findings

    async def _token(self, account_id: str) -> Finding:
        if self._tokens.status(account_id) is TokenStatus.REAUTHORIZATION_REQUIRED:
            return Finding(
                "token", Severity.ERROR, "Meta rejected the access token (Graph 190)", _REAUTHORIZE
            )
        token = self._tokens.token(account_id)
        try:
            user_id, username = await self._graph.me(token)
        except AccountCallError as exc:
            if exc.token_rejected:
                await self._tokens.rejected(account_id, token)
                return Finding(
                    "token",
                    Severity.ERROR,
                    f"Meta rejected the access token: {exc.message}",
                    _REAUTHORIZE,
                )
            return Finding(
                "token",
                Severity.ERROR,
                f"cannot ask Meta about the token: {exc.message}",
                "check graph.base_url and that igbutton can reach it, then check again",
            )
        self._activity.of(account_id).username = username
        if user_id and user_id != account_id:
            return Finding(
                "token",
                Severity.ERROR,
                f"the token belongs to Instagram account {user_id}, not {account_id}",
                "configure this account's own token",
            )
        if self._tokens.status(account_id) is TokenStatus.EXPIRING:
            return Finding(
                "token",
                Severity.WARNING,
                f"the token works (@{username}) but expires soon and refreshing it fails",
                "see the refresh finding; configure a new token before it expires",
            )
        return Finding("token", Severity.OK, f"the token works (@{username})")

    async def _subscription(self, account_id: str) -> Finding:
        if self._tokens.status(account_id) is TokenStatus.REAUTHORIZATION_REQUIRED:
            return Finding(
                "subscription",
                Severity.ERROR,
                "cannot read the webhook subscription without a working token",
                _REAUTHORIZE,
            )
        try:
            fields = await self._graph.subscribed_fields(self._tokens.token(account_id))
        except AccountCallError as exc:
            return Finding(
                "subscription",
                Severity.ERROR,
                f"cannot read the webhook subscription: {exc.message}",
                "check again later",
            )
        self._activity.note_subscription(account_id, fields)
        shown = ", ".join(fields) or "nothing"
        if "messaging_postbacks" not in fields:
            return Finding(
                "subscription",
                Severity.ERROR,
                f"not subscribed to messaging_postbacks (subscribed to: {shown}): "
                "no postback will arrive",
                _FIX,
            )
        if "messages" not in fields:
            return Finding(
                "subscription",
                Severity.WARNING,
                f"subscribed to {shown} but not to messages",
                _FIX,
            )
        return Finding("subscription", Severity.OK, f"subscribed to {shown}")

    def _app_secret(self) -> Finding:
        count = len(self._settings.webhook.app_secrets)
        if count == 0:
            return Finding(
                "app_secret",
                Severity.ERROR,
                "no app secret is configured: webhook signatures are not checked",
                "set webhook.app_secrets (or app_secret_files) to the app secret from the App "
                "Dashboard (App settings > Basic) and turn off webhook.allow_unsigned",
            )
        return Finding("app_secret", Severity.OK, f"{count} app secret(s) configured")

    async def _self_test(self, account_id: str) -> Finding:
        url = self._webhook_url()
        app_secrets = self._settings.webhook.secrets()
        if url is None or not app_secrets:
            return Finding(
                "webhook_self_test",
                Severity.WARNING,
                "skipped: no app secret to sign the self-test with",
                "configure webhook.app_secrets",
            )
        nonce = secrets.token_hex(8)
        change = {"field": SELF_TEST_FIELD, "value": {"nonce": nonce}}
        entry = {"id": account_id, "time": int(time.time() * 1000), "changes": [change]}
        body = json.dumps({"object": "instagram", "entry": [entry]}).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, app_secrets[0])}
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self._settings.tokens.timeout_seconds)
                ) as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                status = response.status
                answer = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Finding(
                "webhook_self_test",
                Severity.ERROR,
                f"igbutton's webhook at {url} did not answer ({type(exc).__name__})",
                "check webhook.host, webhook.port and webhook.path",
            )
        if status != 200:
            return Finding(
                "webhook_self_test",
                Severity.ERROR,
                f"igbutton's webhook at {url} refused a delivery signed with the app secret "
                f"(HTTP {status})",
                "make the first of webhook.app_secrets the app secret Meta signs with",
            )
        if not isinstance(answer, dict) or nonce not in (answer.get("self_test") or []):
            return Finding(
                "webhook_self_test",
                Severity.ERROR,
                f"the endpoint at {url} answered 200 but did not recognise the self-test",
                "check that webhook.path leads to igbutton",
            )
        return Finding(
            "webhook_self_test",
            Severity.OK,
            f"igbutton's webhook at {url} accepted a signed delivery",
        )

    async def subscribe(self, account_id: str, fields: list[str]) -> list[str]:
        """Subscribe the account to ``fields`` at Meta and return what Meta reports then."""
        self._tokens.require_usable(account_id)
        token = self._tokens.token(account_id)
        try:
            await self._graph.subscribe(token, fields)
            reported = await self._graph.subscribed_fields(token)
        except AccountCallError as exc:
            if exc.token_rejected:
                await self._tokens.rejected(account_id, token)
                raise ReauthorizationRequired(account_id) from None
            raise AccountCheckFailed(account_id, exc.message, exc.code) from None
        self._activity.note_subscription(account_id, reported)
        log.info(
            "subscribed the account to webhook fields",
            extra={"account_id": account_id, "subscribed_fields": reported},
        )
        return reported
