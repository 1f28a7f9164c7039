"""The log under hostile clients: every stderr line is JSON (gRPC core's plain-text lines are
kept out), and client-caused refusals are rate-limited, while the metrics count every one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.logs import JsonFormatter, RateLimitedLog, call_id
from igbutton_server.postbacks.webhook import SIGNATURE_HEADER, sign
from tests.send.conftest import send_request
from tests.send.pki import Pki, make_pki

START_TIMEOUT = 30.0
APP_SECRET = "logging-test-app-secret"
CALLER_TOKEN = "logging-caller-token-3e9d1f"
NARROW_TOKEN = "logging-narrow-token-8a0c2b"
CALLERS = [
    {"name": "full", "token": CALLER_TOKEN},
    {"name": "narrow", "token": NARROW_TOKEN, "accounts": ["17840000000000099"]},
]
SEND = "SendService/SendButtonTemplate"


class ServerProcess:
    """``python -m igbutton_server`` on loopback port 0 with JSON logs; stderr to a file."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.stderr_path = workdir / "stderr.log"

    def env(self) -> dict[str, str]:
        # No inherited IGBUTTON_* or GRPC_* variables: the server's own defaults are tested.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IGBUTTON_", "GRPC_"))}
        env.update(
            {
                "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
                "IGBUTTON_HTTP__HOST": "127.0.0.1",
                "IGBUTTON_HTTP__PORT": "0",
                "IGBUTTON_WEBHOOK__HOST": "127.0.0.1",
                "IGBUTTON_WEBHOOK__PORT": "0",
                "IGBUTTON_WEBHOOK__APP_SECRETS": json.dumps([APP_SECRET]),
                "IGBUTTON_WEBHOOK__VERIFY_TOKEN": "logging-verify-token",
                "IGBUTTON_WEBHOOK__MAX_BODY_BYTES": "2048",
                "IGBUTTON_SANDBOX__ENABLED": "true",
                "IGBUTTON_SANDBOX__HOST": "127.0.0.1",
                "IGBUTTON_SANDBOX__PORT": "0",
                "IGBUTTON_STORAGE__SQLITE_PATH": str(self.workdir / "igbutton.db"),
                "IGBUTTON_CALLERS": json.dumps(CALLERS),
                "IGBUTTON_LOG__FORMAT": "json",
                **self.extra_env,
            }
        )
        return env

    def start(self) -> None:
        """Start it and wait (bounded polling) for the ports file it writes once serving."""
        ports_file = self.workdir / "ports.json"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "igbutton_server", "--ports-file", str(ports_file)],
                cwd=self.workdir,
                env=self.env(),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not ports_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.stderr()}")
            assert time.monotonic() < deadline, f"server did not start: {self.stderr()}"
            time.sleep(0.05)
        self.ports = json.loads(ports_file.read_text())

    def stop(self) -> None:
        """SIGTERM and wait, SIGKILL if it does not end; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each parsed as a JSON object (the test fails on any other)."""
        entries = []
        for number, line in enumerate(self.stderr().splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"stderr line {number} is not JSON: {line!r}")
            assert isinstance(entry, dict), line
            assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
            entries.append(entry)
        return entries

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    (tmp_path / "pki").mkdir()
    return make_pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    """A second CA, unknown to the server and the clients of ``pki``."""
    (tmp_path / "other").mkdir()
    return make_pki(tmp_path / "other")


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Server processes a test starts; every one is stopped at the end whatever happens."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def start_server(servers: list[ServerProcess], workdir: Path, **env: str) -> ServerProcess:
    server = ServerProcess(workdir, env)
    servers.append(server)
    server.start()
    return server


def mtls_env(pki: Pki) -> dict[str, str]:
    return {
        "IGBUTTON_GRPC__TLS__CERT_FILE": str(pki.server_cert),
        "IGBUTTON_GRPC__TLS__KEY_FILE": str(pki.server_key),
        "IGBUTTON_GRPC__TLS__CLIENT_CA_FILE": str(pki.ca_cert),
    }


