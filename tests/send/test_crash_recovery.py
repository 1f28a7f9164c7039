"""A real igbutton-server process killed with SIGKILL mid-send, then restarted on the same
store: a repeat with the same request_id is answered at once, without waiting for the dead
claim's lease. A send that was written to Meta is SEND_OUTCOME_UNKNOWN; one that was still
held in igbutton's rate limiter (never written) is really sent by the repeat."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.sandbox import Fault, Sandbox
from igbutton_server.storage.nats.idempotency import bucket_key
from tests.conftest import Engine
from tests.postbacks.test_crash_safety import ServerProcess
from tests.send.conftest import details, send_request

pytestmark = pytest.mark.slow

ACCOUNT = "17841400000000001"
TOKEN = "crash-test-token"
WRITTEN = "00000000-0000-4000-8000-00000000000a"
HELD = "00000000-0000-4000-8000-00000000000b"
RECIPIENT_WRITTEN = "1111111111111111"
RECIPIENT_HELD = "2222222222222222"
# One send per 20 s, burst 1: the second send waits ~20 s in the limiter, inside its deadline.
RATE_PER_SECOND = 0.05
# Far below the old behaviour (the dead claim's lease: the first call's deadline + 30 s).
PROMPT_SECONDS = 15.0


class SendingServer(ServerProcess):
    """A server process that sends to a sandbox in the test process, for one account."""

    def __init__(self, workdir: Path, engine: Engine, sandbox_url: str) -> None:
        super().__init__(workdir, engine)
        self.sandbox_url = sandbox_url
        self.rate_bucket = ""
        """Set before a restart on NATS: the KV bucket of the shared rate limiter."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            {
                "IGBUTTON_GRAPH__BASE_URL": self.sandbox_url,
                "IGBUTTON_ACCOUNTS": json.dumps(
                    [{"id": ACCOUNT, "access_token": TOKEN, "rate_per_second": RATE_PER_SECOND}]
                ),
                "IGBUTTON_RATE_LIMIT__BURST": "1",
            }
        )
        if self.rate_bucket:
            env["IGBUTTON_RATE_LIMIT__NATS_BUCKET"] = self.rate_bucket
        return env


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    instance = Sandbox("127.0.0.1", 0)
    await instance.start()
    instance.set_tokens({ACCOUNT: TOKEN})
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
def server(tmp_path: Path, engine: Engine, sandbox: Sandbox) -> Iterator[SendingServer]:
    process = SendingServer(tmp_path, engine, sandbox.url)
    try:
        yield process
    finally:
        process.kill()


def _claimed_in_file(path: Path, request_id: str) -> bool:
    if not path.exists():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            row = db.execute(
                "SELECT count(*) FROM idempotency WHERE request_id = ?", (request_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # the table is not there yet
            row = (0,)
    db.close()
    return bool(row[0])


async def _claimed(engine: Engine, request_id: str) -> bool:
    """Whether the store holds a record for the request_id (read beside the server)."""
    if engine.name == "sqlite":
        path = Path(engine.storage["sqlite_path"])
        return await asyncio.to_thread(_claimed_in_file, path, request_id)
    client = await nats.connect(engine.storage["nats"]["servers"])
    try:
        kv = await client.jetstream().key_value(engine.storage["nats"]["idempotency_bucket"])
        try:
            entry = await kv.get(bucket_key(request_id))
        except KeyNotFoundError:
            return False
        return bool(entry.value)
    finally:
        await client.close()


async def _until(check: object, what: str, seconds: float = 20.0) -> None:
    """Bounded polling of a condition (an async callable returning bool)."""
    deadline = time.monotonic() + seconds
    while True:
        assert callable(check)
        if await check():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_repeats_after_sigkill_are_answered_at_once(
    server: SendingServer, sandbox: Sandbox, engine: Engine
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=120))  # Meta got it, never answers
    # On NATS the account's rate is shared and outlives a process: the killed process's
    # reservation for the held send would make the repeat wait ~35 s. The claims are what
    # this test is about (tests/replicas/test_rate_limit.py tests the shared limiter), so the
    # restarted process starts with an empty limiter on both engines, as SQLite's always does.
    server.rate_bucket = f"T_{uuid.uuid4().hex[:12]}_restart_ratelimit"
    server.start()
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        written = asyncio.ensure_future(
            stub.SendButtonTemplate(
                send_request(
                    account_id=ACCOUNT, recipient_id=RECIPIENT_WRITTEN, request_id=WRITTEN
                ),
                timeout=60,
            )
        )
        held: asyncio.Future[object] | None = None
        try:

            async def written_reached_meta() -> bool:
                return any(r.recipient_id == RECIPIENT_WRITTEN for r in sandbox.received)

            # In order: the first send takes the limiter's one slot, the second must wait.
            await _until(written_reached_meta, "the first send to reach the sandbox")
            held = asyncio.ensure_future(
                stub.SendButtonTemplate(
                    send_request(account_id=ACCOUNT, recipient_id=RECIPIENT_HELD, request_id=HELD),
                    timeout=60,
                )
            )
            await _until(lambda: _claimed(engine, HELD), "the second send's claim")
            server.kill()  # one send written and unanswered, one held in the rate limiter
        finally:
            calls = [call for call in (written, held) if call is not None]
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
    assert [r.recipient_id for r in sandbox.received] == [RECIPIENT_WRITTEN]

    # On NATS the account's rate is shared and outlives a process: the killed process's
    # reservation for the held send would make the repeat wait ~35 s. The claims are what
    # this test is about (tests/replicas/test_rate_limit.py tests the shared limiter), so the
    # restarted process starts with an empty limiter on both engines, as SQLite's always does.
    server.rate_bucket = f"T_{uuid.uuid4().hex[:12]}_restart_ratelimit"
    server.start()
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = send_service_pb2_grpc.SendServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(
                send_request(
                    account_id=ACCOUNT, recipient_id=RECIPIENT_WRITTEN, request_id=WRITTEN
                ),
                timeout=30,
            )
        assert details(caught.value).reason == "SEND_OUTCOME_UNKNOWN", details(caught.value)
        assert time.monotonic() - started < PROMPT_SECONDS

        started = time.monotonic()
        answer = await stub.SendButtonTemplate(
            send_request(account_id=ACCOUNT, recipient_id=RECIPIENT_HELD, request_id=HELD),
            timeout=30,
        )
        assert time.monotonic() - started < PROMPT_SECONDS
        assert answer.recipient_id == RECIPIENT_HELD
    held_sends = [r for r in sandbox.received if r.recipient_id == RECIPIENT_HELD]
    assert len(held_sends) == 1
    assert held_sends[0].accepted
    assert held_sends[0].message_id == answer.message_id
