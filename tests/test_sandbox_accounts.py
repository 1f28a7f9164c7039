"""The sandbox's token refresh, me, subscribed_apps and dashboard test deliveries, over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from igbutton_server.sandbox import Sandbox
from igbutton_server.sandbox.tap import SIGNATURE_HEADER, sign

ACCOUNT = "17841400000000001"
TOKEN = "seed-token-of-account-1"
APP_SECRET = b"sandbox-test-app-secret"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(**kwargs: Any) -> Sandbox:
    box = Sandbox(tokens={ACCOUNT: TOKEN}, **kwargs)
    await box.start()
    return box


@pytest.fixture
async def young() -> AsyncIterator[Sandbox]:
    """Meta's rules: a token can be refreshed only once it is a day old."""
    box = await start()
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture
async def box() -> AsyncIterator[Sandbox]:
    """Tokens refreshable at once, each valid one hour."""
    sandbox = await start(min_refresh_age_seconds=0, token_lifetime_seconds=3600)
    try:
        yield sandbox
    finally:
        await sandbox.stop()


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def refresh(http: aiohttp.ClientSession, box: Sandbox, token: str) -> tuple[int, Any]:
    return await get(
        http,
        f"{box.url}/refresh_access_token",
        grant_type="ig_refresh_token",
        access_token=token,
    )


async def test_refresh_answers_a_new_token_with_its_lifetime(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    status, body = await refresh(http, box, TOKEN)
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"] != TOKEN
    assert box.account_state(ACCOUNT).refreshes == 1
    # Both work until their own expiry; the new one is generation 1.
    for token, generation in ((TOKEN, 0), (body["access_token"], 1)):
        issued = box.tokens.check(token)
        assert not isinstance(issued, Exception)
        assert getattr(issued, "generation", None) == generation


async def test_a_token_younger_than_a_day_is_not_refreshed(
    http: aiohttp.ClientSession, young: Sandbox
) -> None:
    status, body = await refresh(http, young, TOKEN)
    assert status == 400
    assert body["error"]["code"] == 100
    assert "24 hours" in body["error"]["message"]
    assert young.account_state(ACCOUNT).refreshes == 0
    assert young.account_state(ACCOUNT).refresh_calls == 1
    young.set_tokens({ACCOUNT: TOKEN}, age_seconds=2 * 24 * 3600)
    status, body = await refresh(http, young, TOKEN)
    assert status == 200, body


async def test_an_expired_token_cannot_be_refreshed_or_used(
    http: aiohttp.ClientSession,
) -> None:
    box = await start(min_refresh_age_seconds=0, token_lifetime_seconds=3600)
    try:
        box.set_tokens({ACCOUNT: TOKEN}, age_seconds=7200)  # issued 2 h ago, valid 1 h
        status, body = await refresh(http, box, TOKEN)
        assert status == 400
        assert body["error"]["code"] == 190
        assert body["error"]["error_subcode"] == 463
        assert body["error"]["type"] == "OAuthException"
        assert "Session has expired" in body["error"]["message"]
        status, body = await get(http, f"{box.url}/v25.0/me", access_token=TOKEN)
        assert (status, body["error"]["code"]) == (400, 190)
    finally:
        await box.stop()


async def test_refresh_of_an_unknown_token_or_wrong_grant_fails(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    status, body = await refresh(http, box, "never-issued")
    assert (status, body["error"]["code"]) == (400, 190)
    status, body = await get(
        http, f"{box.url}/refresh_access_token", grant_type="other", access_token=TOKEN
    )
    assert (status, body["error"]["code"]) == (400, 100)


async def test_me_names_the_account_of_the_token(http: aiohttp.ClientSession, box: Sandbox) -> None:
    async with http.get(
        f"{box.url}/v25.0/me",
        params={"fields": "user_id,username"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["user_id"] == ACCOUNT
    assert body["username"] == f"sandbox_{ACCOUNT}"


async def test_subscribed_apps_reads_and_replaces_the_fields(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    url = f"{box.url}/v25.0/me/subscribed_apps"
    status, body = await get(http, url, access_token=TOKEN)
    assert (status, body) == (200, {"data": []})
    async with http.post(
        url, params={"subscribed_fields": "messages,messaging_postbacks", "access_token": TOKEN}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"success": True}
    status, body = await get(http, url, access_token=TOKEN)
    assert status == 200
    assert body["data"][0]["subscribed_fields"] == ["messages", "messaging_postbacks"]
    async with http.post(
        url, params={"subscribed_fields": "no_such_field", "access_token": TOKEN}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 100
    assert box.account_state(ACCOUNT).subscribed_fields == ["messages", "messaging_postbacks"]


async def test_a_revoked_token_answers_190_on_sends(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    box.tokens.revoke(ACCOUNT)
    async with http.post(
        f"{box.url}/v25.0/{ACCOUNT}/messages",
        data=b"{}",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json()
    assert body["error"]["code"] == 190
    assert body["error"]["error_subcode"] == 460
    assert box.received[-1].token_generation == 0


async def test_test_delivery_is_the_dashboard_changes_form_signed(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    seen: list[tuple[bytes, str | None]] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get(SIGNATURE_HEADER)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        box.set_webhook(f"http://127.0.0.1:{port}/hook", APP_SECRET)
        async with http.post(
            f"{box.url}/_sandbox/test_delivery", json={"payload": "HELLO"}
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["webhook_status"] == 200
    finally:
        await runner.cleanup()
    [(body, signature)] = seen
    assert signature == sign(body, APP_SECRET)
    document = json.loads(body)
    [entry] = document["entry"]
    assert entry["id"] == "0"
    [change] = entry["changes"]
    assert change["field"] == "messaging_postbacks"
    assert change["value"]["postback"]["payload"] == "HELLO"
    assert "messaging" not in entry


async def test_accepting_any_token_me_and_refresh_answer_100_not_190(
    http: aiohttp.ClientSession,
) -> None:
    box = Sandbox()  # no tokens: any non-empty token is accepted for sends
    await box.start()
    try:
        status, body = await get(http, f"{box.url}/v25.0/me", access_token="whatever")
        assert (status, body["error"]["code"]) == (400, 100)
        status, body = await refresh(http, box, "whatever")
        assert (status, body["error"]["code"]) == (400, 100)
    finally:
        await box.stop()


async def test_the_control_api_sets_an_accounts_fields_and_name(
    http: aiohttp.ClientSession, box: Sandbox
) -> None:
    url = f"{box.url}/_sandbox/accounts/{ACCOUNT}"
    async with http.post(url, json={"subscribed_fields": ["messages"], "username": "shop"}) as r:
        assert r.status == 204
    async with http.get(url) as r:
        state = await r.json()
    assert (state["subscribed_fields"], state["username"]) == (["messages"], "shop")
    assert TOKEN not in json.dumps(state)  # never a token
    async with http.post(url, json={"subscribed_fields": "messages"}) as r:
        assert r.status == 400
