"""Accounts: each account's state and the doctor's findings, and a subscribe button.

Opening the page runs ``CheckAccount`` for every account the caller may use, through the
AccountService servicer (``accounts/api.py``) as the logged-in caller: the same state and
findings ``igbutton doctor`` prints (token, refresh, webhook subscription, app secret, the
webhook self-test), so the page costs what one doctor run costs (two Graph reads and one
loopback webhook POST per account). In sandbox mode a "Subscribe" button is
``SubscribeAccount`` with its default fields, a POST form with the CSRF token; outside it
the page shows the command to run instead, so a page view never changes Meta's settings.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import timestamp_pb2

from igbutton.v1 import account_service_pb2 as pb
from igbutton_server.accounts.api import AccountServiceServicer
from igbutton_server.console.pages import NO_RPC_CONTEXT, ConsoleContext, Page, Route, as_caller
from igbutton_server.errors import api_error, reason_name


@dataclass(frozen=True)
class FindingRow:
    """One check's result."""

    check: str
    severity: str
    """``ok``, ``warning`` or ``error``."""
    message: str
    action: str


@dataclass(frozen=True)
class AccountRow:
    """One account as the page shows it."""

    id: str
    username: str
    token_status: str
    token_expires: str
    last_refresh: str
    last_refresh_error: str
    subscribed_fields: str
    subscription_checked: str
    hold: str
    """'' when the account is not held by the rate limiter."""
    last_postback: str
    findings: tuple[FindingRow, ...]
    problem: str
    """Why the checks could not run ('' when they did)."""
    subscribed: bool
    """Whether messaging_postbacks is among the subscribed fields."""


def _when(stamp: timestamp_pb2.Timestamp, present: bool) -> str:
    if not present:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.ToMilliseconds() / 1000))


def _short(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix).lower()


def _row(account: pb.Account, findings: list[pb.Finding], problem: str) -> AccountRow:
    hold = ""
    if account.HasField("rate_limit_hold_expire_time"):
        until = _when(account.rate_limit_hold_expire_time, True)
        hold = f"until {until}: {account.rate_limit_hold_reason}"
    return AccountRow(
        id=account.id,
        username=account.username,
        token_status=_short(pb.TokenStatus.Name(account.token_status), "TOKEN_STATUS_"),
        token_expires=_when(account.token_expire_time, account.HasField("token_expire_time")),
        last_refresh=_when(account.last_refresh_time, account.HasField("last_refresh_time")),
        last_refresh_error=account.last_refresh_error,
        subscribed_fields=", ".join(account.subscribed_fields),
        subscription_checked=_when(
            account.subscription_check_time, account.HasField("subscription_check_time")
        ),
        hold=hold,
        last_postback=_when(account.last_postback_time, account.HasField("last_postback_time")),
        findings=tuple(
            FindingRow(
                check=f.check,
                severity=_short(pb.FindingSeverity.Name(f.severity), "FINDING_SEVERITY_"),
                message=f.message,
                action=f.action,
            )
            for f in findings
        ),
        problem=problem,
        subscribed="messaging_postbacks" in account.subscribed_fields,
    )


def _api(ctx: ConsoleContext) -> AccountServiceServicer:
    assert ctx.accounts is not None  # the page is available only with it
    return ctx.accounts


def _problem(exc: Exception) -> str:
    """What the RPC would have answered, as a line on the page; a bug propagates."""
    error = api_error(exc)
    if error is None:
        raise exc
    return f"{error.code.name} {reason_name(error.reason)}: {error.message}"


async def _account(api: AccountServiceServicer, account_id: str) -> AccountRow:
    try:
        checked = await api.CheckAccount(
            pb.CheckAccountRequest(account_id=account_id), NO_RPC_CONTEXT
        )
    except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
        # Meta could not be asked (ACCOUNT_CHECK_FAILED...): the state igbutton holds still is.
        problem = _problem(exc)
        got = await api.GetAccount(pb.GetAccountRequest(account_id=account_id), NO_RPC_CONTEXT)
        return _row(got.account, [], problem)
    return _row(checked.account, list(checked.findings), "")


async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    as_caller(request)
    api = _api(ctx)
    # ListAccounts' own rule: only the accounts the caller may use.
    listed = await api.ListAccounts(pb.ListAccountsRequest(), NO_RPC_CONTEXT)
    # At once: each check waits on Meta (and the webhook self-test), not on the others.
    rows = await asyncio.gather(*(_account(api, a.id) for a in listed.accounts))
    return ctx.render(
        request,
        "accounts.html",
        accounts=rows,
        can_subscribe=ctx.sandbox is not None,
        notice=request.query.get("notice", ""),
        problem=request.query.get("problem", ""),
    )


async def _subscribe(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    if ctx.sandbox is None:
        raise web.HTTPNotFound(text="the console subscribes accounts only in sandbox mode")
    form = await request.post()
    account_id = form.get("account_id")
    if not isinstance(account_id, str) or not account_id:
        raise web.HTTPBadRequest(text="account_id is required")
    as_caller(request)
    query: dict[str, str]
    try:
        answer = await _api(ctx).SubscribeAccount(
            pb.SubscribeAccountRequest(account_id=account_id), NO_RPC_CONTEXT
        )
    except Exception as exc:  # noqa: BLE001 - _problem re-raises what is not an ApiError
        query = {"problem": _problem(exc)}
    else:
        fields = ", ".join(answer.subscribed_fields)
        query = {"notice": f"Subscribed {account_id}: {fields}"}
    # Post/redirect/get: the page then shows the checks run again.
    raise web.HTTPSeeOther(request.app.router["accounts"].url_for().with_query(query))


PAGE = Page(
    slug="accounts",
    title="Accounts",
    order=50,
    routes=(Route("GET", "", _page), Route("POST", "/subscribe", _subscribe)),
    available=lambda ctx: ctx.accounts is not None,
)
