"""The Groups and Accounts pages in a real browser (Debian's Chromium, headless, driven by
Playwright) against a real igbutton with the sandbox on loopback: redrive a dead letter end
to end, a dead letter's HTML payload shown as text, and an account's doctor finding fixed
with the subscribe button. Screenshots as in test_console_browser."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.console.site import PREFIX
from tests.console.conftest import (
    GROUP_WAIT,
    dead_lettered,
    open_context,
    unsubscribe_in_sandbox,
)

pytestmark = pytest.mark.browser

XSS_PAYLOAD = "<img src=x onerror=alert(1)>"


async def test_redrive_a_dead_letter(browser: Any, console_app: App, screenshots: Path) -> None:
    # Max attempts 1 and a nack: the postback is dead-lettered at once.
    member = await dead_lettered(console_app, "billing", "ORDER_42_PAID", "m-browser")
    context, problems = await open_context(browser, console_app)
    try:
        page = await context.new_page()
        await page.goto(f"{PREFIX}/groups")
        row = page.locator('#groups tr[data-group="groups/billing"]')
        await expect(row.locator('[data-field="dead_lettered"]')).to_have_text("1")
        await expect(row.locator('[data-field="members"]')).to_have_text("1")
        await row.get_by_role("link", name="groups/billing").click()

        letters = page.locator("#dead-letter-list tbody tr")
        await expect(letters).to_have_count(1)
        await expect(letters.first.locator('[data-field="payload"]')).to_have_text("ORDER_42_PAID")
        await expect(letters.first).to_contain_text("nacked")
        await page.screenshot(path=str(screenshots / "console-groups.png"), full_page=True)

        await letters.first.get_by_role("button", name="Redrive").click()
        await expect(page.get_by_role("status")).to_have_text("Redriven: 1")
        await expect(page.locator("#no-dead-letters")).to_be_visible()
        await expect(letters).to_have_count(0)

        # The member receives it again, from attempt 1, with its original sequence.
        again = await asyncio.wait_for(anext(member), GROUP_WAIT)
        assert (again.postback.payload, again.attempt) == ("ORDER_42_PAID", 1)
        # Read again once the member holds it: no longer dead, waiting for its ack.
        await page.reload()
        await expect(row.locator('[data-field="dead_lettered"]')).to_have_text("0")
        await expect(row.locator('[data-field="unacked"]')).to_have_text("1")
        await expect(row.locator('[data-field="oldest_unacked"]')).to_have_text(
            re.compile(r"^\d+\.\d s$")
        )
        assert problems == []
    finally:
        await context.close()
        await member.close()


async def test_a_dead_letters_html_payload_renders_as_text(browser: Any, console_app: App) -> None:
    member = await dead_lettered(console_app, "xss", XSS_PAYLOAD, "m-xss")
    context, problems = await open_context(browser, console_app)
    try:
        page = await context.new_page()
        await page.goto(f"{PREFIX}/groups?group=groups/xss")
        payload = page.locator('#dead-letter-list [data-field="payload"]')
        await expect(payload).to_have_text(XSS_PAYLOAD)
        assert await page.locator("#dead-letter-list img").count() == 0
        assert problems == []  # no alert() ran
    finally:
        await context.close()
        await member.close()


async def test_an_unsubscribed_account_is_found_and_fixed_with_the_subscribe_button(
    browser: Any, console_app: App, screenshots: Path
) -> None:
    assert console_app.sandbox is not None
    async with aiohttp.ClientSession() as http:
        await unsubscribe_in_sandbox(console_app, http)
    context, problems = await open_context(browser, console_app)
    try:
        page = await context.new_page()
        await page.goto(f"{PREFIX}/accounts")
        account = page.locator(f'section.account[data-account="{SANDBOX_ACCOUNT_ID}"]')
        await expect(account.locator('[data-field="token_status"]')).to_have_text("ok")
        finding = account.locator('.finding[data-check="subscription"]')
        await expect(finding).to_have_attribute("data-severity", "error")
        await expect(finding).to_contain_text("not subscribed to messaging_postbacks")
        await expect(account.locator('[data-field="subscribed_fields"]')).to_contain_text("none")
        await page.screenshot(path=str(screenshots / "console-accounts.png"), full_page=True)

        await account.get_by_role("button", name=re.compile("^Subscribe")).click()
        await expect(page.get_by_role("status")).to_contain_text(
            f"Subscribed {SANDBOX_ACCOUNT_ID}: messages, messaging_postbacks"
        )
        await expect(finding).to_have_attribute("data-severity", "ok")
        await expect(account.get_by_role("button", name=re.compile("^Subscribe"))).to_have_count(0)
        state = console_app.sandbox.account_state(SANDBOX_ACCOUNT_ID)
        assert state.subscribed_fields == ["messages", "messaging_postbacks"]
        assert problems == []
    finally:
        await context.close()
