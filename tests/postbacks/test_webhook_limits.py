"""The webhook port against slow and hostile clients, on a real App over loopback sockets:
the connection cap, the request head / body / keep-alive deadlines, compressed bodies,
request smuggling and aborted uploads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client import REGISTRY

from igbutton.v1 import button_template_pb2, send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.postbacks.webhook import SIGNATURE_HEADER, sign
from tests.conftest import SettingsFactory
from tests.postbacks.conftest import (
    SECRET,
    delivery,
    eventually,
    postback_item,
    postback_overrides,
)

WAIT = 15.0
"""Upper bound for anything awaited; reached only when something is broken."""

Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Raw]]


@pytest.fixture
async def start_app(make_settings: SettingsFactory) -> AsyncIterator[Callable[..., Awaitable[App]]]:
    """Start Apps (SQLite, sandbox) with webhook overrides; all stopped at the end."""
    started: list[App] = []

    async def start(**webhook: Any) -> App:
        overrides = postback_overrides()
        app = App(make_settings(webhook={**overrides["webhook"], **webhook}))
        await app.start()
        started.append(app)
        return app

    yield start
    for app in reversed(started):
        await app.stop()


@asynccontextmanager
async def raw_connections(port: int) -> AsyncIterator[Opener]:
    """Open plain TCP connections to ``port``; every one is closed on the way out."""
    opened: list[asyncio.StreamWriter] = []

    async def open_one() -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        return reader, writer

    try:
        yield open_one
    finally:
        for writer in opened:
            writer.close()
        for writer in opened:
            with contextlib.suppress(OSError):  # reset by the server: closed either way
                await writer.wait_closed()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except OSError:
        pass
    return data


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def head(path: str = "/webhook", *lines: str, method: str = "POST") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


@pytest.fixture
def file_descriptors() -> Iterator[Callable[[int], None]]:
    """``need(n)`` raises the soft RLIMIT_NOFILE to at least ``n`` (skips if the hard limit is
    lower); the original limit is restored afterwards."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)

    def need(count: int) -> None:
        soft, hard = original
        if soft >= count:
            return
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"needs {count} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))

    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, original)


# --- slow clients ---

SLOW = 1000
TIMEOUT = 1.0
KINDS = ("silent", "partial head", "trickled body")


