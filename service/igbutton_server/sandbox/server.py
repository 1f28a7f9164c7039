"""The sandbox: a real HTTP server that stands in for Instagram's Graph API.

It accepts ``POST /{version}/{account_id}/messages`` sends, validates them as Meta does,
answers with Meta-shaped successes and errors, records every send, can be told to fail
(:mod:`igbutton_server.sandbox.faults`), and can "tap" a recorded postback button, which delivers
a signed ``messaging_postbacks`` webhook (:mod:`igbutton_server.sandbox.tap`). An HTTP control
API under ``/_sandbox/`` (:mod:`igbutton_server.sandbox.control`) exposes the same to other
languages and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from igbutton_server.sandbox import graph_rules
from igbutton_server.sandbox.accounts import (
    DEFAULT_LIFETIME_SECONDS,
    DEFAULT_MIN_REFRESH_AGE_SECONDS,
    SANDBOX_APP_ID,
    SANDBOX_APP_NAME,
    AccountState,
    IssuedToken,
    TokenRegistry,
)
from igbutton_server.sandbox.control import add_control_routes
from igbutton_server.sandbox.faults import Fault, FaultQueue
from igbutton_server.sandbox.graph_rules import GraphError
from igbutton_server.sandbox.records import RecordedSend, SendLog, StoredMessage, parse_body
from igbutton_server.sandbox.tap import (
    TapResult,
    dashboard_test_body,
    new_postback_mid,
    post_webhook,
    postback_body,
    sign,
)

log = logging.getLogger(__name__)

REDACTED: Final = "<redacted>"
_SHUTDOWN_SECONDS = 2.0
# Accepting any token, the sandbox cannot tell whose a token is. Not 190: the token is not
# dead, the sandbox merely does not know it, and 190 would mark the account.
_NO_TOKENS = graph_rules.invalid(
    "The sandbox accepts any token for sends, so it cannot tell whose this one is: give it "
    "the accounts' tokens (set_tokens, --token ACCOUNT=TOKEN)"
)
_HTML_ERROR = "<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"


class _AutoSign:
    """Marker: sign the body with the configured app secret."""

    def __repr__(self) -> str:
        return "AUTO_SIGN"


AUTO_SIGN: Final = _AutoSign()


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _recipient(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("recipient"), dict):
        rid = body["recipient"].get("id")
        return rid if isinstance(rid, str) else None
    return None


def _error_response(error: GraphError) -> web.Response:
    return web.json_response(error.body(), status=error.http_status, headers=error.headers)


class Sandbox:
    """A local stand-in for the Graph API send endpoint plus a button-tapping person."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        app_secret: bytes | None = None,
        max_records: int = 100_000,
        token_lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
        min_refresh_age_seconds: float = DEFAULT_MIN_REFRESH_AGE_SECONDS,
    ) -> None:
        """``max_records`` bounds memory: the oldest sends (and their messages) are forgotten.

        Tokens it issues on refresh live ``token_lifetime_seconds`` (Meta: 60 days) and can be
        refreshed once ``min_refresh_age_seconds`` old (Meta: 24 hours).
        """
        self._log = SendLog(max_records)
        self._host = host
        self._requested_port = port
        self._port = 0
        self.tokens = TokenRegistry(
            lifetime_seconds=token_lifetime_seconds,
            min_refresh_age_seconds=min_refresh_age_seconds,
        )
        """The tokens the sandbox accepts and the accounts' state (tests inspect it)."""
        self.tokens.seed(tokens or {})
        self._webhook_url = webhook_url
        self._app_secret = app_secret
        self._faults = FaultQueue()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()

    # --- Lifecycle ---

    async def start(self) -> None:
        """Bind the port and start serving; afterwards ``url`` and ``port`` are known."""
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._handle_send)
        app.router.add_get("/refresh_access_token", self._handle_refresh)
        app.router.add_get("/{version}/me", self._handle_me)
        app.router.add_get("/{version}/me/subscribed_apps", self._handle_subscribed_apps)
        app.router.add_post("/{version}/me/subscribed_apps", self._handle_subscribe)
        add_control_routes(app, self)
        # Anything else gets Meta's answer to an unknown path, so a client bug is obvious.
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown_path)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_SECONDS
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        # The runner's public addresses work on any event loop (uvloop included).
        self._port = runner.addresses[0][1]
        self._runner = runner
        self._session = aiohttp.ClientSession()
        log.info("sandbox listening", extra={"sandbox_url": self.url})

    async def stop(self) -> None:
        """Stop serving and close the webhook client. Safe to call twice."""
        self._stopping.set()  # slow faults answer now instead of holding up shutdown
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def received(self) -> list[RecordedSend]:
        """Every send that reached the sandbox (accepted or not), in arrival order."""
        return list(self._log.received)

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if not self._port:
            raise RuntimeError("the sandbox is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the sandbox, such as ``http://127.0.0.1:8765`` (after start)."""
        host = self._host if self._host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # --- Configuration ---

    def set_tokens(self, tokens: Mapping[str, str] | None, *, age_seconds: float = 0.0) -> None:
        """Accepted access token per account id, issued ``age_seconds`` ago; None or empty
        accepts any non-empty token (and then refresh, me and subscribed_apps answer 190)."""
        self.tokens.seed(tokens or {}, age_seconds=age_seconds)

    def account_state(self, account_id: str) -> AccountState:
        """An account's username, webhook fields and refresh counts."""
        return self.tokens.account(account_id)

    def set_webhook(self, url: str, app_secret: bytes) -> None:
        """Where taps are delivered, and the app secret they are signed with."""
        self._webhook_url = url
        self._app_secret = app_secret

    @property
    def webhook_url(self) -> str | None:
        """The configured webhook URL, if any."""
        return self._webhook_url

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; faults are used up in FIFO order, one per matching send."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many faults are still queued."""
        return len(self._faults)

    def faults(self) -> list[tuple[Fault, int]]:
        """Queued faults in order, each with how many more sends it will affect."""
        return self._faults.pending()

    def reset(self) -> None:
        """Forget recorded sends, stored messages and faults (tokens and webhook stay)."""
        self._log.clear()
        self._faults.clear()

    def accepted(self) -> list[RecordedSend]:
        """The recorded sends that were accepted, in order."""
        return [r for r in self.received if r.accepted]

    # --- Sends ---

    def _resolve_account(self, path_account: str, token: str | None) -> str | None:
        if path_account != "me":
            return path_account
        issued = self.tokens.lookup(token)
        return None if issued is None else issued.account_id

    def _token_ok(self, account: str | None, token: str | None) -> bool:
        if not token:
            return False
        if self.tokens.empty:
            return True
        issued = self.tokens.check(token)
        return isinstance(issued, IssuedToken) and issued.account_id == account

    async def _handle_send(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        header_token = _bearer(request.headers.get("Authorization"))
        token = header_token or request.query.get("access_token") or None
        path_account = request.match_info["account"]
        account = self._resolve_account(path_account, token)
        body = parse_body(raw)
        query = (
            {k: (REDACTED if k == "access_token" else v) for k, v in request.query.items()}
            if request.query_string
            else {}
        )
        record = RecordedSend(
            account_id=account or path_account,
            path=request.path,
            query=query,
            auth_header_present="Authorization" in request.headers,
            token_ok=self._token_ok(account, token),
            raw_body=raw,
            accepted=False,
            message_id=None,
            recipient_id=_recipient(body),
            received_at=time.time(),
            status=0,
        )
        issued = self.tokens.lookup(token)
        record.token_generation = None if issued is None else issued.generation
        self._log.record(record)

        fault = self._faults.take(record.account_id)
        if fault is not None:
            if fault.kind == "drop":
                return self._drop(request)
            if fault.delay_seconds:  # "slow", or an error answered late
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), fault.delay_seconds)
            if fault.kind == "graph_error":
                error = fault.graph_error()
                record.status = error.http_status
                return _error_response(error)
            if fault.kind == "http_status":
                record.status = fault.http_status
                return web.Response(
                    status=fault.http_status,
                    text=_HTML_ERROR.format(status=fault.http_status),
                    content_type="text/html",
                    headers=fault.headers,
                )

        response = self._process(request.match_info["version"], account, token, body, record)
        record.status = response.status
        return response

    async def _handle_unknown_path(self, request: web.Request) -> web.Response:
        await request.read()
        return _error_response(
            graph_rules.invalid(
                f"Unsupported {request.method} request to {request.path}: the sandbox serves "
                "POST /{version}/{account_id}/messages and /_sandbox/"
            )
        )

    def _process(
        self,
        version: str,
        account: str | None,
        token: str | None,
        body: Any,
        record: RecordedSend,
    ) -> web.Response:
        problem = graph_rules.check_version(version)
        if problem is not None:
            return _error_response(problem)
        if not token:
            return _error_response(
                graph_rules.bad_token("An active access token must be used to call this API.")
            )
        if account is None:
            return _error_response(
                graph_rules.invalid("Cannot resolve 'me': use the Instagram account id in the path")
            )
        if not record.token_ok:
            checked = self.tokens.check(token)
            if isinstance(checked, GraphError) and not self.tokens.empty:
                return _error_response(checked)  # expired or revoked: Meta says which
            return _error_response(graph_rules.bad_token())
        if body is None:
            return _error_response(graph_rules.invalid("The request body must be JSON"))
        outcome = graph_rules.validate_send(body)
        if isinstance(outcome, GraphError):
            return _error_response(outcome)
        message_id = graph_rules.new_message_id(account)
        stored = StoredMessage(account, outcome.recipient_id, outcome.buttons)
        self._log.accept(record, message_id, stored)
        answer = {"recipient_id": outcome.recipient_id, "message_id": message_id}
        # Bytes rather than json_response's text: one encode fewer on every accepted send.
        return web.Response(
            body=json.dumps(answer).encode(), content_type="application/json", charset="utf-8"
        )

    # --- Tokens and subscriptions ---

    def _account_of(self, request: web.Request) -> IssuedToken | GraphError:
        token = _bearer(request.headers.get("Authorization")) or request.query.get("access_token")
        if self.tokens.empty:
            return _NO_TOKENS
        return self.tokens.check(token)

    async def _handle_refresh(self, request: web.Request) -> web.Response:
        """GET /refresh_access_token?grant_type=ig_refresh_token&access_token=..."""
        if request.query.get("grant_type") != "ig_refresh_token":
            return _error_response(
                graph_rules.graph_error(
                    100, "grant_type must be ig_refresh_token", type="OAuthException"
                )
            )
        token = request.query.get("access_token")
        if not token:
            return _error_response(
                graph_rules.bad_token("An active access token must be used to call this API.")
            )
        if self.tokens.empty:
            return _error_response(_NO_TOKENS)
        outcome = self.tokens.refresh(token)
        if isinstance(outcome, GraphError):
            return _error_response(outcome)
        new, expires_in = outcome
        return web.json_response(
            {"access_token": new, "token_type": "bearer", "expires_in": expires_in}
        )

    async def _handle_me(self, request: web.Request) -> web.Response:
        """GET /{version}/me?fields=user_id,username"""
        problem = graph_rules.check_version(request.match_info["version"])
        if problem is not None:
            return _error_response(problem)
        issued = self._account_of(request)
        if isinstance(issued, GraphError):
            return _error_response(issued)
        state = self.tokens.account(issued.account_id)
        known = {"user_id": issued.account_id, "username": state.username}
        asked = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
        answer: dict[str, str] = {k: v for k, v in known.items() if k in asked}
        answer["id"] = issued.account_id
        return web.json_response(answer)

    async def _handle_subscribed_apps(self, request: web.Request) -> web.Response:
        """GET /{version}/me/subscribed_apps: the app's subscription, if any, with its fields."""
        problem = graph_rules.check_version(request.match_info["version"])
        if problem is not None:
            return _error_response(problem)
        issued = self._account_of(request)
        if isinstance(issued, GraphError):
            return _error_response(issued)
        fields = self.tokens.account(issued.account_id).subscribed_fields
        data = (
            [{"id": SANDBOX_APP_ID, "name": SANDBOX_APP_NAME, "subscribed_fields": fields}]
            if fields
            else []
        )
        return web.json_response({"data": data})

    async def _handle_subscribe(self, request: web.Request) -> web.Response:
        """POST /{version}/me/subscribed_apps?subscribed_fields=a,b: replace the fields."""
        await request.read()
        problem = graph_rules.check_version(request.match_info["version"])
        if problem is not None:
            return _error_response(problem)
        issued = self._account_of(request)
        if isinstance(issued, GraphError):
            return _error_response(issued)
        refused = self.tokens.subscribe(issued.account_id, request.query.get("subscribed_fields"))
        if refused is not None:
            return _error_response(refused)
        return web.json_response({"success": True})

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        # Abort the socket (RST, no answer) so the client sees a disconnect after it wrote
        # the whole request: the ambiguous "did Meta act?" case.
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    # --- Taps ---

    def message(self, message_id: str) -> StoredMessage:
        """The accepted message with this id (account, recipient, buttons)."""
        return self._log.message(message_id)

    async def tap(
        self, message_id: str, button_index: int = 0, *, mid: str | None = None
    ) -> TapResult:
        """Tap a postback button of an accepted message: deliver the signed webhook.

        Raises UnknownMessageError (a LookupError) for an unknown message, ValueError
        for a bad index or a button that is not a postback, RuntimeError when no webhook
        is configured. A webhook answering 5xx or unreachable is reported in the result.
        """
        stored = self._log.message(message_id)
        buttons = stored.buttons
        if not 0 <= button_index < len(buttons):
            raise ValueError(
                f"button_index {button_index} is out of range: the message has "
                f"{len(buttons)} button(s)"
            )
        button = buttons[button_index]
        if button.get("type") != "postback":
            raise ValueError(
                f"button {button_index} is a {button.get('type')} button; only postback "
                "buttons produce a webhook"
            )
        if self._webhook_url is None:
            raise RuntimeError(
                "the sandbox has no webhook URL: call set_webhook() or pass --webhook-url"
            )
        the_mid = mid if mid is not None else new_postback_mid()
        body = postback_body(
            account_id=stored.account_id,
            sender_id=stored.recipient_id,
            mid=the_mid,
            title=button["title"],
            payload=button["payload"],
        )
        delivery = await self._post(body, AUTO_SIGN)
        return TapResult(
            mid=the_mid,
            payload=button["payload"],
            title=button["title"],
            webhook_status=delivery[0],
            webhook_error=delivery[1],
        )

    async def send_test_delivery(
        self,
        *,
        account_id: str = "0",
        sender_id: str = "12334",
        payload: str = "TEST_PAYLOAD",
        title: str = "Test button",
    ) -> int:
        """Deliver what the App Dashboard's Test button sends for ``messaging_postbacks``:
        the ``entry[].changes[]`` form, made-up ids; the webhook's HTTP status (0: unreachable).
        """
        body = dashboard_test_body(
            account_id=account_id, sender_id=sender_id, payload=payload, title=title
        )
        return await self.deliver(body)

    async def deliver(self, body: bytes, *, signature: str | _AutoSign | None = AUTO_SIGN) -> int:
        """POST raw bytes to the webhook URL and return the HTTP status (0: unreachable).

        ``signature`` is the ``X-Hub-Signature-256`` value; by default the body is signed
        with the configured app secret; None sends no signature header.
        """
        if self._webhook_url is None:
            raise RuntimeError("the sandbox has no webhook URL: call set_webhook() first")
        status, _ = await self._post(body, signature)
        return status

    async def _post(self, body: bytes, signature: str | _AutoSign | None) -> tuple[int, str | None]:
        assert self._webhook_url is not None
        if self._session is None:
            raise RuntimeError("the sandbox is not started")
        if isinstance(signature, _AutoSign):
            if self._app_secret is None:
                raise RuntimeError("the sandbox has no app secret to sign with")
            signature = sign(body, self._app_secret)
        delivery = await post_webhook(self._session, self._webhook_url, body, signature)
        return delivery.status, delivery.error