def _secure(target: str, ca: Pki, client: Pki | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.ca_cert.read_bytes(),
        private_key=client.client_key.read_bytes() if client else None,
        certificate_chain=client.client_cert.read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def _send(channel: grpc.aio.Channel, token: str | None) -> grpc.StatusCode:
    stub = send_service_pb2_grpc.SendServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        await stub.SendButtonTemplate(send_request(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _plain_text_to_tls_port(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: igbutton\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), timeout=10)  # the server hangs up
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _hostile_webhooks(url: str) -> list[int]:
    statuses = []
    good = json.dumps({"object": "instagram", "entry": []}).encode()
    not_json = b"{not json"
    secret = APP_SECRET.encode()
    posts: list[tuple[bytes, dict[str, str]]] = [
        (good, {}),  # unsigned
        (good, {SIGNATURE_HEADER: sign(good, b"another-secret")}),  # bad signature
        (good, {SIGNATURE_HEADER: "sha256=zz"}),  # malformed signature
        (not_json, {SIGNATURE_HEADER: sign(not_json, secret)}),  # malformed body
        (b"x" * 4096, {SIGNATURE_HEADER: sign(b"x" * 4096, secret)}),  # too large
    ]
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            for body, headers in posts:
                async with http.post(url, data=body, headers=headers) as reply:
                    statuses.append(reply.status)
            handshake = {"hub.mode": "subscribe", "hub.verify_token": "no", "hub.challenge": "c"}
            async with http.get(url, params=handshake) as reply:
                statuses.append(reply.status)
    return statuses


async def test_every_stderr_line_is_json_under_hostile_clients(
    tmp_path: Path, servers: list[ServerProcess], pki: Pki, other_pki: Pki
) -> None:
    server = start_server(servers, tmp_path, **mtls_env(pki))
    target = server.grpc_target

    # Failed handshakes: plain text and plaintext gRPC to the TLS port, a client that does
    # not trust the server's CA, clients without a certificate or with one of another CA.
    await _plain_text_to_tls_port(server.ports["grpc"])
    async with grpc.aio.insecure_channel(target) as channel:
        assert await _send(channel, CALLER_TOKEN) == grpc.StatusCode.UNAVAILABLE
    for ca, client in ((other_pki, pki), (pki, None), (pki, other_pki)):
        async with _secure(target, ca, client) as channel:
            assert await _send(channel, CALLER_TOKEN) == grpc.StatusCode.UNAVAILABLE

    # Refused calls, over a good mutual-TLS connection, more of each than the log limit.
    async with _secure(target, pki, pki) as channel:
        assert await _send(channel, CALLER_TOKEN) == grpc.StatusCode.OK
        for token in [None, "not-a-configured-token-at-all"] * 15:
            assert await _send(channel, token) == grpc.StatusCode.UNAUTHENTICATED
        for _ in range(15):
            assert await _send(channel, NARROW_TOKEN) == grpc.StatusCode.PERMISSION_DENIED

    statuses = await _hostile_webhooks(f"http://127.0.0.1:{server.ports['webhook']}/webhook")
    assert sorted(set(statuses)) == [400, 401, 403, 413]

    server.stop()
    entries = server.log_lines()  # fails on the first line that is not JSON
    messages = [e["msg"] for e in entries]
    assert "igbutton started" in messages
    assert "igbutton stopped" in messages
    # At most the limit per kind of refusal, each line short.
    by_kind: dict[str, int] = {}
    for entry in entries:
        if "kind" in entry and "suppressed" not in entry:
            by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + 1
            assert len(entry["msg"]) <= 300, entry
    assert messages.count("caller not authenticated") == 10
    assert by_kind["caller_unauthenticated"] == 10
    assert set(by_kind) <= {
        "caller_unauthenticated",
        "unsigned",
        "bad_signature",
        "malformed",
        "too_large",
        "handshake_denied",
    }
    assert len(entries) < 60, server.stderr()


async def _rpcs(http: aiohttp.ClientSession, url: str, code: str) -> float:
    """``igbutton_rpcs_total`` of SendButtonTemplate calls that ended with ``code``."""
    async with http.get(url) as reply:
        text = await reply.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "igbutton_rpcs_total" and sample.labels == {"method": SEND, "code": code}
    )


async def test_a_flood_of_unauthenticated_calls_logs_a_bounded_number_of_lines(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = start_server(servers, tmp_path)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        for _ in range(20):
            codes = await asyncio.gather(*(_send(channel, None) for _ in range(50)))
            assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
    # A call is counted as its handler ends, just after the client has its status: poll.
    metrics_url = f"http://127.0.0.1:{server.ports['http']}/metrics"
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as http:
        while (refused := await _rpcs(http, metrics_url, "UNAUTHENTICATED")) < 1000:
            assert time.monotonic() < deadline, f"{refused} of 1000 counted"
            await asyncio.sleep(0.05)
    assert refused == 1000

    server.stop()
    entries = server.log_lines()
    assert [e["msg"] for e in entries].count("caller not authenticated") == 10
    assert len(entries) < 30, server.stderr()


async def test_grpc_core_logging_asked_for_by_the_operator_is_honoured(
    tmp_path: Path, servers: list[ServerProcess], pki: Pki
) -> None:
    server = start_server(servers, tmp_path, GRPC_VERBOSITY="INFO", **mtls_env(pki))
    await _plain_text_to_tls_port(server.ports["grpc"])
    server.stop()
    assert "Handshake failed" in server.stderr()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.summarised = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if hasattr(record, "suppressed"):
            self.summarised.set()


@pytest.fixture
def records() -> Iterator[tuple[logging.Logger, _Records]]:
    logger = logging.getLogger("tests.rate_limited")
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def test_rate_limited_log_limits_each_kind_and_reports_the_rest(
    records: tuple[logging.Logger, _Records],
) -> None:
    logger, handler = records
    now = [100.0]
    limited = RateLimitedLog(logger, limit=3, interval=60.0, clock=lambda: now[0])
    for i in range(10):
        limited.log(logging.WARNING, "a", "refused %d", i, extra={"n": i})
    limited.log(logging.WARNING, "b", "other kind")
    assert [r.getMessage() for r in handler.records] == [
        "refused 0",
        "refused 1",
        "refused 2",
        "other kind",
    ]
    assert [getattr(r, "kind", None) for r in handler.records] == ["a", "a", "a", "b"]

    now[0] += 60.0  # the interval is over: its count comes first, then a new window
    limited.log(logging.WARNING, "a", "refused again")
    assert [r.getMessage() for r in handler.records[4:]] == [
        "suppressed 7 similar lines (a) in 60 s",
        "refused again",
    ]
    summary = handler.records[4]
    assert (summary.levelno, getattr(summary, "suppressed", None)) == (logging.WARNING, 7)

    logger.setLevel(logging.ERROR)  # lines the logger would drop take no share of the limit
    for _ in range(5):
        limited.log(logging.INFO, "c", "quiet")
    logger.setLevel(logging.DEBUG)
    limited.log(logging.INFO, "c", "heard")
    assert handler.records[-1].getMessage() == "heard"


async def test_rate_limited_log_reports_a_flood_when_its_interval_ends(
    records: tuple[logging.Logger, _Records],
) -> None:
    logger, handler = records
    limited = RateLimitedLog(logger, limit=2, interval=0.2)
    token = call_id.set("c0ffee")
    try:
        for _ in range(5):
            limited.log(logging.INFO, "flood", "refused")
    finally:
        call_id.reset(token)
    # No further line of the kind: the event loop's timer reports the three.
    await asyncio.wait_for(handler.summarised.wait(), timeout=10)
    summary = handler.records[-1]
    assert summary.getMessage() == "suppressed 3 similar lines (flood) in 0 s"
    assert "call_id" not in json.loads(JsonFormatter().format(summary))  # no one call's line
    assert len(handler.records) == 3
