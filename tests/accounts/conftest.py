"""Fixtures for the accounts tests: an external sandbox, and a check that no token leaks.

Every test here runs under ``no_token_leaks``: it captures every log record of the whole
test (DEBUG and up, every logger), formats each with the JSON formatter (so ``extra``
fields count), and at the end asserts that no token the sandbox ever issued or accepted,
nor any token a test registered, appears in any of them, nor in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from igbutton_server.logs import JsonFormatter
from igbutton_server.sandbox import Sandbox

ACCOUNT = "17841400000000000"
SEED_TOKEN = "IGAAseed-token-of-the-test-account-0001"
APP_SECRET = "accounts-test-app-secret"
RECIPIENT = "1234567890123456"


@dataclass
class Secrets:
    """Tokens that must never be seen in a log line or a metric."""

    tokens: set[str] = field(default_factory=lambda: {SEED_TOKEN})
    sandboxes: list[Sandbox] = field(default_factory=list)

    def all(self) -> set[str]:
        found = set(self.tokens)
        for box in self.sandboxes:
            found.update(box.tokens.issued())
        return {t for t in found if t}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self._json.format(record))


@pytest.fixture(autouse=True)
def no_token_leaks() -> Iterator[Secrets]:
    secrets = Secrets()
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield secrets
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    tokens = secrets.all()
    assert capture.lines, "no log line was captured: the check would prove nothing"
    leaked = [line for line in capture.lines if any(t in line for t in tokens)]
    assert leaked == [], "a token appeared in the log"
    exposition = prometheus_client.generate_latest().decode()
    assert not any(t in exposition for t in tokens), "a token appeared in the metrics"


@pytest.fixture
async def sandbox(no_token_leaks: Secrets) -> AsyncIterator[Sandbox]:
    """A sandbox of the test's own (not in the App, so it outlives App restarts): tokens
    refreshable at once, valid 90 days, the test account's seed token accepted."""
    box = Sandbox(
        "127.0.0.1",
        0,
        tokens={ACCOUNT: SEED_TOKEN},
        min_refresh_age_seconds=0,
        token_lifetime_seconds=90 * 24 * 3600,
    )
    no_token_leaks.sandboxes.append(box)
    await box.start()
    try:
        yield box
    finally:
        await box.stop()


def account_settings(
    sandbox: Sandbox, *, token_file: Path | None = None, **tokens: Any
) -> dict[str, Any]:
    """Settings overrides: the App sends to the external sandbox, refreshes as soon as it
    may (a token whose expiry is unknown is taken to expire in 60 days, within the 61-day
    margin; one refreshed for 90 days is not due again), and checks every 50 ms."""
    account: dict[str, Any] = {"id": ACCOUNT}
    if token_file is not None:
        account["access_token_file"] = str(token_file)
    else:
        account["access_token"] = SEED_TOKEN
    return {
        "sandbox": {"enabled": False},
        "graph": {"base_url": sandbox.url},
        "accounts": [account],
        "webhook": {"app_secrets": [APP_SECRET]},
        "tokens": {
            "min_age_seconds": 0,
            "refresh_margin_seconds": 61 * 24 * 3600,
            "check_interval_seconds": 0.05,
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.2,
            **tokens,
        },
    }


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], within: float = 15.0
) -> None:
    """Poll ``check`` (every 20 ms) until it holds, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)  # a polling interval, not a synchronisation
