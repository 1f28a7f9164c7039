"""The console over plain HTTP: enabling, headers, login, CSRF, the JSON calls and the
event stream, against a real igbutton with the sandbox."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from igbutton.v1 import button_template_pb2, send_service_pb2
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.config import ConfigError, Settings
from igbutton_server.console.site import PREFIX
from igbutton_server.errors import InvalidRequest
from igbutton_server.sandbox import postback_body
from igbutton_server.send.validation import validate_send
from tests.conftest import SettingsFactory, starting_apps
from tests.console.conftest import ADMIN_TOKEN, SERVICE_TOKEN, base_url, csrf_of

WAIT = 10.0


async def _page(http: aiohttp.ClientSession, app: App, path: str = "/compose") -> str:
    async with http.get(base_url(app) + PREFIX + path) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def _login(http: aiohttp.ClientSession, app: App, token: str) -> aiohttp.ClientResponse:
    async with http.get(base_url(app) + PREFIX + "/login") as form:
        csrf = csrf_of(await form.text())
    return await http.post(
        base_url(app) + PREFIX + "/login",
        data={"token": token, "csrf_token": csrf, "next": f"{PREFIX}/live"},
        allow_redirects=False,
    )


def _request_json(title: str = "Yes, please") -> dict[str, Any]:
    return {
        "recipientId": "1254477777772919",
        "template": {
            "text": "What do you want to do next?",
            "buttons": [{"title": title, "postback": {"payload": "ANSWER_YES"}}],
        },
    }


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


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str, str]]:
    """(event, id, data) of each server-sent event, comments skipped."""
    event, ident, data = "message", "", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield event, ident, data
            event, ident, data = "message", "", ""
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("id: "):
            ident = line.removeprefix("id: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")


# --- Enabling ---


def test_caller_admin_defaults_to_false(make_settings: SettingsFactory) -> None:
    settings = make_settings(callers=[{"name": "svc", "token": SERVICE_TOKEN}])
    assert settings.callers[0].admin is False


def test_console_is_on_by_default_only_in_sandbox_mode(make_settings: SettingsFactory) -> None:
    assert make_settings().console_enabled is True
    assert make_settings(sandbox={"enabled": False}).console_enabled is False
    assert make_settings(sandbox={"enabled": False}, console={"enabled": True}).console_enabled
    assert not make_settings(console={"enabled": False}).console_enabled


def test_enabling_the_console_with_callers_but_no_admin_is_refused(
    make_settings: SettingsFactory,
) -> None:
    with pytest.raises(ConfigError, match="admin = true"):
        make_settings(console={"enabled": True}, callers=[{"name": "s", "token": SERVICE_TOKEN}])


def test_the_environment_variable_enables_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGBUTTON_CONSOLE__ENABLED", "true")
    monkeypatch.setenv("IGBUTTON_WEBHOOK__ALLOW_UNSIGNED", "true")
    assert Settings.load().console_enabled is True


async def test_without_sandbox_the_console_is_not_served(
    make_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(make_settings) as start:
        app = await start(
            sandbox={"enabled": False},
            accounts=[{"id": SANDBOX_ACCOUNT_ID, "access_token": "t"}],
        )
        async with http.get(base_url(app) + PREFIX + "/compose") as response:
            assert response.status == 404
        async with http.get(base_url(app) + "/healthz") as response:
            assert response.status == 200


async def test_enabled_without_the_sandbox_it_previews_but_does_not_send(
    make_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(make_settings) as start:
        app = await start(
            sandbox={"enabled": False},
            console={"enabled": True},
            accounts=[{"id": SANDBOX_ACCOUNT_ID, "access_token": "t"}],
        )
        html = await _page(http, app, "/compose")
        assert 'id="send"' not in html
        assert "/console/conversation" not in html  # the page is not there either
        async with http.get(base_url(app) + PREFIX + "/conversation") as response:
            assert response.status == 404
        headers = {"X-CSRF-Token": csrf_of(html)}
        url = base_url(app) + PREFIX + "/compose/send"
        async with http.post(url, json=_request_json(), headers=headers) as response:
            assert response.status == 404
        url = base_url(app) + PREFIX + "/compose/validate"
        async with http.post(url, json=_request_json(), headers=headers) as response:
            assert (await response.json())["graph"]["url"].startswith(
                "https://graph.instagram.com/"
            )


# --- Headers ---


async def test_every_response_carries_a_strict_csp(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    paths = ["/compose", "/live", "/conversation", "/static/live.js", "/no-such-page"]
    for path in paths:
        async with http.get(base_url(console_app) + PREFIX + path) as response:
            csp = response.headers["Content-Security-Policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["script-src"] == "'self'", path
            assert "unsafe-inline" not in csp, path
            assert "unsafe-eval" not in csp, path
            assert directives["default-src"] == "'none'"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"


async def test_pages_have_no_inline_script(console_app: App, http: aiohttp.ClientSession) -> None:
    for path in ("/compose", "/live", "/conversation"):
        html = await _page(http, console_app, path)
        scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.DOTALL)
        assert all(body.strip() == "" for body in scripts), path
        assert not re.search(r"<[^>]+\son[a-z]+=", html), path


async def test_the_open_mode_cookie_is_httponly_and_samesite_strict(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    async with http.get(base_url(console_app) + PREFIX + "/compose") as response:
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie


# --- CSRF (open mode too) ---


async def test_a_post_without_the_csrf_token_is_refused(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    await _page(http, console_app)  # a session cookie, but no token in the request
    url = base_url(console_app) + PREFIX + "/compose/validate"
    async with http.post(url, json=_request_json()) as response:
        assert response.status == 403
    async with http.post(url, json=_request_json(), headers={"X-CSRF-Token": "x" * 43}) as r:
        assert r.status == 403
    assert console_app.sandbox is not None
    send = base_url(console_app) + PREFIX + "/compose/send"
    async with http.post(send, json=_request_json()) as response:
        assert response.status == 403
    assert console_app.sandbox.received == []


async def test_a_post_from_another_origin_is_refused(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/validate"
    headers = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    async with http.post(url, json=_request_json(), headers=headers) as response:
        assert response.status == 403
    headers["Origin"] = base_url(console_app)
    async with http.post(url, json=_request_json(), headers=headers) as response:
        assert response.status == 200


async def test_a_tap_form_without_the_csrf_token_does_not_tap(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/send"
    async with http.post(url, json=_request_json(), headers={"X-CSRF-Token": csrf}) as response:
        message_id = (await response.json())["sent"]["message_id"]
    tap = base_url(console_app) + PREFIX + "/conversation/tap"
    form = {"message_id": message_id, "button": "0"}
    async with http.post(tap, data=form, allow_redirects=False) as response:
        assert response.status == 403
    assert console_app.postback_store is not None
    async with http.post(tap, data={**form, "csrf_token": csrf}, allow_redirects=False) as r:
        assert r.status == 303
        assert "status=200" in r.headers["Location"]


# --- Compose: the RPC's validation, the Graph request, the snippets ---


async def test_validate_answers_the_rpcs_violations(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/validate"
    title = "x" * 21
    async with http.post(url, json=_request_json(title), headers={"X-CSRF-Token": csrf}) as r:
        answer = await r.json()
    # The same violation, word for word, as the validation the RPC runs.
    request = send_service_pb2.ValidateButtonTemplateRequest(
        recipient_id="1254477777772919",
        template=button_template_pb2.ButtonTemplate(
            text="What do you want to do next?",
            buttons=[
                button_template_pb2.Button(
                    title=title, postback=button_template_pb2.PostbackAction(payload="ANSWER_YES")
                )
            ],
        ),
    )
    with pytest.raises(InvalidRequest) as raised:
        validate_send(request, console_app.settings)
    expected = [{"field": v.field, "description": v.description} for v in raised.value.violations]
    assert answer["violations"] == expected
    assert answer["violations"][0]["field"] == "template.buttons[0].title"
    assert answer["error"]["code"] == "INVALID_ARGUMENT"
    assert answer["error"]["reason"] == "INVALID_REQUEST"
    assert answer["graph"] is None


async def test_validate_answers_the_exact_graph_request(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/validate"
    async with http.post(url, json=_request_json(), headers={"X-CSRF-Token": csrf}) as r:
        answer = await r.json()
    assert answer["violations"] == []
    assert answer["graph"]["method"] == "POST"
    assert answer["graph"]["url"].endswith(f"/{SANDBOX_ACCOUNT_ID}/messages")
    assert answer["graph"]["body"] == {
        "recipient": {"id": "1254477777772919"},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": "What do you want to do next?",
                    "buttons": [
                        {"type": "postback", "payload": "ANSWER_YES", "title": "Yes, please"}
                    ],
                },
            }
        },
    }
    snippets = answer["snippets"]
    assert set(snippets) == {"igbutton send", "grpcurl", "Python", "Go", "TypeScript"}
    assert f"127.0.0.1:{console_app.ports.grpc}" in snippets["grpcurl"]
    assert "--postback-button 'Yes, please=ANSWER_YES'" in snippets["igbutton send"]


async def test_json_that_is_not_a_request_is_a_violation_of_the_json(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/validate"
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    async with http.post(url, data='{"template": {"txt": 1}}', headers=headers) as response:
        answer = await response.json()
    assert [v["field"] for v in answer["violations"]] == ["json"]
    assert "txt" in answer["violations"][0]["description"]


async def test_send_goes_through_the_send_path_to_the_sandbox(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    csrf = csrf_of(await _page(http, console_app))
    url = base_url(console_app) + PREFIX + "/compose/send"
    async with http.post(url, json=_request_json(), headers={"X-CSRF-Token": csrf}) as r:
        answer = await r.json()
    assert console_app.sandbox is not None
    [record] = console_app.sandbox.accepted()
    assert answer["sent"]["message_id"] == record.message_id
    assert record.body["message"]["attachment"]["payload"]["buttons"][0]["title"] == "Yes, please"
    # An invalid one never reaches the sandbox, and says why.
    async with http.post(url, json=_request_json("x" * 21), headers={"X-CSRF-Token": csrf}) as r:
        refused = await r.json()
    assert refused["violations"][0]["field"] == "template.buttons[0].title"
    assert len(console_app.sandbox.received) == 1


# --- Login with caller auth ---


def _console_routes(app: App) -> list[tuple[str, str]]:
    """(method, path) of every console route, read from the running app's router (so a new
    page is covered without touching this test); path parameters filled in."""
    routes = []
    assert app.console is not None
    for resource in app.console.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if not path or not str(path).startswith(PREFIX):
            continue
        routes.extend((route.method, str(path)) for route in resource)
    return routes


async def test_every_console_url_needs_the_admin_login(
    auth_app: App, http: aiohttp.ClientSession
) -> None:
    routes = _console_routes(auth_app)
    assert ("GET", f"{PREFIX}/live/events") in routes
    assert ("POST", f"{PREFIX}/compose/send") in routes
    public = {f"{PREFIX}/login", f"{PREFIX}/static"}
    checked = 0
    for method, path in routes:
        if path in public or method == "HEAD":
            continue
        url = base_url(auth_app) + path.replace("{filename}", "compose.js")
        for accept in ("text/html", "text/event-stream", "application/json"):
            async with http.request(
                method, url, headers={"Accept": accept}, allow_redirects=False
            ) as response:
                if response.status == 303:
                    assert (method, accept) == ("GET", "text/html"), path
                    assert response.headers["Location"].startswith(f"{PREFIX}/login?next=")
                else:
                    assert response.status == 401, (method, path, accept, response.status)
                checked += 1
    assert checked >= 8 * 3
    assert auth_app.sandbox is not None
    assert auth_app.sandbox.received == []


async def test_the_event_stream_needs_the_login(auth_app: App, http: aiohttp.ClientSession) -> None:
    url = base_url(auth_app) + PREFIX + "/live/events"
    async with http.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 401
    # A service caller's token is no login, and neither is a forged cookie.
    response = await _login(http, auth_app, SERVICE_TOKEN)
    assert response.status == 401
    http.cookie_jar.update_cookies({"igbutton_console": "v1.b3Bz.9999999999.abc.def"})
    async with http.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 401


async def test_an_admin_login_sets_a_strict_cookie_and_opens_everything(
    auth_app: App, http: aiohttp.ClientSession
) -> None:
    response = await _login(http, auth_app, ADMIN_TOKEN)
    assert response.status == 303
    assert response.headers["Location"] == f"{PREFIX}/live"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert ADMIN_TOKEN not in cookie
    html = await _page(http, auth_app, "/live")
    assert "ops" in html  # the caller's name, with a logout form
    url = base_url(auth_app) + PREFIX + "/live/events"
    async with http.get(url, headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(WAIT):
            async for event, _, data in _sse_events(stream):
                assert event == "hello"
                assert json.loads(data)["now_ms"] > 0
                break
    # Logged in, a POST still needs its CSRF token.
    validate = base_url(auth_app) + PREFIX + "/compose/validate"
    async with http.post(validate, json=_request_json()) as refused:
        assert refused.status == 403
    csrf = csrf_of(html)
    async with http.post(validate, json=_request_json(), headers={"X-CSRF-Token": csrf}) as ok:
        assert ok.status == 200
        assert "$IGBUTTON_TOKEN" in (await ok.json())["snippets"]["grpcurl"]


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/metrics", "/console-evil"]
)
async def test_login_goes_back_only_inside_the_console(
    auth_app: App, http: aiohttp.ClientSession, target: str
) -> None:
    async with http.get(base_url(auth_app) + PREFIX + "/login") as form:
        csrf = csrf_of(await form.text())
    form_data = {"token": ADMIN_TOKEN, "csrf_token": csrf, "next": target}
    url = base_url(auth_app) + PREFIX + "/login"
    async with http.post(url, data=form_data, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == f"{PREFIX}/"


async def test_a_login_form_without_its_csrf_token_is_refused(
    auth_app: App, http: aiohttp.ClientSession
) -> None:
    url = base_url(auth_app) + PREFIX + "/login"
    async with http.post(url, data={"token": ADMIN_TOKEN}, allow_redirects=False) as response:
        assert response.status == 403
    # ... and logged nobody in.
    live = base_url(auth_app) + PREFIX + "/live"
    async with http.get(live, headers={"Accept": "text/html"}, allow_redirects=False) as page:
        assert page.status == 303


async def test_logging_out_ends_the_session(auth_app: App, http: aiohttp.ClientSession) -> None:
    assert (await _login(http, auth_app, ADMIN_TOKEN)).status == 303
    csrf = csrf_of(await _page(http, auth_app, "/compose"))
    logout = base_url(auth_app) + PREFIX + "/logout"
    async with http.post(logout, data={"csrf_token": csrf}, allow_redirects=False) as response:
        assert response.status == 303
    url = base_url(auth_app) + PREFIX + "/compose"
    async with http.get(url, headers={"Accept": "text/html"}, allow_redirects=False) as response:
        assert response.status == 303


# --- The event stream ---


async def test_the_stream_sends_postbacks_as_they_are_stored_filtered(
    engine_settings: SettingsFactory, http: aiohttp.ClientSession
) -> None:
    async with starting_apps(engine_settings) as start:
        await _stream_filtered_and_resumed(await start(), http)


async def _stream_filtered_and_resumed(console_app: App, http: aiohttp.ClientSession) -> None:
    await _page(http, console_app, "/live")
    url = base_url(console_app) + PREFIX + "/live/events?prefix=ORDER_"
    async with http.get(url) as stream:
        events = _sse_events(stream)
        async with asyncio.timeout(WAIT):
            assert (await anext(events))[0] == "hello"
            await _deliver(console_app, "mid-skip", "OTHER_1")
            await _deliver(console_app, "mid-keep", "ORDER_42", title="<b>Buy</b>")
            event, ident, data = await anext(events)
    postback = json.loads(data)
    assert event == "postback"
    assert postback["payload"] == "ORDER_42"
    assert postback["title"] == "<b>Buy</b>"
    assert ident == str(postback["sequence"])
    # Resuming after that sequence (a reconnect or a pause) continues, missing nothing.
    await _deliver(console_app, "mid-next", "ORDER_43")
    async with http.get(url + f"&after={postback['sequence']}") as stream:
        events = _sse_events(stream)
        async with asyncio.timeout(WAIT):
            assert (await anext(events))[0] == "hello"
            event, _, data = await anext(events)
    assert json.loads(data)["payload"] == "ORDER_43"


async def test_the_stream_is_a_broadcast_subscriber_that_ends_with_the_server(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    await _page(http, console_app, "/live")
    url = base_url(console_app) + PREFIX + "/live/events"
    async with http.get(url) as stream:
        events = _sse_events(stream)
        async with asyncio.timeout(WAIT):
            assert (await anext(events))[0] == "hello"
            await console_app.stop()  # closes the store: the cursor, then the stream, end
            with pytest.raises((StopAsyncIteration, aiohttp.ClientPayloadError)):
                await anext(events)


async def test_bad_stream_parameters_are_refused(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    await _page(http, console_app, "/live")
    base = base_url(console_app) + PREFIX + "/live/events"
    for query in ("?after=-1", "?after=x", "?after=%C2%B2", "?account=a%20b", "?since_ms=soon"):
        async with http.get(base + query) as response:
            assert response.status == 400, query


async def test_the_start_log_names_the_console_url(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="igbutton_server.app")
    async with starting_apps(make_settings) as start:
        app = await start()
    url = f"http://127.0.0.1:{app.ports.http}/console/"
    assert any(r.getMessage() == f"web console at {url}" for r in caplog.records)


async def test_the_stream_answers_503_when_the_store_cannot_serve(
    console_app: App, http: aiohttp.ClientSession
) -> None:
    await _page(http, console_app, "/live")
    assert console_app.postback_store is not None
    await console_app.postback_store.close()  # as during shutdown: StoreClosed
    async with http.get(base_url(console_app) + PREFIX + "/live/events") as response:
        assert response.status == 503
        assert "shutting down" in await response.text()
