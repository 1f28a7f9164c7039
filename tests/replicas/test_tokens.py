"""Three replicas on one NATS cluster share each account's token: when it is due, exactly
one of them refreshes it (a compare-and-set lease on the KV record), and every replica then
sends with the new token. Real processes, a real sandbox counting refresh calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from igbutton.v1 import send_service_pb2_grpc
from tests.replicas.conftest import StartReplicas
from tests.replicas.processes import ACCESS_TOKEN, ACCOUNT, Replica, SandboxProcess
from tests.send.conftest import send_request

pytestmark = pytest.mark.slow

TOKENS = {
    # Due at once (expiry unknown: 60 days, within the 61-day margin); the refreshed token
    # lives 90 days, so it is not due again.
    "IGBUTTON_TOKENS__MIN_AGE_SECONDS": "0",
    "IGBUTTON_TOKENS__REFRESH_MARGIN_SECONDS": str(61 * 24 * 3600),
    "IGBUTTON_TOKENS__CHECK_INTERVAL_SECONDS": "0.05",
}


@pytest.fixture
def refreshing_sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A sandbox process that refreshes tokens of any age, for 90 days."""
    sandbox = SandboxProcess(
        tmp_path / "sandbox",
        extra_args=["--min-refresh-age-seconds", "0", "--token-lifetime-seconds", "7776000"],
    )
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()


async def account(http: aiohttp.ClientSession, sandbox: SandboxProcess) -> dict[str, Any]:
    async with http.get(f"{sandbox.url}/_sandbox/accounts/{ACCOUNT}") as resp:
        result: dict[str, Any] = await resp.json()
        return result


async def last_generation(http: aiohttp.ClientSession, sandbox: SandboxProcess) -> int | None:
    async with http.get(f"{sandbox.url}/_sandbox/messages") as resp:
        messages = (await resp.json())["messages"]
    generation: int | None = messages[-1]["token_generation"]
    return generation


async def test_exactly_one_replica_refreshes_and_all_send_with_the_new_token(
    start_replicas: StartReplicas,
    refreshing_sandbox: SandboxProcess,
    channels: Callable[[Replica], grpc.aio.Channel],
    http: aiohttp.ClientSession,
) -> None:
    replicas = start_replicas(3, graph_url=refreshing_sandbox.url, env=TOKENS)
    deadline = time.monotonic() + 30
    while (await account(http, refreshing_sandbox))["refreshes"] < 1:
        assert time.monotonic() < deadline, "no replica refreshed the token"
        await asyncio.sleep(0.05)  # polling the sandbox, bounded
    for replica in replicas:
        stub = send_service_pb2_grpc.SendServiceStub(channels(replica))
        deadline = time.monotonic() + 10
        while True:
            await stub.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=10)
            if await last_generation(http, refreshing_sandbox) == 1:
                break
            assert time.monotonic() < deadline, f"{replica.name} never sent the new token"
            await asyncio.sleep(0.05)  # polling, bounded
    # Well past several check intervals of every replica: still the one refresh call.
    state = await account(http, refreshing_sandbox)
    assert state["refresh_calls"] == 1
    assert state["refreshes"] == 1
    for replica in replicas:
        assert replica.process is not None
        assert replica.process.poll() is None
        assert ACCESS_TOKEN not in replica.log_path.read_text(errors="replace")
