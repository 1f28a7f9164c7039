"""A real igbutton-server process killed with SIGKILL right after answering 200 loses nothing:
the postbacks of every acknowledged delivery, and a group's unacknowledged deliveries, are
there after a restart on the same SQLite file, or the same JetStream streams."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from igbutton.v1 import postback_service_pb2 as pb
from igbutton.v1 import postback_service_pb2_grpc
from tests.conftest import Engine
from tests.postbacks.conftest import ACCOUNT, SECRET, Stream, WebhookClient, postbacks
from tests.postbacks.test_streams import ack, seconds

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0

pytestmark = pytest.mark.slow


class ServerProcess:
    """``python -m igbutton_server`` on loopback port 0, configured by environment variables."""

    def __init__(self, workdir: Path, engine: Engine) -> None:
        self.workdir = workdir
        self.engine = engine
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.runs = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}
        env.update(
            {
                "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
                "IGBUTTON_HTTP__HOST": "127.0.0.1",
                "IGBUTTON_HTTP__PORT": "0",
                "IGBUTTON_WEBHOOK__HOST": "127.0.0.1",
                "IGBUTTON_WEBHOOK__PORT": "0",
                "IGBUTTON_WEBHOOK__APP_SECRETS": json.dumps([SECRET.decode()]),
                # The account the deliveries are for (others' postbacks are skipped).
                "IGBUTTON_ACCOUNTS": json.dumps([{"id": ACCOUNT, "access_token": "unused"}]),
                "IGBUTTON_SANDBOX__ENABLED": "false",
                "IGBUTTON_LOG__FORMAT": "text",
                **self.engine.env(),
            }
        )
        return env

    def start(self) -> None:
        """Start the process and wait (bounded) for its ports file."""
        self.runs += 1
        ports_file = self.workdir / f"ports-{self.runs}.json"
        log = (self.workdir / f"server-{self.runs}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "igbutton_server", "--ports-file", str(ports_file)],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not ports_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            assert time.monotonic() < deadline, f"server did not start: {self.output()}"
            time.sleep(0.05)
        self.ports = json.loads(ports_file.read_text())

    def output(self) -> str:
        return (self.workdir / f"server-{self.runs}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webhook']}/webhook"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"


@pytest.fixture
def server(tmp_path: Path, engine: Engine) -> Iterator[ServerProcess]:
    """A server process on the test's engine, killed at the end whatever happens."""
    process = ServerProcess(tmp_path, engine)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _read_all(
    target: str, count: int, **fields: object
) -> list[pb.SubscribePostbacksResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        stream = await Stream.open(stub, **fields)
        try:
            return await stream.take(count)
        finally:
            await stream.cancel()


async def test_sigkill_right_after_200_loses_no_postback(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    acknowledged: list[str] = []
    for round_ in range(2):
        server.start()
        client = WebhookClient(http, server.webhook_url)
        batches = [postbacks(f"r{round_}b{b}", size) for b, size in enumerate((200, 50, 50, 1))]
        # Concurrent deliveries (one group commit), then the kill the moment the last 200 lands.
        answers = await asyncio.gather(*(client.deliver(*batch) for batch in batches))
        server.kill()
        assert [a["stored"] for a in answers] == [200, 50, 50, 1]
        acknowledged += [item["postback"]["mid"] for batch in batches for item in batch]

    server.start()
    stored = await _read_all(
        server.grpc_target, len(acknowledged), position=pb.START_POSITION_EARLIEST
    )
    assert sorted(m.postback.mid for m in stored) == sorted(acknowledged)
    sequences = [m.postback.sequence for m in stored]
    assert sequences == sorted(set(sequences))


async def test_unacked_group_deliveries_survive_sigkill(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    server.start()
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        member = await Stream.open(stub, group="crash", ack_deadline=seconds(1))
        try:
            await WebhookClient(http, server.webhook_url).deliver(*postbacks("g", 3))
            got = await member.take(3)
            await ack(stub, "crash", got[0])
            server.kill()  # g-1 and g-2 delivered, unacknowledged
        finally:
            await member.cancel()

    server.start()
    again = await _read_all(server.grpc_target, 2, group="crash")
    assert {(m.postback.mid, m.delivery_attempt) for m in again} == {("g-1", 2), ("g-2", 2)}
