"""Meta's webhook endpoint: the GET verification handshake and signed POST deliveries.

A POST is answered 200 only after every postback in it is durably in the log, so a 200
Meta has seen is never lost; anything else makes Meta retry. The order of checks matters:
the ``Content-Encoding`` (415 for anything but none or ``identity``: Meta does not compress,
and inflating before the signature check would let anyone make us inflate a bomb; nothing is
read), then the body size (aiohttp's ``client_max_size``, 413) and its deadline
(``body_timeout_seconds``, 408), then the signature over the exact bytes received (401
missing / 403 wrong, before any parsing), then the JSON (400), then the store (503 when it
fails). Rejections say what was wrong in general terms only. The connection-level bounds
(connection cap, request head deadline, keep-alive) are in webhook_site.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Collection, Sequence

from aiohttp import hdrs, web

from igbutton_server import logs, metrics
from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.config import WebhookSettings
from igbutton_server.postbacks.accounts import AccountCheck
from igbutton_server.postbacks.parse import MalformedDelivery, parse_delivery
from igbutton_server.storage.postbacks import (
    AppendResult,
    NewPostback,
    PostbackStore,
    StorageUnavailable,
)
from igbutton_server.storage.together import writes_together
from igbutton_server.storage.windows import WindowLedger

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = "sha256="
_UNENCODED = frozenset({"", "identity"})


def sign(body: bytes, secret: bytes) -> str:
    """The X-Hub-Signature-256 value Meta sends for ``body`` (used by tests and the sandbox)."""
    return _SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, header: str, secrets: Sequence[bytes]) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under any of ``secrets``.

    Every secret is tried, without stopping at a match, and each comparison is constant
    time, so the answer's timing tells nothing about the expected value.
    """
    given = header.strip().encode("utf-8", "surrogateescape")
    matched = False
    for secret in secrets:
        expected = sign(body, secret).encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    return matched


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Webhook:
    """The aiohttp handlers, bound to the webhook settings and the postback store."""

    def __init__(
        self,
        settings: WebhookSettings,
        store: PostbackStore,
        accounts: Collection[str],
        activity: AccountActivity | None = None,
        windows: WindowLedger | None = None,
    ) -> None:
        self._settings = settings
        self._activity = activity
        self._store = store
        self._windows = windows
        self._accounts = AccountCheck(accounts, accept_unknown=settings.accept_unknown_accounts)
        self._secrets = settings.secrets()
        # Refusals are caused by whoever reaches the port: at most a few lines a minute each.
        self._refusals = logs.RateLimitedLog(log)
        token = settings.verify_token
        self._verify_token = None if token is None else token.get_secret_value().encode()
        if settings.allow_unsigned:
            log.warning(
                "WEBHOOK SIGNATURES ARE NOT CHECKED (webhook.allow_unsigned): anyone who can "
                "reach the webhook port can inject postbacks. Never use this with Meta."
            )
        if self._verify_token is None:
            log.info("no webhook.verify_token set: Meta's verification handshake will fail")

    def build_app(self) -> web.Application:
        """An aiohttp application serving the webhook at ``settings.path``."""
        app = web.Application(client_max_size=self._settings.max_body_bytes)
        app.router.add_get(self._settings.path, self.handshake)
        app.router.add_post(self._settings.path, self.receive)
        return app

    async def handshake(self, request: web.Request) -> web.Response:
        """GET: echo ``hub.challenge`` when ``hub.verify_token`` matches, else 403."""
        query = request.query
        token = query.get("hub.verify_token", "").encode("utf-8", "surrogateescape")
        challenge = query.get("hub.challenge")
        if (
            self._verify_token is not None
            and query.get("hub.mode") == "subscribe"
            and challenge is not None
            and hmac.compare_digest(token, self._verify_token)
        ):
            metrics.WEBHOOKS.labels(result="handshake_ok").inc()
            log.info("webhook verification handshake accepted")
            return web.Response(text=challenge)
        metrics.WEBHOOKS.labels(result="handshake_denied").inc()
        self._refusals.log(
            logging.WARNING, "handshake_denied", "webhook verification handshake refused"
        )
        return _error(403, "verification failed")

    async def receive(self, request: web.Request) -> web.Response:
        """POST: verify, parse, store durably, then answer."""
        if request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() not in _UNENCODED:
            metrics.WEBHOOKS.labels(result="unsupported_encoding").inc()
            log.warning("webhook POST with a Content-Encoding refused unread")
            return _error(415, "Content-Encoding not supported")
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        return await self._deliver(request, body)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        """The whole body, or the answer to give when it is too large, too slow or cut off."""
        try:
            async with asyncio.timeout(self._settings.body_timeout_seconds):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            metrics.WEBHOOKS.labels(result="too_large").inc()
            self._refusals.log(
                logging.WARNING, "too_large", "webhook body over webhook.max_body_bytes refused"
            )
            return _error(413, "body too large")
        except TimeoutError:
            metrics.WEBHOOKS.labels(result="body_timeout").inc()
            log.info("webhook body not received within webhook.body_timeout_seconds")
            answer = _error(408, "body not received in time")
            answer.force_close()
            return answer
        except (ConnectionError, web.RequestPayloadError):
            # The client went away mid-body (or broke its chunked framing): nobody to answer.
            metrics.WEBHOOKS.labels(result="aborted").inc()
            log.info("webhook client disconnected before its whole body arrived")
            return _error(400, "incomplete body")

    async def _append(self, postbacks: Sequence[NewPostback]) -> AppendResult:
        with metrics.LOG_APPEND_LATENCY.time():
            return await self._store.append(postbacks)

    def _refuse_unsigned(self, request: web.Request, body: bytes) -> web.Response | None:
        """The refusal of a delivery without Meta's valid signature, or None when it has one."""
        if self._settings.allow_unsigned:
            return None
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            metrics.WEBHOOKS.labels(result="unsigned").inc()
            self._refusals.log(logging.WARNING, "unsigned", "unsigned webhook POST refused")
            return _error(401, "signature required")
        if not signature_matches(body, header, self._secrets):
            metrics.WEBHOOKS.labels(result="bad_signature").inc()
            self._refusals.log(
                logging.WARNING, "bad_signature", "webhook POST with a wrong signature refused"
            )
            return _error(403, "invalid signature")
        return None

    async def _deliver(self, request: web.Request, body: bytes) -> web.Response:
        """Check the signature over ``body``, parse it and store its postbacks."""
        refused = self._refuse_unsigned(request, body)
        if refused is not None:
            return refused

        try:
            delivery = parse_delivery(body, self._accounts.known)
        except MalformedDelivery as exc:
            metrics.WEBHOOKS.labels(result="malformed").inc()
            self._refusals.log(
                logging.WARNING, "malformed", "malformed webhook delivery refused: %.200s", exc
            )
            return _error(400, str(exc))

        for kind, count in delivery.skipped.items():
            metrics.WEBHOOK_ITEMS_SKIPPED.labels(kind=kind).inc(count)
        self._report_tests(delivery.self_tests, [p for p in delivery.postbacks if p.test])
        self._accounts.report(delivery.unknown_accounts)
        try:
            # The windows the delivery opens are stored before the 200 too: a window not
            # recorded is retried with the delivery.
            windows = self._windows if delivery.last_messages else None
            if windows is not None and delivery.postbacks:
                # Side by side, not one after the other: on SQLite the two writes share one
                # commit (one fsync), on NATS their round trips overlap.
                with writes_together(2):
                    result, _ = await asyncio.gather(
                        self._append(delivery.postbacks), windows.note(delivery.last_messages)
                    )
            else:
                if windows is not None:
                    await windows.note(delivery.last_messages)
                result = await self._append(delivery.postbacks)
        except (StorageUnavailable, OSError) as exc:
            # The store cannot take it now (SQLite's fault, NATS unreachable: OSError): the
            # store logged the fault and readiness shows it, so each delivery refused
            # meanwhile is a rate-limited line without a trace. Meta retries a 5xx.
            metrics.WEBHOOKS.labels(result="store_failed").inc()
            self._refusals.log(
                logging.WARNING, "store_unavailable", "webhook delivery not stored (503): %s", exc
            )
            return _error(503, "not stored; retry later")
        except Exception:
            # Meta retries a 5xx, so nothing answered here is lost.
            metrics.WEBHOOKS.labels(result="store_failed").inc()
            log.exception("storing a webhook delivery failed; answering 503 so Meta retries")
            return _error(503, "not stored; retry later")
        metrics.WEBHOOKS.labels(result="accepted").inc()
        if self._activity is not None:
            self._activity.note_postbacks({p.account_id for p in delivery.postbacks if not p.test})
        metrics.POSTBACKS_STORED.inc(result.stored)
        metrics.POSTBACKS_DUPLICATE.inc(result.duplicates)
        log.debug(
            "webhook delivery stored",
            extra={
                "stored": result.stored,
                "duplicates": result.duplicates,
                "skipped": sum(delivery.skipped.values()),
            },
        )
        answer: dict[str, object] = {
            "stored": result.stored,
            "duplicates": result.duplicates,
            "skipped": dict(delivery.skipped),
        }
        if delivery.self_tests:
            answer["self_test"] = delivery.self_tests
        return web.json_response(answer)

    @staticmethod
    def _report_tests(self_tests: list[str], dashboard: list[NewPostback]) -> None:
        """Make test deliveries visible: a person pressing Test looks at the log first."""
        if self_tests:
            metrics.TEST_DELIVERIES.labels(kind="self_test").inc(len(self_tests))
            log.info("webhook self-test delivery recognised (not stored)")
        for postback in dashboard:
            metrics.TEST_DELIVERIES.labels(kind="dashboard").inc()
            log.info(
                "webhook test delivery from the App Dashboard (messaging_postbacks); stored as "
                "a test postback",
                extra={
                    "account_id": postback.account_id,
                    "sender_id": postback.sender_id,
                    "mid": postback.mid,
                    "title": postback.title,
                    "payload": postback.payload,
                },
            )
