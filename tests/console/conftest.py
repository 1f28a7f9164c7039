"""Console fixtures: a real igbutton with the sandbox, an HTTP client that keeps the
console's cookie, and (for the browser tests) the system Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.sandbox import postback_body
from igbutton_server.storage.postbacks import Filter, GroupMember, GroupOptions, Start
from tests.conftest import SettingsFactory, starting_apps

if TYPE_CHECKING:  # the HTTP tests run without Playwright imported
    from playwright.async_api import Dialog, Page

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SERVICE_TOKEN = "service-token-0123456789abcdef"
CALLERS = [
    {"name": "ops", "token": ADMIN_TOKEN, "admin": True},
    {"name": "orders", "token": SERVICE_TOKEN},
]
"""An admin caller and a plain service caller."""
WAIT_MS = 10_000
"""Upper bound for anything a browser test waits for; reached only when broken."""

GROUP_WAIT = 10.0
"""Upper bound for a group member's delivery; reached only when broken."""

_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def base_url(app: App) -> str:
    """The operations port's address."""
    return f"http://127.0.0.1:{app.ports.http}"


def csrf_of(html: str) -> str:
    """The CSRF token a console page carries."""
    found = _CSRF_META.search(html)
    assert found is not None, "no csrf-token meta in the page"
    return found.group(1)


@pytest.fixture
async def console_app(make_settings: SettingsFactory) -> AsyncIterator[App]:
    """igbutton in sandbox mode (so the console is on by default), without caller auth."""
    async with starting_apps(make_settings) as start:
        yield await start()


@pytest.fixture
async def auth_app(make_settings: SettingsFactory) -> AsyncIterator[App]:
    """igbutton in sandbox mode with caller auth: an admin and a service caller."""
    async with starting_apps(make_settings) as start:
        yield await start(callers=CALLERS)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar ignores IPs)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


def chromium_path() -> str:
    """Debian's chromium, or skip (fail with IGBUTTON_REQUIRE_BROWSER=1) saying how to get it."""
    found = os.environ.get("IGBUTTON_CHROMIUM") or shutil.which("chromium")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is not None:
        return found
    message = "no Chromium for the console's browser tests: apt-get install chromium"
    if os.environ.get("IGBUTTON_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message} (IGBUTTON_REQUIRE_BROWSER=1 forbids skipping)")
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless system Chromium (Playwright never downloads a browser here)."""
    executable = chromium_path()
    from playwright.async_api import async_playwright, expect

    # expect()'s own default is 5 s, short on a busy 2-core CI machine.
    expect.set_options(timeout=WAIT_MS)

    async with async_playwright() as playwright:
        # --no-sandbox: tests run as root in CI, where Chromium's sandbox refuses to start;
        # --disable-dev-shm-usage: containers often give /dev/shm only 64 MB.
        instance = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield instance
        finally:
            await instance.close()


async def open_context(browser: Any, app: App) -> tuple[Any, list[str]]:
    """A fresh browser context on the console; the list collects dialogs and page errors."""
    context = await browser.new_context(
        base_url=base_url(app), viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(WAIT_MS)
    problems: list[str] = []

    def on_page(page: Page) -> None:
        async def dismiss(dialog: Dialog) -> None:
            problems.append(f"dialog: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    context.on("page", on_page)
    return context, problems


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test saves its screenshots: ``IGBUTTON_CONSOLE_SCREENSHOTS`` (to refresh
    docs/images) or the test's tmp_path."""
    named = os.environ.get("IGBUTTON_CONSOLE_SCREENSHOTS")
    folder = Path(named) if named else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def dead_lettered(app: App, key: str, payload: str, mid: str) -> GroupMember:
    """A member of a new group ``key`` (store key) over the sandbox account with one delivery
    attempt, and a postback with ``payload`` delivered through the sandbox's webhook that
    the member nacked, so the group dead-lettered it. The caller closes the member."""
    assert app.postback_store is not None
    assert app.sandbox is not None
    member = await app.postback_store.join_group(
        key,
        Filter(frozenset({SANDBOX_ACCOUNT_ID})),
        Start.latest(),
        GroupOptions(ack_deadline=30.0, max_unacked=10, max_attempts=1),
    )
    try:
        body = postback_body(
            account_id=SANDBOX_ACCOUNT_ID,
            sender_id="1254477777772919",
            mid=mid,
            title="Tap",
            payload=payload,
        )
        assert await app.sandbox.deliver(body) == 200
        delivery = await asyncio.wait_for(anext(member), GROUP_WAIT)
        assert (delivery.postback.payload, delivery.attempt) == (payload, 1)
        nacked = await app.postback_store.ack(key, [], [delivery.ack_id])
        assert nacked.applied == 1, nacked
        # JetStream stores the dead letter a moment after the nack: a bounded poll.
        assert app.group_operations is not None
        deadline = time.monotonic() + GROUP_WAIT
        while (await app.group_operations.get_group(key)).dead_lettered != 1:
            assert time.monotonic() < deadline, "the nacked postback was not dead-lettered"
            await asyncio.sleep(0.02)
    except BaseException:
        await member.close()
        raise
    return member


async def unsubscribe_in_sandbox(app: App, http: aiohttp.ClientSession) -> None:
    """Make the sandbox account unsubscribed from every webhook field at "Meta", through
    the sandbox's control API (as if nobody had enabled its webhooks yet)."""
    url = f"http://127.0.0.1:{app.ports.sandbox}/_sandbox/accounts/{SANDBOX_ACCOUNT_ID}"
    async with http.post(url, json={"subscribed_fields": []}) as response:
        assert response.status == 204, await response.text()
