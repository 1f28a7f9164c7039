"""The Groups and Accounts pages over plain HTTP, against a real igbutton with the sandbox:
what they show comes from GroupService / AccountService as the logged-in caller, and every
change is a POST with the CSRF token."""

from __future__ import annotations

import asyncio
import html

import aiohttp

from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.console.site import PREFIX
from igbutton_server.storage.postbacks import caller_scope, group_key
from tests.conftest import SettingsFactory, starting_apps
from tests.console.conftest import (
    ADMIN_TOKEN,
    GROUP_WAIT,
    base_url,
    csrf_of,
    dead_lettered,
    unsubscribe_in_sandbox,
)

XSS_PAYLOAD = "<img src=x onerror=alert(1)>"


async def _get(http: aiohttp.ClientSession, app: App, path: str) -> str:
    async with http.get(base_url(app) + PREFIX + path) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def _post(
    http: aiohttp.ClientSession, app: App, path: str, data: dict[str, str]
) -> aiohttp.ClientResponse:
    return await http.post(base_url(app) + PREFIX + path, data=data, allow_redirects=False)


async def _login(http: aiohttp.ClientSession, app: App) -> None:
    csrf = csrf_of(await _get(http, app, "/login"))
    async with await _post(
        http, app, "/login", {"token": ADMIN_TOKEN, "csrf_token": csrf, "next": f"{PREFIX}/"}
    ) as response:
        assert response.status == 303


