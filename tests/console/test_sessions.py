"""The console's session cookies and CSRF tokens (igbutton_server.console.security)."""

from __future__ import annotations

import time

import pytest

from igbutton_server.config import Caller, ConsoleSettings
from igbutton_server.console.security import Sessions, csrf_ok
from tests.console.conftest import ADMIN_TOKEN, SERVICE_TOKEN


def _callers(admin_token: str = ADMIN_TOKEN) -> list[Caller]:
    return [
        Caller.model_validate({"name": "ops", "token": admin_token, "admin": True}),
        Caller.model_validate({"name": "orders", "token": SERVICE_TOKEN}),
    ]


def test_a_login_cookie_names_its_caller_and_holds_no_token() -> None:
    sessions = Sessions(_callers(), ConsoleSettings())
    caller = sessions.admin_by_token(ADMIN_TOKEN)
    assert caller is not None
    value, issued = sessions.new_cookie(caller)
    assert ADMIN_TOKEN not in value
    read = sessions.read(value)
    assert read is not None
    assert read.caller == caller
    assert read.csrf_token == issued.csrf_token
    assert csrf_ok(read, issued.csrf_token)
    last = issued.csrf_token[-1]
    assert not csrf_ok(read, issued.csrf_token[:-1] + ("B" if last == "A" else "A"))


def test_only_admin_tokens_log_in() -> None:
    sessions = Sessions(_callers(), ConsoleSettings())
    assert sessions.admin_by_token(SERVICE_TOKEN) is None
    assert sessions.admin_by_token("x" * 32) is None
    assert sessions.admin_by_token("") is None


def test_tampered_or_foreign_cookies_are_refused() -> None:
    sessions = Sessions(_callers(), ConsoleSettings())
    caller = sessions.admin_by_token(ADMIN_TOKEN)
    value, _ = sessions.new_cookie(caller)
    version, name, expires, nonce, mac = value.split(".")
    assert sessions.read(f"{version}.{name}.{int(expires) + 1}.{nonce}.{mac}") is None
    assert sessions.read(f"{version}.b3JkZXJz.{expires}.{nonce}.{mac}") is None  # "orders"
    assert sessions.read(value[:-2]) is None
    assert sessions.read("garbage") is None
    # An anonymous session (before login) is never a login.
    anonymous, _ = sessions.new_cookie(None)
    read = sessions.read(anonymous)
    assert read is not None
    assert read.caller is None


def test_rotating_the_admin_token_ends_its_sessions() -> None:
    before = Sessions(_callers(), ConsoleSettings())
    value, _ = before.new_cookie(before.admin_by_token(ADMIN_TOKEN))
    same_config = Sessions(_callers(), ConsoleSettings())  # another replica
    assert same_config.read(value) is not None
    rotated = Sessions(_callers("rotated-admin-token-0123456789"), ConsoleSettings())
    assert rotated.read(value) is None


def test_a_session_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(_callers(), ConsoleSettings(session_seconds=60))
    value, _ = sessions.new_cookie(sessions.admin_by_token(ADMIN_TOKEN))
    assert sessions.read(value) is not None
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert sessions.read(value) is None


def test_open_mode_sessions_are_this_process_own() -> None:
    one, other = Sessions([], ConsoleSettings()), Sessions([], ConsoleSettings())
    value, _ = one.new_cookie(None)
    assert one.read(value) is not None
    assert other.read(value) is None
    assert not one.login_required
