"""The console in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real igbutton with the sandbox on loopback.

Skipped without a Chromium (``apt-get install chromium``); IGBUTTON_REQUIRE_BROWSER=1
(as in .ci/run) makes that a failure. Screenshots of each page go to the test's tmp_path,
or to IGBUTTON_CONSOLE_SCREENSHOTS (``docs/images`` to refresh the README's).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Dialog, Page, expect

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.console.site import PREFIX
from igbutton_server.sandbox import postback_body
from tests.conftest import SettingsFactory, starting_apps
from tests.console.conftest import ADMIN_TOKEN, WAIT_MS, base_url

pytestmark = pytest.mark.browser

XSS_PAYLOAD = "<img src=x onerror=alert(1)>"
HTML_TITLE = "<i>x</i><b>y</b>"
HTML_TEXT = "<script>alert(2)</script><img src=x onerror=alert(3)>"


async def _open(browser: Any, app: App) -> tuple[Any, list[str]]:
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


async def test_compose_send_tap_and_see_the_postback_live(
    browser: Any, console_app: App, screenshots: Path
) -> None:
    context, problems = await _open(browser, console_app)
    try:
        live = await context.new_page()
        await live.goto(f"{PREFIX}/live")
        # The stream is open (its cursor exists) once the page says live.
        await expect(live.locator("#feed")).to_have_attribute("data-state", "live")

        compose = await context.new_page()
        await compose.goto(f"{PREFIX}/compose")
        await expect(compose.locator("#compose")).to_have_attribute("data-state", "valid")
        first = compose.locator('.button-slot[data-slot="0"]')
        title = first.locator('[name="title"]')
        violation = first.locator('[data-button-field="title"]')
        await expect(violation).to_be_hidden()

        # 21 characters: the violation appears next to the title, from the server's rules.
        await title.fill("A" * 21)
        await expect(violation).to_have_text("at most 20 characters, got 21")
        await expect(title).to_have_attribute("aria-invalid", "true")
        await expect(compose.locator("#compose")).to_have_attribute("data-state", "invalid")
        # The preview cuts the title where Meta's limit is.
        await expect(compose.locator("#preview-buttons .bubble-button").first).to_have_text(
            "A" * 20 + "…"
        )
        await expect(compose.locator("#graph-url")).to_contain_text("No request")
        await compose.screenshot(path=str(screenshots / "console-violation.png"), full_page=True)

        await title.fill("Yes, please")
        await first.locator('[name="payload"]').fill("ANSWER_YES_FROM_CONSOLE")
        await expect(violation).to_be_hidden()
        await expect(compose.locator("#compose")).to_have_attribute("data-state", "valid")
        await expect(compose.locator("#graph-json")).to_contain_text('"template_type": "button"')
        await expect(compose.locator('pre[data-snippet="Python"]')).to_contain_text(
            'PostbackButton("Yes, please", "ANSWER_YES_FROM_CONSOLE")'
        )
        await expect(compose.locator("#preview-text")).to_have_text("What do you want to do next?")
        # The README's first picture: the form beside the preview, as a person sees it.
        await compose.screenshot(path=str(screenshots / "console-preview.png"))
        await compose.screenshot(path=str(screenshots / "console-compose.png"), full_page=True)

        await compose.locator("#send").click()
        await expect(compose.locator("#send-result")).to_contain_text("Sent: message")
        assert console_app.sandbox is not None
        [record] = console_app.sandbox.accepted()
        await expect(compose.locator("#send-result")).to_have_attribute(
            "data-message-id", record.message_id or ""
        )

        # The conversation shows it; tapping the postback button delivers the webhook.
        await compose.locator("#send-result a").click()
        await compose.wait_for_url(f"**{PREFIX}/conversation")
        bubble = compose.locator(f'.bubble[data-message-id="{record.message_id}"]')
        await expect(bubble.locator(".bubble-text")).to_have_text("What do you want to do next?")
        await bubble.get_by_role("button", name="Yes, please").click()
        await expect(compose.locator(".notice")).to_contain_text("webhook answered 200")
        await compose.screenshot(path=str(screenshots / "console-conversation.png"))

        # ... and the live feed, open all along, shows the postback as it was stored.
        row = live.locator("#feed tbody tr").first
        await expect(row).to_contain_text("ANSWER_YES_FROM_CONSOLE")
        await expect(row).to_contain_text("Yes, please")
        await live.screenshot(path=str(screenshots / "console-live.png"))
        assert problems == []
    finally:
        await context.close()


async def test_pause_loses_nothing_and_filters_apply(browser: Any, console_app: App) -> None:
    context, problems = await _open(browser, console_app)
    try:
        live = await context.new_page()
        await live.goto(f"{PREFIX}/live")
        feed = live.locator("#feed")
        await expect(feed).to_have_attribute("data-state", "live")
        await live.locator("#pause").click()
        await expect(feed).to_have_attribute("data-state", "paused")
        await _deliver(console_app, "paused-1", "WHILE_PAUSED")
        await expect(feed.locator("tbody tr")).to_have_count(0)
        await live.locator("#pause").click()
        await expect(feed.locator("tbody tr").first).to_contain_text("WHILE_PAUSED")

        await live.locator('[name="prefix"]').fill("KEEP_")
        await live.locator("#filters button[type=submit]").click()
        await expect(feed).to_have_attribute("data-state", "live")
        await expect(feed.locator("tbody tr")).to_have_count(0)
        await _deliver(console_app, "filtered-1", "DROP_ME")
        await _deliver(console_app, "filtered-2", "KEEP_ME")
        await expect(feed.locator("tbody tr").first).to_contain_text("KEEP_ME")
        await expect(feed.locator("tbody tr")).to_have_count(1)
        assert problems == []
    finally:
        await context.close()


async def _deliver(app: App, mid: str, payload: str, title: str = "Tap") -> None:
    assert app.sandbox is not None
    body = postback_body(
        account_id=SANDBOX_ACCOUNT_ID,
        sender_id="1254477777772919",
        mid=mid,
        title=title,
        payload=payload,
    )
    assert await app.sandbox.deliver(body) == 200


async def test_html_in_postbacks_and_templates_renders_as_text(
    browser: Any, console_app: App, screenshots: Path
) -> None:
    assert console_app.send is not None
    sent = await console_app.send.servicer.send_button_template(
        send_service_pb2.SendButtonTemplateRequest(
            recipient_id="1254477777772919",
            template=bt.ButtonTemplate(
                text=HTML_TEXT,
                buttons=[
                    bt.Button(title=HTML_TITLE, postback=bt.PostbackAction(payload=XSS_PAYLOAD))
                ],
            ),
        ),
        10.0,
    )
    context, problems = await _open(browser, console_app)
    try:
        live = await context.new_page()
        await live.goto(f"{PREFIX}/live")
        await expect(live.locator("#feed")).to_have_attribute("data-state", "live")

        page = await context.new_page()
        await page.goto(f"{PREFIX}/conversation")
        bubble = page.locator(f'.bubble[data-message-id="{sent.message_id}"]')
        await expect(bubble.locator(".bubble-text")).to_have_text(HTML_TEXT)
        button = bubble.get_by_role("button", name=HTML_TITLE)
        await expect(button).to_have_text(HTML_TITLE)
        assert await bubble.locator("img, script, i, b").count() == 0
        await button.click()  # the tap delivers the payload <img src=x onerror=alert(1)>
        await expect(page.locator(".notice")).to_contain_text(HTML_TITLE)

        row = live.locator("#feed tbody tr").first
        await expect(row.locator("td").nth(5)).to_have_text(XSS_PAYLOAD)
        await expect(row.locator("td").nth(4)).to_have_text(HTML_TITLE)
        assert await live.locator("#feed img, #feed i, #feed b").count() == 0

        # The compose preview too: the title is text, not markup.
        compose = await context.new_page()
        await compose.goto(f"{PREFIX}/compose")
        await compose.locator('.button-slot[data-slot="0"] [name="title"]').fill(HTML_TITLE)
        await compose.locator('[name="text"]').fill(HTML_TEXT)
        await expect(compose.locator("#preview-text")).to_have_text(HTML_TEXT)
        await expect(compose.locator("#preview-buttons .bubble-button").first).to_have_text(
            HTML_TITLE
        )
        await expect(compose.locator("#compose")).to_have_attribute("data-state", "valid")
        assert await compose.locator("#preview img, #preview i, #preview b").count() == 0
        await live.screenshot(path=str(screenshots / "console-xss.png"))
        assert problems == []  # no alert() ran anywhere
    finally:
        await context.close()


async def test_the_csp_blocks_an_inline_script(browser: Any, console_app: App) -> None:
    context, problems = await _open(browser, console_app)
    try:
        page = await context.new_page()
        violations: list[str] = []
        page.on("console", lambda message: violations.append(message.text))
        response = await page.goto(f"{PREFIX}/compose")
        assert response is not None
        csp = await response.header_value("content-security-policy")
        assert csp is not None
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        # Whatever markup an attacker got in, an inline script does not run.
        # Resolved once the browser reported both refusals (securitypolicyviolation), not
        # after a guessed delay: then whether either ran is known.
        ran = await page.evaluate(
            """() => new Promise((resolve) => {
                window.injected = false;
                const refused = [];
                document.addEventListener("securitypolicyviolation", (e) => {
                    refused.push(e.violatedDirective);
                    if (refused.length === 2) resolve({ injected: window.injected, refused });
                });
                const s = document.createElement("script");
                s.textContent = "window.injected = true";
                document.body.append(s);
                const d = document.createElement("div");
                d.innerHTML = '<img src="/console/static/none.png" ' +
                    'onerror="window.injected = true">';
                document.body.append(d);
            })"""
        )
        assert ran["injected"] is False
        assert sorted(ran["refused"]) == ["script-src-attr", "script-src-elem"]
        assert any("Content Security Policy" in text for text in violations), violations
        assert problems == []
    finally:
        await context.close()


async def test_login_in_the_browser(browser: Any, auth_app: App, screenshots: Path) -> None:
    context, problems = await _open(browser, auth_app)
    try:
        page = await context.new_page()
        await page.goto(f"{PREFIX}/live")
        await page.wait_for_url(re.compile(rf"{PREFIX}/login\?next="))
        await expect(page.locator("nav a")).to_have_count(0)  # nothing shown before login
        await page.screenshot(path=str(screenshots / "console-login.png"))
        await page.locator('[name="token"]').fill("not-the-token-at-all")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_contain_text("admin = true")
        await page.locator('[name="token"]').fill(ADMIN_TOKEN)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"**{PREFIX}/live")
        await expect(page.locator("#feed")).to_have_attribute("data-state", "live")
        await expect(page.locator("nav a")).to_have_count(3)
        cookies = await context.cookies()
        [session] = [c for c in cookies if c["name"] == "igbutton_console"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"
        assert problems == []
    finally:
        await context.close()


async def test_pasted_request_json_fills_the_form_and_is_checked(
    browser: Any, console_app: App
) -> None:
    request = {
        "recipient_id": "1254477777772919",
        "template": {
            "text": "Pick one",
            "buttons": [
                {"title": "One", "postback": {"payload": "P1"}},
                {"title": "Two", "url": {"url": "ftp://example.com"}},
                {"title": "Three", "postback": {"payload": "P3"}},
                {"title": "Four", "postback": {"payload": "P4"}},
            ],
        },
    }
    context, problems = await _open(browser, console_app)
    try:
        page = await context.new_page()
        await page.goto(f"{PREFIX}/compose")
        await expect(page.locator("#compose")).to_have_attribute("data-state", "valid")
        await page.locator("summary").click()
        await page.locator('[name="json"]').fill(json.dumps(request))
        await page.locator("#apply-json").click()
        await expect(page.locator('[name="text"]')).to_have_value("Pick one")
        second = page.locator('.button-slot[data-slot="1"]')
        await expect(second.locator('[name="kind"]')).to_have_value("url")
        await expect(second.locator('[data-button-field="url.url"]')).to_have_text(
            "must be an absolute http or https URL"
        )
        await expect(page.locator('.violation[data-field="template.buttons"]')).to_have_text(
            "at most 3 buttons, got 4"
        )
        # The preview stops at 3 buttons, as Instagram does.
        await expect(page.locator("#preview-buttons .bubble-button")).to_have_count(3)

        await page.locator('[name="json"]').fill("{not json")
        await page.locator("#apply-json").click()
        await expect(page.locator('.violation[data-field="json"]')).to_contain_text("not JSON")
        assert problems == []
    finally:
        await context.close()


async def test_an_account_the_admin_may_not_use_is_shown_as_refused(
    browser: Any, make_settings: SettingsFactory
) -> None:
    async with starting_apps(make_settings) as start:
        app = await start(
            callers=[
                {"name": "ops", "token": ADMIN_TOKEN, "admin": True, "accounts": ["1"]},
            ]
        )
        context, problems = await _open(browser, app)
        try:
            page = await context.new_page()
            await page.goto(f"{PREFIX}/login")
            await page.locator('[name="token"]').fill(ADMIN_TOKEN)
            await page.get_by_role("button", name="Log in").click()
            await page.wait_for_url(f"**{PREFIX}/compose")
            await expect(page.locator("#compose")).to_have_attribute("data-state", "invalid")
            await expect(page.locator("#other-violations")).to_contain_text(
                f"ops may not use Instagram account {SANDBOX_ACCOUNT_ID}"
            )
            await expect(page.locator("#status")).to_have_text("1 violation")
            assert problems == []
        finally:
            await context.close()
