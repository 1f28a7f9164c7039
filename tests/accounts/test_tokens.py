"""Token lifecycle against the sandbox on loopback, on both storage engines: refresh before
expiry, the refreshed token kept over a restart, 190 marking the account, a rewritten token
file picked up, failures retried with backoff. Every test also checks that no token leaks
(tests/accounts/conftest.py)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.accounts.tokens import TokenStatus
from igbutton_server.app import App
from igbutton_server.sandbox import Fault, Sandbox
from igbutton_server.storage.sqlite.tokens import tokens_path
from tests.accounts.conftest import ACCOUNT, SEED_TOKEN, Secrets, account_settings, eventually
from tests.conftest import Engine, SettingsFactory, on_engines, starting_apps
from tests.send.conftest import details, send_request


def refreshes(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "igbutton_account_token_refreshes_total", {"account": ACCOUNT, "result": result}
    )
    return value or 0.0


async def send(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        await stub.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=10)


async def send_error(app: App) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(app)
    return caught.value


async def test_a_due_token_is_refreshed_and_the_next_send_uses_it(
    engine_settings: SettingsFactory, sandbox: Sandbox
) -> None:
    ok_before = refreshes("ok")
    async with starting_apps(engine_settings) as start:
        app = await start(**account_settings(sandbox))
        await eventually(lambda: sandbox.account_state(ACCOUNT).refreshes == 1)
        await eventually(
            lambda: (
                app.tokens is not None
                and app.tokens.record(ACCOUNT) is not None
                and app.tokens.record(ACCOUNT).refreshed_ms is not None
            )
        )  # type: ignore[union-attr]
        await send(app)
    assert sandbox.received[-1].token_generation == 1  # the refreshed token, not the seed
    assert sandbox.received[-1].accepted
    # Refreshed for 90 days: not due again, so exactly one refresh call.
    assert sandbox.account_state(ACCOUNT).refresh_calls == 1
    assert refreshes("ok") == ok_before + 1
    expiry = REGISTRY.get_sample_value(
        "igbutton_account_token_expiry_timestamp_seconds", {"account": ACCOUNT}
    )
    assert expiry is not None
    assert abs(expiry - (time.time() + 90 * 24 * 3600)) < 120


async def test_the_refreshed_token_survives_a_restart(
    engine_settings: SettingsFactory, engine: Engine, sandbox: Sandbox, tmp_path: Path
) -> None:
    async with starting_apps(engine_settings) as start:
        first = await start(**account_settings(sandbox))
        await eventually(lambda: sandbox.account_state(ACCOUNT).refreshes == 1)
        assert first.tokens is not None
        await eventually(lambda: first.tokens.record(ACCOUNT).refreshed_ms is not None)  # type: ignore[union-attr]
        await first.stop()
        second = await start(**account_settings(sandbox))
        await send(second)
        assert second.tokens is not None
        assert second.tokens.status(ACCOUNT) is TokenStatus.OK
    assert sandbox.received[-1].token_generation == 1
    assert sandbox.account_state(ACCOUNT).refresh_calls == 1  # the second did not refresh
    if engine.name == "sqlite":
        path = tokens_path(tmp_path / "igbutton.db")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert SEED_TOKEN not in (tmp_path / "igbutton.db").read_bytes().decode("latin-1")


async def test_a_190_marks_the_account_until_a_new_token_is_configured(
    engine_settings: SettingsFactory, sandbox: Sandbox, tmp_path: Path, no_token_leaks: Secrets
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SEED_TOKEN + "\n")
    async with starting_apps(engine_settings) as start:
        # No refresh in this test: the margin is short.
        app = await start(
            **account_settings(sandbox, token_file=token_file, refresh_margin_seconds=1)
        )
        sandbox.add_fault(
            Fault(kind="graph_error", code=190, subcode=463, error_type="OAuthException")
        )
        first = details(await send_error(app))
        assert first.reason == "ACCESS_TOKEN_INVALID"
        assert app.tokens is not None
        assert app.tokens.status(ACCOUNT) is TokenStatus.REAUTHORIZATION_REQUIRED
        reached = len(sandbox.received)
        second = details(await send_error(app))
        assert (second.code, second.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REAUTHORIZATION_REQUIRED",
        )
        assert second.metadata == {"accountId": ACCOUNT}
        assert len(sandbox.received) == reached  # not sent
        for error in (first, second):  # no token in what the caller sees
            assert SEED_TOKEN not in f"{error.message} {error.metadata} {error.violations}"
        status = REGISTRY.get_sample_value(
            "igbutton_account_status", {"account": ACCOUNT, "status": "reauthorization_required"}
        )
        assert status == 1
        # A person logs in again; the operator writes the new token to the file.
        new_token = "IGAAnew-token-after-logging-in-again-0002"
        no_token_leaks.tokens.add(new_token)
        sandbox.tokens.add(ACCOUNT, new_token)
        token_file.write_text(new_token + "\n")
        await eventually(lambda: app.tokens.status(ACCOUNT) is TokenStatus.OK)  # type: ignore[union-attr]
        await send(app)
    assert sandbox.received[-1].accepted


async def test_a_rewritten_token_file_is_used_without_a_restart(
    engine_settings: SettingsFactory, sandbox: Sandbox, tmp_path: Path, no_token_leaks: Secrets
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SEED_TOKEN)
    rotated = "IGAArotated-token-written-by-the-operator-3"
    no_token_leaks.tokens.add(rotated)
    async with starting_apps(engine_settings) as start:
        # Files are checked every hour here: only SIGHUP (reload_tokens) makes it re-read.
        app = await start(
            **account_settings(
                sandbox,
                token_file=token_file,
                refresh_margin_seconds=1,
                check_interval_seconds=3600,
            )
        )
        await send(app)
        sandbox.tokens.revoke(ACCOUNT)  # the old token is dead at Meta
        sandbox.tokens.add(ACCOUNT, rotated)
        token_file.write_text(rotated)
        app.reload_tokens()
        assert app.tokens is not None
        await eventually(lambda: app.tokens.token(ACCOUNT) == rotated)  # type: ignore[union-attr]
        await send(app)
    assert sandbox.received[-1].accepted


async def test_a_failed_refresh_is_retried_with_backoff_and_counted(
    engine_settings: SettingsFactory, sandbox: Sandbox
) -> None:
    sandbox.tokens.min_refresh_age_seconds = 3600  # Meta: "too young"
    failed_before = refreshes("failed")
    async with starting_apps(engine_settings) as start:
        app = await start(**account_settings(sandbox))
        await eventually(lambda: sandbox.account_state(ACCOUNT).refresh_calls >= 3)
        # Counted once igbutton has read the third answer, a moment after the sandbox
        # counted the call.
        await eventually(lambda: refreshes("failed") >= failed_before + 3)
        assert app.tokens is not None
        assert "too recent" in app.tokens.last_error(ACCOUNT)
        assert app.tokens.status(ACCOUNT) is TokenStatus.OK  # not a dead token
        started = time.monotonic()
        calls = sandbox.account_state(ACCOUNT).refresh_calls
        sandbox.tokens.min_refresh_age_seconds = 0
        await eventually(lambda: sandbox.account_state(ACCOUNT).refreshes == 1)
        # The backoff spaced the attempts (at most 0.2 s apart here, at least half of it).
        assert sandbox.account_state(ACCOUNT).refresh_calls <= calls + 2
        assert time.monotonic() - started < 5
        await eventually(lambda: app.tokens.record(ACCOUNT).refreshed_ms is not None)  # type: ignore[union-attr]
        await send(app)
    assert sandbox.received[-1].token_generation == 1


@on_engines("sqlite")
async def test_a_refresh_answered_190_marks_the_account(
    engine_settings: SettingsFactory, sandbox: Sandbox
) -> None:
    rejected_before = refreshes("rejected")
    sandbox.tokens.revoke(ACCOUNT)
    async with starting_apps(engine_settings) as start:
        app = await start(**account_settings(sandbox))
        assert app.tokens is not None
        await eventually(
            lambda: app.tokens.status(ACCOUNT) is TokenStatus.REAUTHORIZATION_REQUIRED  # type: ignore[union-attr]
        )
        assert refreshes("rejected") == rejected_before + 1
        error = details(await send_error(app))
        assert error.reason == "REAUTHORIZATION_REQUIRED"
    assert sandbox.account_state(ACCOUNT).refresh_calls == 0  # revoked: refused before
