"""The SQLite store under real faults: its file removed while running, the file locked by
another connection, a corrupt file at start. Readiness follows the store's ability to write,
webhooks stop answering 200, and sends fail fast with UNAVAILABLE / STORAGE_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest

from igbutton_server.app import App
from igbutton_server.sandbox import Fault
from tests.conftest import SettingsFactory
from tests.postbacks.conftest import WebhookClient, delivery, eventually, postbacks, webhook_url
from tests.send.conftest import details, send_request, stub_for

REPO = Path(__file__).resolve().parents[2]
RID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
async def app(make_settings: SettingsFactory) -> AsyncIterator[App]:
    instance = App(make_settings(webhook={"app_secrets": ["test-app-secret"]}))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def _readyz(http: aiohttp.ClientSession, app: App) -> tuple[int, dict[str, str]]:
    async with http.get(f"http://127.0.0.1:{app.ports.http}/readyz") as resp:
        return resp.status, await resp.json()


async def _until_readyz(
    http: aiohttp.ClientSession, app: App, status: int, seconds: float = 10.0
) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while True:
        got, body = await _readyz(http, app)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz stayed {got} {body}"
        await asyncio.sleep(0.05)


async def test_removed_file_stops_200s_and_readiness(app: App, tmp_path: Path) -> None:
    path = tmp_path / "igbutton.db"
    async with aiohttp.ClientSession() as http:
        client = WebhookClient(http, webhook_url(app))
        await client.deliver(*postbacks("before", 1))
        assert (await _readyz(http, app))[0] == 200
        path.unlink()
        body = await _until_readyz(http, app, 503)
        assert "removed or replaced" in body["reason"]
        status, _ = await client.post(delivery(*postbacks("after", 1)))
        assert status == 503
    async with stub_for(app) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert time.monotonic() - started < 5
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
    assert "SQLite" in got.message
    assert app.sandbox is not None
    assert app.sandbox.received == []


async def test_locked_file_fails_sends_fast_and_recovers(app: App, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "igbutton.db", isolation_level=None, timeout=5)
    try:
        other.execute("BEGIN EXCLUSIVE")
        async with stub_for(app) as stub:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
            assert time.monotonic() - started < 5
            got = details(caught.value)
            assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            assert "locked" in got.message
            async with aiohttp.ClientSession() as http:
                assert "locked" in (await _until_readyz(http, app, 503))["reason"]
                other.execute("ROLLBACK")
                await _until_readyz(http, app, 200)
            answer = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
            assert answer.message_id
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def test_corrupt_file_at_start_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "igbutton.db"
    path.write_bytes(b"this is not a SQLite database, just garbage " * 200)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}
    env.update(
        {
            "IGBUTTON_STORAGE__SQLITE_PATH": str(path),
            "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
            "IGBUTTON_HTTP__PORT": "0",
            "IGBUTTON_WEBHOOK__PORT": "0",
            "IGBUTTON_WEBHOOK__APP_SECRETS": '["s"]',
            "IGBUTTON_SANDBOX__ENABLED": "false",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "igbutton_server"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr.decode()
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr
    # Log lines of the start and stop may come before it; the cause is one line, the last.
    said = [line for line in stderr.splitlines() if "corrupt" in line]
    assert said == [stderr.splitlines()[-1]], stderr
    assert said[0].startswith("igbutton-server: cannot start: SQLite file ")
    assert str(path) in said[0]


async def test_a_release_the_locked_file_refused_does_not_block_the_retry(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Meta answers a transient error (it did not act), but the file is locked when the
    claim is to be released: the caller is told to retry, and its retry must send, not wait
    out the claim's lease as "in progress"."""
    instance = App(make_settings(graph={"max_attempts": 1}))
    await instance.start()
    other = sqlite3.connect(tmp_path / "igbutton.db", isolation_level=None, timeout=5)
    try:
        assert instance.sandbox is not None
        instance.sandbox.add_fault(
            Fault(kind="graph_error", code=2, is_transient=True, delay_seconds=1.0)
        )
        async with stub_for(instance) as stub:
            first = asyncio.ensure_future(
                stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
            )
            await eventually(_received(instance, 1))  # claimed and marked written: at Meta
            other.execute("BEGIN EXCLUSIVE")  # the release that follows the answer fails
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await first
            assert details(caught.value).reason == "GRAPH_UNAVAILABLE"
            other.execute("ROLLBACK")
            async with aiohttp.ClientSession() as http:
                await _until_readyz(http, instance, 200)
            reply = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert reply.message_id
        assert len(instance.sandbox.received) == 2
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        await instance.stop()


def _received(app: App, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert app.sandbox is not None
        return len(app.sandbox.received) >= count

    return check