async def test_the_groups_page_shows_the_numbers_and_the_escaped_dead_letters(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    member = await dead_lettered(console_app, "billing", XSS_PAYLOAD, "m-xss")
    try:
        listing = await _get(http, console_app, "/groups")
        assert 'data-group="groups/billing"' in listing
        row = listing.split('data-group="groups/billing"', 1)[1].split("</tr>", 1)[0]
        assert '<td data-field="dead_lettered">1</td>' in row
        assert '<td data-field="unacked">0</td>' in row
        assert '<td data-field="members">1</td>' in row

        page = await _get(http, console_app, "/groups?group=groups/billing")
        assert XSS_PAYLOAD not in page  # never as markup
        assert f'<td class="mono" data-field="payload">{html.escape(XSS_PAYLOAD)}</td>' in page
        assert "nacked" in page
    finally:
        await member.close()


async def test_redrive_without_the_csrf_token_is_refused_and_with_it_delivers_again(
    engine_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(engine_settings) as start:
        await _redrive_with_and_without_csrf(await start(), http)


async def _redrive_with_and_without_csrf(console_app: App, http: aiohttp.ClientSession) -> None:
    assert console_app.group_operations is not None
    member = await dead_lettered(console_app, "billing", "REDRIVE_ME", "m-redrive")
    try:
        page = await _get(http, console_app, "/groups?group=groups/billing")
        sequence = page.split('<tr data-sequence="', 1)[1].split('"', 1)[0]
        form = {"name": "groups/billing", "sequence": sequence}
        async with await _post(http, console_app, "/groups/redrive", form) as refused:
            assert refused.status == 403
        assert (await console_app.group_operations.get_group("billing")).dead_lettered == 1

        form["csrf_token"] = csrf_of(page)
        async with await _post(http, console_app, "/groups/redrive", form) as done:
            assert done.status == 303
            assert "notice=Redriven:+1" in done.headers["Location"]
        again = await asyncio.wait_for(anext(member), GROUP_WAIT)
        assert (again.postback.payload, str(again.postback.sequence), again.attempt) == (
            "REDRIVE_ME",
            sequence,
            1,
        )
        assert (await console_app.group_operations.get_group("billing")).dead_lettered == 0
        after = await _get(http, console_app, "/groups?group=groups/billing")
        assert 'id="no-dead-letters"' in after
    finally:
        await member.close()


async def test_purge_removes_every_dead_letter(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    assert console_app.group_operations is not None
    member = await dead_lettered(console_app, "billing", "PURGE_ME", "m-purge")
    try:
        csrf = csrf_of(await _get(http, console_app, "/groups"))
        form = {"name": "groups/billing", "csrf_token": csrf}
        async with await _post(http, console_app, "/groups/purge", form) as done:
            assert done.status == 303
            assert "notice=Purged:+1" in done.headers["Location"]
        assert (await console_app.group_operations.get_group("billing")).dead_lettered == 0
    finally:
        await member.close()


async def test_an_admin_sees_and_redrives_only_groups_over_its_accounts(
    make_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(make_settings) as start:
        app = await start(
            callers=[{"name": "ops", "token": ADMIN_TOKEN, "admin": True, "accounts": ["1"]}]
        )
        assert app.group_operations is not None
        key = group_key(caller_scope("ops"), "billing")
        member = await dead_lettered(app, key, "NOT_YOURS", "m-other")
        try:
            await _login(http, app)
            listing = await _get(http, app, "/groups")
            assert "callers/ops/groups/billing" not in listing  # over the sandbox account
            assert 'id="no-groups"' in listing
            csrf = csrf_of(listing)
            form = {"name": "callers/ops/groups/billing", "csrf_token": csrf}
            async with await _post(http, app, "/groups/redrive", form) as answer:
                assert answer.status == 303
                assert "GROUP_NOT_FOUND" in answer.headers["Location"]
            page = await _get(http, app, "/groups?group=callers/ops/groups/billing")
            assert "NOT_FOUND GROUP_NOT_FOUND: no group callers/ops/groups/billing" in page
            assert "NOT_YOURS" not in page
            assert (await app.group_operations.get_group(key)).dead_lettered == 1
        finally:
            await member.close()


async def test_the_accounts_page_shows_state_and_findings_and_subscribes(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    assert console_app.sandbox is not None
    await unsubscribe_in_sandbox(console_app, http)
    page = await _get(http, console_app, "/accounts")
    section = page.split(f'data-account="{SANDBOX_ACCOUNT_ID}"', 1)[1]
    assert '<td data-field="token_status" class="sev-ok">ok</td>' in section
    assert 'data-check="subscription" data-severity="error"' in section
    assert 'data-check="token" data-severity="ok"' in section

    form = {"account_id": SANDBOX_ACCOUNT_ID}
    async with await _post(http, console_app, "/accounts/subscribe", form) as refused:
        assert refused.status == 403
    assert console_app.sandbox.account_state(SANDBOX_ACCOUNT_ID).subscribed_fields == []

    form["csrf_token"] = csrf_of(page)
    async with await _post(http, console_app, "/accounts/subscribe", form) as done:
        assert done.status == 303
    assert console_app.sandbox.account_state(SANDBOX_ACCOUNT_ID).subscribed_fields == [
        "messages",
        "messaging_postbacks",
    ]
    after = await _get(http, console_app, "/accounts")
    assert 'data-check="subscription" data-severity="ok"' in after
    assert "Subscribe to messages" not in after


async def test_an_admin_sees_only_the_accounts_it_may_use(
    make_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(make_settings) as start:
        app = await start(
            callers=[{"name": "ops", "token": ADMIN_TOKEN, "admin": True, "accounts": ["1"]}]
        )
        assert app.sandbox is not None
        await unsubscribe_in_sandbox(app, http)
        await _login(http, app)
        page = await _get(http, app, "/accounts")
        assert f'data-account="{SANDBOX_ACCOUNT_ID}"' not in page
        form = {"account_id": SANDBOX_ACCOUNT_ID, "csrf_token": csrf_of(page)}
        async with await _post(http, app, "/accounts/subscribe", form) as answer:
            assert answer.status == 303
            assert "ACCOUNT_NOT_ALLOWED" in answer.headers["Location"]
        assert app.sandbox.account_state(SANDBOX_ACCOUNT_ID).subscribed_fields == []


async def test_redrive_all_and_bad_forms(console_app: App, http: aiohttp.ClientSession) -> None:
    member = await dead_lettered(console_app, "billing", "ALL_OF_THEM", "m-all")
    try:
        csrf = csrf_of(await _get(http, console_app, "/groups"))
        bad = {"name": "groups/billing", "sequence": "1; drop", "csrf_token": csrf}
        async with await _post(http, console_app, "/groups/redrive", bad) as refused:
            assert refused.status == 400
        page = await _get(http, console_app, "/groups?group=not-a-resource-name")
        assert "INVALID_ARGUMENT" in page  # what ListDeadLetters answers, shown

        form = {"name": "groups/billing", "csrf_token": csrf}  # no sequence: all of them
        async with await _post(http, console_app, "/groups/redrive", form) as done:
            assert done.status == 303
            assert "notice=Redriven:+1" in done.headers["Location"]
        again = await asyncio.wait_for(anext(member), GROUP_WAIT)
        assert (again.postback.payload, again.attempt) == ("ALL_OF_THEM", 1)
    finally:
        await member.close()
