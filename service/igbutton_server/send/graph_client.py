"""The one HTTP client to Meta's Graph API: pooled, deadline-bound, careful with retries.

Retries happen only when Meta surely did not act on the request:

- a connection that could not be made (refused, unreachable, TLS handshake failed);
- a Graph error with a temporary code (1, 2, 1200, or ``is_transient: true``);
- a Graph rate-limit code (4, 17, 32, 341, 613, 80001, 80002, 80006), after holding the
  whole account back in the rate limiter for Meta's estimate or the backoff;
- an HTTP 503 or 429 without a Graph error body: a proxy or Meta's edge refusing the
  request before it was processed (a 429 holds the account for its ``Retry-After``,
  delay-seconds or HTTP-date, or the backoff).

Everything else that happens after the request was written is ambiguous and never
retried: a timeout, a dropped connection, an HTTP 500/502/504 without a Graph error (a
gateway that lost or timed out on its upstream, which may still send the message), or a
2xx without a message id. Those end as SEND_OUTCOME_UNKNOWN. No retry sleeps past the
caller's deadline, and a cancelled call cancels the HTTP request.

A retry is started only when the time left can hold its backoff plus a whole attempt: the
longest of this call's attempts so far, the process's moving average of Graph answer
times, and a floor. A retry cut off by the deadline after it was written would turn "Meta
did not act" (retryable, the request_id released) into SEND_OUTCOME_UNKNOWN (kept for the
request_id's lifetime); without the retry the caller gets the last retryable error.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import yarl

from igbutton.v1 import errors_pb2
from igbutton_server import metrics, tracing
from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.config import GraphSettings
from igbutton_server.errors import ApiError, RateLimited
from igbutton_server.send.graph_errors import (
    Retry,
    map_graph_error,
    parse_graph_error,
    regain_access_seconds,
)
from igbutton_server.send.outcome import SendResult, SendTracker, outcome_unknown
from igbutton_server.send.ratelimit import AccountRateLimiter
from igbutton_server.send.translate import GraphRequest

log = logging.getLogger(__name__)

R = errors_pb2.ErrorReason
_MAX_ANSWER_BYTES = 1 << 20
_REDACTED = "[redacted]"
_USER_AGENT = "igbutton"
_MAX_CACHED_URLS = 1024

# The least time a Graph attempt is expected to take when nothing slower was seen: a TLS
# round trip to Meta plus its work on a send is rarely under 0.1 s, and an attempt that
# failed at once (connection refused) says nothing about how long a written one takes.
_MIN_ATTEMPT_SECONDS = 0.1
# Weight of the newest answer time in the moving average (about the last 10 answers).
_ANSWER_TIME_WEIGHT = 0.2
# Outcomes of attempts that Meta (or a proxy in front of it) answered.
_ANSWERED = frozenset({"ok", "graph_error", "http_error"})


class _AttemptFailed(Exception):
    def __init__(self, error: ApiError, retry: Retry, outcome: str, graph_code: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.retry = retry
        self.outcome = outcome
        """The metrics label: graph_error, http_error, timeout, connect_error, disconnected."""
        self.graph_code = graph_code


async def _mark_written(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object
) -> None:
    tracker = getattr(ctx, "trace_request_ctx", None)
    if isinstance(tracker, SendTracker):
        tracker.written = True


class GraphClient:
    """Sends Graph requests with retries, through one pooled ``aiohttp.ClientSession``."""

    def __init__(
        self,
        settings: GraphSettings,
        limiter: AccountRateLimiter,
        secrets: Iterable[str] = (),
        rand: Callable[[], float] = random.random,
        activity: AccountActivity | None = None,
    ) -> None:
        self._settings = settings
        self._activity = activity
        self._limiter = limiter
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        self._answer_seconds: float | None = None
        """Moving average of how long the Graph API takes to answer an attempt."""

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_mark_written)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._settings.max_connections, limit_per_host=0
                ),
                # Each attempt is bounded by the caller's deadline instead.
                timeout=aiohttp.ClientTimeout(total=None),
                trace_configs=[trace],
                raise_for_status=False,
                # The Graph API sets no cookies we need; not parsing them saves time per call.
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def add_secret(self, token: str) -> None:
        """Redact this token too (a refreshed or re-read one) from now on."""
        if token and token not in self._secrets:
            self._secrets = sorted({*self._secrets, token}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """The text with every configured access token replaced."""
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    async def send(
        self, request: GraphRequest, token: str, deadline: float, tracker: SendTracker
    ) -> SendResult:
        """POST the request, retrying where safe, before ``deadline`` (time.monotonic()).

        Raises ApiError; RateLimited when the account's rate limit does not let the send
        start before the deadline.
        """
        attempt = 0
        longest = 0.0  # this call's slowest attempt so far
        last_error: ApiError | None = None
        while True:
            attempt += 1
            await self._acquire(
                request.account_id, deadline, slot_taken=attempt == 1 and tracker.slot_taken
            )
            if last_error is not None and not self._attempt_fits(longest, 0.0, deadline):
                # The rate limiter's wait used up the time the retry needed.
                raise last_error
            await tracker.about_to_write()
            tracker.attempts = attempt
            # Earlier attempts were answered (Meta did not act) or they would not be retried.
            tracker.written = False
            started = time.perf_counter()
            try:
                result = await self._traced_attempt(request, token, deadline, tracker, attempt)
            except _AttemptFailed as failed:
                elapsed = self._observe(failed.outcome, failed.graph_code, started)
                longest = max(longest, elapsed)
                error, retry = failed.error, failed.retry
                log.debug(
                    "graph attempt failed",
                    extra={
                        "account_id": request.account_id,
                        "attempt": attempt,
                        "reason": errors_pb2.ErrorReason.Name(error.reason),
                        "retry": retry.value,
                    },
                )
                if retry is Retry.NO or attempt >= self._settings.max_attempts:
                    raise error from None
                if retry is Retry.THROTTLE:
                    delay = error.retry_after or self._backoff_cap(attempt)
                    self._limiter.hold(request.account_id, delay)
                    if self._activity is not None:
                        self._activity.note_hold(request.account_id, delay, error.message)
                else:
                    delay = self._rand() * self._backoff_cap(attempt)  # full jitter
                if not self._attempt_fits(longest, delay, deadline):
                    log.debug(
                        "no time left for another graph attempt",
                        extra={"account_id": request.account_id, "attempt": attempt},
                    )
                    raise error from None
                last_error = error
                metrics.GRAPH_RETRIES.labels(retry.value).inc()
                if retry is Retry.TRANSIENT:
                    await asyncio.sleep(delay)
                # THROTTLE: the next acquire() waits out the hold.
            else:
                self._observe("ok", "", started)
                return result

    def _attempt_fits(self, longest: float, delay: float, deadline: float) -> bool:
        """Whether an attempt started after ``delay`` can plausibly end before ``deadline``."""
        expected = max(_MIN_ATTEMPT_SECONDS, longest, self._answer_seconds or 0.0)
        return time.monotonic() + delay + expected < deadline

    def _observe(self, outcome: str, graph_code: str, started: float) -> float:
        """Record an attempt's metrics and, if it was answered, its answer time; its duration."""
        elapsed = _observe(outcome, graph_code, started)
        if outcome in _ANSWERED:
            average = self._answer_seconds
            self._answer_seconds = (
                elapsed if average is None else average + _ANSWER_TIME_WEIGHT * (elapsed - average)
            )
        return elapsed

    def take_slot_now(self, account_id: str) -> bool:
        """Take the account's next rate-limit slot if it is free now (no wait, no round
        trip); a send given :class:`SendTracker` ``slot_taken`` then uses it."""
        return self._limiter.take_now(account_id)

    def give_back_slot(self, account_id: str) -> None:
        """Return a slot :meth:`take_slot_now` took for a send that did not happen."""
        self._limiter.give_back(account_id)

    async def _acquire(self, account_id: str, deadline: float, *, slot_taken: bool) -> None:
        if slot_taken:  # the send took its slot before its claim (take_slot_now)
            metrics.RATE_LIMIT_WAITS.labels(account_id).observe(0.0)
            return
        started = time.monotonic()
        try:
            await self._limiter.acquire(account_id, deadline)
        except RateLimited:
            metrics.RATE_LIMIT_REJECTIONS.labels(account_id).inc()
            raise
        metrics.RATE_LIMIT_WAITS.labels(account_id).observe(time.monotonic() - started)

    def _url(self, url: str) -> yarl.URL:
        # Parsing the same few URLs (one per account) on every call costs more than a dict.
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            parsed = self._urls[url] = yarl.URL(url)
        return parsed

    def _backoff_cap(self, attempt: int) -> float:
        grown = self._settings.backoff_initial_seconds * 2.0 ** (attempt - 1)
        return min(self._settings.backoff_max_seconds, grown)

    async def _traced_attempt(
        self,
        request: GraphRequest,
        token: str,
        deadline: float,
        tracker: SendTracker,
        attempt: int,
    ) -> SendResult:
        """One attempt inside its CLIENT span, which records how it failed."""
        url = self._url(request.url)
        with tracing.graph_span(url, request.account_id, attempt) as span:
            try:
                return await self._attempt(request, token, deadline, tracker, attempt, span)
            except _AttemptFailed as failed:
                span.failed(failed.outcome)
                raise

    async def _attempt(
        self,
        request: GraphRequest,
        token: str,
        deadline: float,
        tracker: SendTracker,
        attempt: int,
        span: tracing.GraphSpan,
    ) -> SendResult:
        headers = {"Content-Type": "application/json"}
        url = self._url(request.url)
        if self._settings.token_in == "header":  # noqa: S105 - a mode, not a secret
            headers["Authorization"] = f"Bearer {token}"
        else:
            url = url.with_query(access_token=token)
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                async with self._http().post(
                    url,
                    data=request.body_json.encode(),
                    headers=headers,
                    allow_redirects=False,
                    trace_request_ctx=tracker,
                ) as response:
                    status = response.status
                    span.answered(status)
                    raw = await _read_bounded(response)
                    usage = response.headers.get("X-Business-Use-Case-Usage")
                    retry_after_header = response.headers.get("Retry-After")
                    app_usage = response.headers.get("X-App-Usage")
                    metrics.record_usage_headers(request.account_id, app_usage, usage)
                    if self._activity is not None:
                        self._activity.note_usage(request.account_id, app_usage, usage)
        except TimeoutError:
            if tracker.written:
                raise _AttemptFailed(
                    outcome_unknown(
                        "no answer from the Graph API before the deadline",
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ),
                    Retry.NO,
                    "timeout",
                ) from None
            raise _AttemptFailed(
                ApiError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    R.ERROR_REASON_GRAPH_UNAVAILABLE,
                    "the deadline passed before the request reached the Graph API; not sent",
                ),
                Retry.NO,
                "timeout",
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise self._not_sent(exc) from None
        except (aiohttp.ClientError, OSError) as exc:
            if not tracker.written:
                raise self._not_sent(exc) from None
            raise _AttemptFailed(
                outcome_unknown(
                    f"the connection to the Graph API broke before an answer ({type(exc).__name__})"
                ),
                Retry.NO,
                "disconnected",
            ) from None
        log.debug(
            "graph answer",
            extra={"account_id": request.account_id, "attempt": attempt, "http_status": status},
        )
        return self._read_answer(request, status, raw, usage, retry_after_header, attempt)

    def _not_sent(self, exc: BaseException) -> _AttemptFailed:
        return _AttemptFailed(
            ApiError(
                grpc.StatusCode.UNAVAILABLE,
                R.ERROR_REASON_GRAPH_UNAVAILABLE,
                f"cannot reach the Graph API ({type(exc).__name__}); nothing was sent",
            ),
            Retry.TRANSIENT,
            "connect_error",
        )

    def _read_answer(
        self,
        request: GraphRequest,
        status: int,
        raw: bytes,
        usage: str | None,
        retry_after_header: str | None,
        attempt: int,
    ) -> SendResult:
        payload: Any = None
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if 200 <= status < 300:
            if isinstance(payload, dict) and isinstance(payload.get("message_id"), str):
                recipient = payload.get("recipient_id")
                return SendResult(
                    recipient_id=recipient
                    if isinstance(recipient, str)
                    else str(request.body["recipient"]["id"]),
                    message_id=payload["message_id"],
                )
            raise _AttemptFailed(
                outcome_unknown(f"the Graph API answered HTTP {status} without a message_id"),
                Retry.NO,
                "http_error",
            )
        graph_error = parse_graph_error(payload)
        if graph_error is not None:
            wait = regain_access_seconds(usage) or self._backoff_cap(attempt)
            mapped = map_graph_error(
                graph_error,
                status,
                retry_after=wait,
                redact=self.redact,
            )
            raise _AttemptFailed(mapped.error, mapped.retry, "graph_error", str(graph_error.code))
        metadata = {"httpStatus": str(status)}
        if status == 429:
            wait = retry_after_seconds(retry_after_header) or self._backoff_cap(attempt)
            return self._raise(
                ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    R.ERROR_REASON_RATE_LIMITED,
                    "the Graph API answered HTTP 429 (too many requests)",
                    metadata=metadata,
                    retry_after=wait,
                ),
                Retry.THROTTLE,
            )
        if status == 503:
            return self._raise(
                ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    R.ERROR_REASON_GRAPH_UNAVAILABLE,
                    "the Graph API answered HTTP 503 (service unavailable)",
                    metadata=metadata,
                ),
                Retry.TRANSIENT,
            )
        if status >= 500:
            unknown = outcome_unknown(f"the Graph API answered HTTP {status} without a Graph error")
            return self._raise(
                ApiError(unknown.code, unknown.reason, unknown.message, metadata=metadata),
                Retry.NO,
            )
        return self._raise(
            ApiError(
                grpc.StatusCode.UNKNOWN,
                R.ERROR_REASON_GRAPH_ERROR,
                f"the Graph API answered HTTP {status} without a Graph error",
                metadata=metadata,
            ),
            Retry.NO,
        )

    @staticmethod
    def _raise(error: ApiError, retry: Retry) -> SendResult:
        raise _AttemptFailed(error, retry, "http_error")


# The success path's children, bound once: labels() takes a lock and a lookup per call.
_OK_CALLS = metrics.GRAPH_CALLS.labels("ok", "")
_OK_LATENCY = metrics.GRAPH_LATENCY.labels("ok")


def _observe(outcome: str, graph_code: str, started: float) -> float:
    elapsed = time.perf_counter() - started
    if outcome == "ok" and not graph_code:
        _OK_CALLS.inc()
        _OK_LATENCY.observe(elapsed)
        return elapsed
    metrics.GRAPH_CALLS.labels(outcome, graph_code).inc()
    metrics.GRAPH_LATENCY.labels(outcome).observe(elapsed)
    return elapsed


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    # Meta's answers are small; a runaway body is cut rather than held in memory.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= _MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)[:_MAX_ANSWER_BYTES]


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds until a ``Retry-After`` header's time: delay-seconds or an HTTP-date (RFC 9110).

    ``now`` is a Unix time (the current time by default). None when the header is absent,
    unreadable, or names no time in the future.
    """
    if header is None:
        return None
    text = header.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, origin unknown"
            when = when.replace(tzinfo=datetime.UTC)
        value = when.timestamp() - (time.time() if now is None else now)
    return value if value > 0 and math.isfinite(value) else None
