"""The SQLite store when its disk fails it while the App runs: a full filesystem (a tmpfs of
a few MiB the test mounts), a read-only filesystem (at start: a read-only bind mount; while
running: SQLite's own read-only error, injected), and pages of the file corrupted under it.

Each time: /readyz 503 naming the file, webhooks 503 (never 200 for a postback not stored),
sends with a request_id UNAVAILABLE / STORAGE_UNAVAILABLE at once, and one clear log line,
not a traceback per call. Mounting needs root (CI runs as root, with
IGBUTTON_REQUIRE_ROOT_FS=1 so these tests fail instead of skipping there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from igbutton_server.app import App
from igbutton_server.storage.postbacks import Filter, Start, StorageUnavailable
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore
from tests.conftest import AppFactory, SettingsFactory, starting_apps
from tests.postbacks.conftest import WebhookClient, delivery, eventually, postbacks, webhook_url
from tests.send.conftest import details, send_request, stub_for

REPO = Path(__file__).resolve().parents[2]
RID = "0b9f5c7e-1d2a-4c3b-8e4f-5a6b7c8d9e0f"
FAST_SECONDS = 3.0
"""A fast failure: well inside the call's 10 s deadline (a lock waits 1 s)."""
FS_BYTES = 4 * 1024 * 1024


