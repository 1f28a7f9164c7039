"""Console fixtures: a real igbutton with the sandbox, an HTTP client that keeps the
console's cookie, and (for the browser tests) the system Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from igbutton_server.app import App
from tests.conftest import SettingsFactory, starting_apps

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SERVICE_TOKEN = "service-token-0123456789abcdef"
CALLERS = [
    {"name": "ops", "token": ADMIN_TOKEN, "admin": True},
    {"name": "orders", "token": SERVICE_TOKEN},
]
"""An admin caller and a plain service caller."""
WAIT_MS = 10_000
"""Upper bound for anything a browser test waits for; reached only when broken."""

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


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test saves its screenshots: ``IGBUTTON_CONSOLE_SCREENSHOTS`` (to refresh
    docs/images) or the test's tmp_path."""
    named = os.environ.get("IGBUTTON_CONSOLE_SCREENSHOTS")
    folder = Path(named) if named else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