class SlowClients:
    """``SLOW`` connections that never finish a request: a third send nothing, a third a
    request head a line at a time, a third a head and then a body a byte at a time."""

    def __init__(self, open_raw: Opener) -> None:
        self._open_raw = open_raw
        self._writers: list[tuple[str, asyncio.StreamWriter]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.opened_at: dict[int, float] = {}
        self.closed_at: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}

    async def open(self) -> None:
        for start in range(0, SLOW, 100):  # in batches: the listen backlog is finite
            batch = await asyncio.gather(*(self._connect(i) for i in range(start, start + 100)))
            for i, (reader, writer) in enumerate(batch, start):
                kind = KINDS[i % 3]
                if kind == "partial head":
                    writer.write(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                elif kind == "trickled body":
                    writer.write(head("/webhook", "Content-Length: 100000"))
                self._writers.append((kind, writer))
                self._tasks.append(asyncio.create_task(self._watch(i, reader)))
        self._tasks.append(asyncio.create_task(self._trickle()))

    async def _connect(self, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Timed as each connection is made, not when its whole batch is: on a loaded machine
        # a batch takes long enough that its first connections looked closed too early.
        reader, writer = await self._open_raw()
        self.opened_at[i] = time.monotonic()
        return reader, writer

    async def _watch(self, i: int, reader: asyncio.StreamReader) -> None:
        self.answers[i] = await read_to_end(reader)
        self.closed_at[i] = time.monotonic()

    async def _trickle(self) -> None:
        # The slow clients' traffic, a little every 0.2 s (pacing, not synchronisation).
        while True:
            await asyncio.sleep(0.2)
            for kind, writer in self._writers:
                if kind != "silent" and not writer.is_closing():
                    writer.write(b"X-Slow: 1\r\n" if kind == "partial head" else b"{")

    async def all_closed(self) -> None:
        await asyncio.gather(*self._tasks[:-1])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_slow_connections_are_closed_in_time_and_the_other_ports_keep_serving(
    start_app: Callable[..., Awaitable[App]], file_descriptors: Callable[[int], None]
) -> None:
    # Both ends of every connection live in this process, plus the App's own descriptors.
    file_descriptors(2 * SLOW + 500)
    app = await start_app(
        max_connections=SLOW + 100,
        header_timeout_seconds=TIMEOUT,
        body_timeout_seconds=TIMEOUT,
        keepalive_timeout_seconds=30,
    )
    async with raw_connections(app.ports.webhook) as open_raw:
        slow = SlowClients(open_raw)
        try:
            await slow.open()
            # Meanwhile the gRPC port sends and the ops port answers, each within 1 s.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
                send = send_service_pb2_grpc.SendServiceStub(channel)
                async with asyncio.timeout(1.0):
                    sent = await send.SendButtonTemplate(button_request(), timeout=1.0)
            assert sent.message_id
            healthz = f"http://127.0.0.1:{app.ports.http}/healthz"
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(1.0),
                http.get(healthz) as resp,
            ):
                assert resp.status == 200
            assert len(slow.closed_at) < SLOW  # they were still held while the ports answered

            async with asyncio.timeout(WAIT):
                await slow.all_closed()
        finally:
            await slow.stop()

    # Every slow connection is closed by its deadline, none before it.
    held = [slow.closed_at[i] - slow.opened_at[i] for i in range(SLOW)]
    assert min(held) >= TIMEOUT - 0.05
    # The deadline, then (for a body) the 1 s linger after the 408, with room for 2 busy cores.
    assert max(held) < TIMEOUT + 6
    for i in range(SLOW):
        if KINDS[i % 3] == "trickled body":
            assert slow.answers[i].startswith(b"HTTP/1.1 408 "), slow.answers[i][:40]
        else:
            assert slow.answers[i] == b""


def button_request() -> send_service_pb2.SendButtonTemplateRequest:
    return send_service_pb2.SendButtonTemplateRequest(
        recipient_id="1254477777772919",
        template=button_template_pb2.ButtonTemplate(
            text="Still there?",
            buttons=[
                button_template_pb2.Button(
                    title="Yes", postback=button_template_pb2.PostbackAction(payload="YES")
                )
            ],
        ),
    )


async def test_connections_over_the_cap_are_closed_at_once(
    start_app: Callable[..., Awaitable[App]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="igbutton_server.postbacks")
    app = await start_app(max_connections=5, header_timeout_seconds=60)
    refused_before = counter("igbutton_webhook_connections_closed_total", reason="over_limit")
    async with raw_connections(app.ports.webhook) as open_raw:
        held = [await open_raw() for _ in range(5)]
        # Accepted in order, so these two come after the five held ones: closed unread.
        for _ in range(2):
            reader, writer = await open_raw()
            writer.write(head("/webhook", method="GET"))
            async with asyncio.timeout(WAIT):
                assert await read_to_end(reader) == b""
        assert (
            counter("igbutton_webhook_connections_closed_total", reason="over_limit")
            == refused_before + 2
        )
        warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
        assert len(warnings) == 1

        # The five held ones are served; once one goes, a new connection is admitted.
        reader, writer = held[0]
        writer.write(head("/webhook", "Connection: close", method="GET"))
        async with asyncio.timeout(WAIT):
            assert (await read_to_end(reader)).startswith(b"HTTP/1.1 403 ")
        async with asyncio.timeout(WAIT):
            while True:
                reader, writer = await open_raw()
                writer.write(head("/webhook", "Connection: close", method="GET"))
                if (await read_to_end(reader)).startswith(b"HTTP/1.1 403 "):
                    break


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    start_app: Callable[..., Awaitable[App]],
) -> None:
    app = await start_app(keepalive_timeout_seconds=TIMEOUT, header_timeout_seconds=60)
    async with raw_connections(app.ports.webhook) as open_raw:
        reader, writer = await open_raw()
        writer.write(head("/webhook", method="GET"))
        async with asyncio.timeout(WAIT):
            status = await reader.readline()
            answered = time.monotonic()
            assert status.startswith(b"HTTP/1.1 403 ")
            await read_to_end(reader)
        assert time.monotonic() - answered >= TIMEOUT - 0.05


# --- compressed bodies ---


def gzip_of_zeros(mib: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(mib)) + compressor.flush()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-gzip", "identity, gzip"])
async def test_a_compressed_body_is_refused_with_415_before_it_is_read(
    start_app: Callable[..., Awaitable[App]], caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    caplog.set_level(logging.INFO, logger="igbutton_server.postbacks")
    app = await start_app()
    bomb = gzip_of_zeros(64)  # 64 MiB inflated, far over max_body_bytes
    refused_before = counter("igbutton_webhooks_total", result="unsupported_encoding")
    async with raw_connections(app.ports.webhook) as open_raw:
        reader, writer = await open_raw()
        # Only the head: an answer that needs no body proves the body was not read.
        writer.write(
            head(
                "/webhook",
                f"Content-Encoding: {encoding}",
                f"{SIGNATURE_HEADER}: {sign(bomb, SECRET)}",
                f"Content-Length: {len(bomb)}",
            )
        )
        async with asyncio.timeout(WAIT):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 415 "), status
    assert counter("igbutton_webhooks_total", result="unsupported_encoding") == refused_before + 1
    lines = [r for r in caplog.records if r.name.startswith("igbutton_server.postbacks")]
    assert [(r.levelno, "Content-Encoding" in r.getMessage()) for r in lines] == [
        (logging.WARNING, True)
    ]


@pytest.mark.parametrize("encoding", ["identity", "Identity", ""])
async def test_an_identity_encoding_is_accepted(
    start_app: Callable[..., Awaitable[App]], encoding: str
) -> None:
    app = await start_app()
    body = delivery(postback_item(f"identity-{encoding}"))
    headers = {SIGNATURE_HEADER: sign(body, SECRET), "Content-Encoding": encoding}
    url = f"http://127.0.0.1:{app.ports.webhook}/webhook"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        assert r.status == 200, await r.text()


# --- what must not log a traceback ---


def webhook_log_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the webhook port logged: igbutton's webhook modules and aiohttp's server."""
    return [
        r
        for r in caplog.records
        if r.name.startswith(("igbutton_server.postbacks.webhook", "aiohttp"))
    ]


async def test_request_smuggling_is_refused_with_400_and_no_traceback(
    start_app: Callable[..., Awaitable[App]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await start_app()
    body = b"0\r\n\r\n"
    async with raw_connections(app.ports.webhook) as open_raw:
        reader, writer = await open_raw()
        writer.write(
            head("/webhook", f"Content-Length: {len(body)}", "Transfer-Encoding: chunked") + body
        )
        async with asyncio.timeout(WAIT):
            answer = await read_to_end(reader)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:40]
    lines = webhook_log_lines(caplog)
    assert lines  # the refusal is logged once, shortly
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in lines)
    assert "Traceback" not in caplog.text


async def test_an_aborted_upload_logs_at_most_one_short_line(
    start_app: Callable[..., Awaitable[App]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await start_app()
    async with raw_connections(app.ports.webhook) as open_raw:
        _, writer = await open_raw()
        writer.write(head("/webhook", "Content-Length: 100000") + b'{"object": "instag')
        await writer.drain()
        writer.transport.abort()  # gone mid-body

    def logged() -> list[logging.LogRecord]:
        return [r for r in webhook_log_lines(caplog) if r.levelno >= logging.INFO]

    async def server_noticed() -> bool:
        return bool(logged())

    await eventually(server_noticed, WAIT)
    lines = logged()
    assert len(lines) == 1, [r.getMessage() for r in lines]
    [line] = lines
    assert line.exc_info is None
    assert line.levelno < logging.ERROR
    assert len(line.getMessage()) < 200
    assert "Traceback" not in caplog.text