def _root_fs_or_skip(why: str) -> None:
    if os.environ.get("IGBUTTON_REQUIRE_ROOT_FS") == "1":
        pytest.fail(f"IGBUTTON_REQUIRE_ROOT_FS=1 but {why}")
    pytest.skip(
        f"{why}: mounting a test filesystem needs root (CI sets IGBUTTON_REQUIRE_ROOT_FS=1)"
    )


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def _mounted(target: Path, *mount_args: str) -> Iterator[Path]:
    """``mount <mount_args> <target>``, unmounted on exit (also when the test fails)."""
    if os.geteuid() != 0:
        _root_fs_or_skip("not running as root")
    target.mkdir(parents=True, exist_ok=True)
    done = _run("mount", *mount_args, str(target))
    if done.returncode != 0:
        _root_fs_or_skip(f"mount {' '.join(mount_args)} failed: {done.stderr.strip()}")
    try:
        yield target
    finally:
        if _run("umount", str(target)).returncode != 0:
            _run("umount", "-l", str(target))  # still busy: detach it now, freed when unused


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_BYTES, mounted for this test."""
    with _mounted(tmp_path / "small", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs") as fs:
        yield fs


@pytest.fixture
async def start(make_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    async with starting_apps(make_settings) as factory:
        yield factory


async def _readyz(http: aiohttp.ClientSession, app: App) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{app.ports.http}/readyz") as resp:
        return resp.status, await resp.text()


async def _until_readyz(http: aiohttp.ClientSession, app: App, status: int) -> str:
    async def reached() -> bool:
        return (await _readyz(http, app))[0] == status

    await eventually(reached)
    return (await _readyz(http, app))[1]


async def _send_fails_fast(app: App) -> str:
    """A send with a request_id: UNAVAILABLE / STORAGE_UNAVAILABLE, fast; its message."""
    async with stub_for(app) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert time.monotonic() - started < FAST_SECONDS
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"), got
    return got.message


def _fill(fs: Path) -> Path:
    """Write a file until the filesystem has no room left; the file."""
    filler = fs / "filler"
    with filler.open("wb") as out:
        for size in (1024 * 1024, 4096, 512):  # big steps, then the last pages
            with pytest.raises(OSError, match="No space left") as full:  # noqa: PT012 - until full
                while True:
                    out.write(b"\0" * size)
                    out.flush()
            assert full.value.errno == errno.ENOSPC, full.value
        with contextlib.suppress(OSError):  # some of the last write may not have fitted
            out.close()
    return filler


def _stored_mids(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {mid for (mid,) in db.execute("SELECT mid FROM postbacks")}


async def test_a_full_disk_refuses_what_it_cannot_store_and_recovers(
    start: AppFactory, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_fs / "igbutton.db"
    app = await start(storage={"sqlite_path": str(path)})
    acknowledged: list[str] = []
    refused: list[str] = []
    filler: Path | None = None
    async with aiohttp.ClientSession() as http:
        client = WebhookClient(http, webhook_url(app))
        for item in postbacks("before", 5):
            await client.deliver(item)
            acknowledged.append(item["postback"]["mid"])
        filler = _fill(small_fs)
        # SQLite may still have room in pages it holds; deliveries fill that, until refused.
        for index in range(2000):
            item = postbacks(f"full{index}", 1, payload="x" * 900)[0]
            status, _ = await client.post(delivery(item))
            assert status in (200, 503), status
            (acknowledged if status == 200 else refused).append(item["postback"]["mid"])
            if status == 503:
                break
        assert refused, "the store took 2,000 postbacks on a full disk"
        assert "disk is full" in await _until_readyz(http, app, 503)
        status, _ = await client.post(delivery(*postbacks("still-full", 1)))
        assert status == 503
        refused.append("still-full-0")
        assert "disk is full" in await _send_fails_fast(app)
        assert app.sandbox is not None
        assert app.sandbox.received == []

        filler.unlink()  # room again: the writer's probe notices on its own
        await _until_readyz(http, app, 200)
        async with stub_for(app) as stub:
            answer = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert answer.message_id
        for item in postbacks("after", 3):
            await client.deliver(item)
            acknowledged.append(item["postback"]["mid"])
    await app.stop()
    stored = _stored_mids(path)
    assert set(acknowledged) <= stored  # every 200 is there
    assert not set(refused) & stored  # and a 503 stored nothing (Meta retries it)
    # One ERROR line for the outage, whatever the number of refused calls, and no traces.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert str(path) in errors[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"


def _server_env(path: Path) -> dict[str, str]:
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
    return env


def test_a_read_only_filesystem_at_start_exits_2_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    with contextlib.closing(sqlite3.connect(source / "igbutton.db")) as db:
        db.execute("CREATE TABLE earlier_run (x)")  # a file from an earlier run
        db.commit()
    with _mounted(tmp_path / "ro", "--bind", "-o", "ro", str(source)) as mounted:
        path = mounted / "igbutton.db"
        assert not os.access(mounted, os.W_OK) or _is_read_only(mounted)
        done = subprocess.run(
            [sys.executable, "-m", "igbutton_server"],
            cwd=REPO,
            env=_server_env(path),
            capture_output=True,
            timeout=60,
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    said = [line for line in stderr.splitlines() if str(path) in line]
    assert said == [stderr.splitlines()[-1]], stderr
    assert said[0].startswith("igbutton-server: cannot start: SQLite file ")
    assert "read-only" in said[0], said[0]


def _is_read_only(directory: Path) -> bool:
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)


async def test_a_read_only_file_while_running_is_unavailable_with_sqlite_s_own_error(
    start: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Injected at the narrowest seam: a filesystem cannot be remounted read-only while the
    file is open for writing (the kernel refuses with EBUSY), so the writer's connection is
    switched to ``PRAGMA query_only``, after which SQLite itself answers every write with
    SQLITE_READONLY ("attempt to write a readonly database"), as on a read-only file."""
    path = tmp_path / "igbutton.db"
    app = await start(storage={"sqlite_path": str(path)})
    store = app.postback_store
    assert isinstance(store, SqlitePostbackStore)
    async with aiohttp.ClientSession() as http:
        client = WebhookClient(http, webhook_url(app))
        await client.deliver(*postbacks("before", 1))
        await store._writer.run(lambda db: db.execute("PRAGMA query_only=ON"))
        status, _ = await client.post(delivery(*postbacks("read-only", 1)))
        assert status == 503
        assert "read-only" in await _until_readyz(http, app, 503)
        message = await _send_fails_fast(app)
        assert "read-only" in message, message
        assert str(path) in message, message
        for index in range(30):  # a flood of refused deliveries: bounded lines, no traces
            status, _ = await client.post(delivery(*postbacks(f"flood{index}", 1)))
            assert status == 503
    await app.stop()
    assert _stored_mids(path) == {"before-0"}
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "cannot rollback" in line], lines
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "read-only" in errors[0].getMessage()
    assert str(path) in errors[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
    assert len(lines) < 20, lines


def _corrupt_pages(path: Path) -> None:
    """Move everything into the main file (as a checkpoint by any process would), then
    overwrite every page after the first two with garbage."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    size = path.stat().st_size
    page = 4096
    assert size > 8 * page, size
    with path.open("r+b") as out:
        out.seek(2 * page)
        out.write(os.urandom(size - 2 * page))
        out.flush()
        os.fsync(out.fileno())


@pytest.mark.parametrize("first", ["write", "read"])
async def test_pages_corrupted_while_running_stop_reads_and_writes_with_one_line(
    start: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    path = tmp_path / "igbutton.db"
    earlier = await start(storage={"sqlite_path": str(path)})
    async with aiohttp.ClientSession() as http:
        client = WebhookClient(http, webhook_url(earlier))
        for index in range(10):
            await client.deliver(*postbacks(f"before{index}", 10, payload="p" * 900))
    await earlier.stop()
    # A new process: its log tail in memory is empty, so reading the log reads the file.
    app = await start(storage={"sqlite_path": str(path)})
    # The pruner's pass at start would race this test to be the first to touch the file.
    assert app._pruner is not None
    await app._pruner.stop()
    async with aiohttp.ClientSession() as http:
        client = WebhookClient(http, webhook_url(app))
        _corrupt_pages(path)
        if first == "write":
            status, _ = await client.post(delivery(*postbacks("after", 1)))
            assert status == 503
        else:
            store = app.postback_store
            assert isinstance(store, SqlitePostbackStore)
            with pytest.raises(StorageUnavailable):
                await _read_all(store)
        assert "corrupt" in await _until_readyz(http, app, 503)
        message = await _send_fails_fast(app)
        assert "corrupt" in message, message
        for index in range(30):  # a flood: bounded lines, no traces
            status, _ = await client.post(delivery(*postbacks(f"flood{index}", 1)))
            assert status == 503
    await app.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "corrupt" in errors[0].getMessage()
    assert str(path) in errors[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "a traceback was logged"
    assert len(caplog.records) < 20, [r.getMessage() for r in caplog.records]


async def _read_all(store: SqlitePostbackStore) -> None:
    """Read the log from its start through the reader pool (the first page fails)."""
    subscription = await store.subscribe(Filter(), Start.earliest())
    try:
        async with asyncio.timeout(10):
            async for _ in subscription:
                pass
    finally:
        await subscription.close()
