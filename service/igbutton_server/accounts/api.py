"""AccountService: the gRPC face of the accounts' state, checks and subscriptions.

A caller sees only the accounts it may use (as SendService checks them): ListAccounts leaves
the others out, the other RPCs answer PERMISSION_DENIED for them before anything else, so a
caller learns nothing about accounts it may not use. Failures are raised; the RPC middleware
turns them into statuses.
"""

from __future__ import annotations

import re
import time
from typing import Any

import grpc

from igbutton.v1 import account_service_pb2 as pb
from igbutton.v1 import account_service_pb2_grpc
from igbutton_server import auth
from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.accounts.checks import REQUIRED_FIELDS, AccountChecks, Severity
from igbutton_server.accounts.tokens import AccountTokens, TokenStatus
from igbutton_server.config import Settings
from igbutton_server.errors import FieldViolation, InvalidRequest
from igbutton_server.send.ratelimit import AccountRateLimiter
from igbutton_server.send.validation import resolve_account

Context = grpc.aio.ServicerContext[Any, Any]

_FIELD_RE = re.compile(r"^[a-z_]{1,64}$")
_MAX_FIELDS = 20
_STATUS = {
    TokenStatus.OK: pb.TOKEN_STATUS_OK,
    TokenStatus.EXPIRING: pb.TOKEN_STATUS_EXPIRING,
    TokenStatus.REAUTHORIZATION_REQUIRED: pb.TOKEN_STATUS_REAUTHORIZATION_REQUIRED,
}
_SEVERITY = {
    Severity.OK: pb.FINDING_SEVERITY_OK,
    Severity.WARNING: pb.FINDING_SEVERITY_WARNING,
    Severity.ERROR: pb.FINDING_SEVERITY_ERROR,
}


class AccountServiceServicer(account_service_pb2_grpc.AccountServiceServicer):
    """ListAccounts, GetAccount, CheckAccount, SubscribeAccount."""

    def __init__(
        self,
        settings: Settings,
        tokens: AccountTokens,
        activity: AccountActivity,
        limiter: AccountRateLimiter,
        checks: AccountChecks,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._activity = activity
        self._limiter = limiter
        self._checks = checks

    async def ListAccounts(
        self, _request: pb.ListAccountsRequest, _context: Context
    ) -> pb.ListAccountsResponse:
        """The accounts the caller may use."""
        return pb.ListAccountsResponse(
            accounts=[
                self._account(a.id) for a in self._settings.accounts if auth.caller_may_use(a.id)
            ]
        )

    async def GetAccount(
        self, request: pb.GetAccountRequest, _context: Context
    ) -> pb.GetAccountResponse:
        """One account's state."""
        return pb.GetAccountResponse(account=self._account(self._resolve(request.account_id)))

    async def CheckAccount(
        self, request: pb.CheckAccountRequest, _context: Context
    ) -> pb.CheckAccountResponse:
        """Every check, one finding each."""
        account_id = self._resolve(request.account_id)
        findings = await self._checks.check(account_id)
        return pb.CheckAccountResponse(
            account=self._account(account_id),
            findings=[
                pb.Finding(
                    check=f.check,
                    severity=_SEVERITY[f.severity],
                    message=f.message,
                    action=f.action,
                )
                for f in findings
            ],
        )

    async def SubscribeAccount(
        self, request: pb.SubscribeAccountRequest, _context: Context
    ) -> pb.SubscribeAccountResponse:
        """Subscribe the account's webhook fields at Meta."""
        account_id = self._resolve(request.account_id)
        fields = list(dict.fromkeys(request.fields)) or list(REQUIRED_FIELDS)
        violations = [
            FieldViolation(f"fields[{i}]", "must be a lower_snake_case webhook field name")
            for i, name in enumerate(fields)
            if not _FIELD_RE.match(name)
        ]
        if len(fields) > _MAX_FIELDS:
            violations.append(FieldViolation("fields", f"at most {_MAX_FIELDS} fields"))
        if violations:
            raise InvalidRequest(violations)
        reported = await self._checks.subscribe(account_id, fields)
        return pb.SubscribeAccountResponse(subscribed_fields=reported)

    def _resolve(self, account_id: str) -> str:
        # Permission first for a named account, as SendService does.
        if account_id and not auth.caller_may_use(account_id):
            raise auth.account_not_allowed(account_id)
        account = resolve_account(account_id, self._settings.accounts)
        if not auth.caller_may_use(account.id):
            raise auth.account_not_allowed(account.id)
        return account.id

    def _account(self, account_id: str) -> pb.Account:
        record = self._tokens.record(account_id)
        seen = self._activity.of(account_id)
        account = pb.Account(
            id=account_id,
            username=seen.username,
            token_status=_STATUS[self._tokens.status(account_id)],
            last_refresh_error=self._tokens.last_error(account_id),
            subscribed_fields=seen.subscribed_fields,
        )
        if record is not None and record.expires_ms is not None:
            account.token_expire_time.FromMilliseconds(record.expires_ms)
        if record is not None and record.refreshed_ms is not None:
            account.last_refresh_time.FromMilliseconds(record.refreshed_ms)
        if seen.subscription_checked_ms is not None:
            account.subscription_check_time.FromMilliseconds(seen.subscription_checked_ms)
        if seen.last_postback_ms is not None:
            account.last_postback_time.FromMilliseconds(seen.last_postback_ms)
        held = self._limiter.held_for(account_id)
        if held > 0:
            now = time.time()
            account.rate_limit_hold_expire_time.FromMilliseconds(int((now + held) * 1000))
            account.rate_limit_hold_reason = (
                seen.hold_reason
                if seen.hold_until > now
                else "Meta throttled the account (seen by another replica)"
            )
        if seen.usage is not None:
            account.last_usage.app_usage = seen.usage.app_usage
            account.last_usage.business_use_case_usage = seen.usage.business_use_case_usage
            account.last_usage.receive_time.FromMilliseconds(seen.usage.received_ms)
        return account
