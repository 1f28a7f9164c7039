"""SIGHUP to a real ``igbutton-server`` process makes it re-read its token files at once
(its periodic check is an hour away here), against the test's sandbox on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.sandbox import Sandbox
from tests.accounts.conftest import ACCOUNT, APP_SECRET, SEED_TOKEN, Secrets
from tests.send.conftest import send_request

ROTATED = "IGAArotated-by-the-operator-before-sighup-04"


def _server(tmp_path: Path, sandbox: Sandbox, token_file: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}
    env.update(
        {
            "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
            "IGBUTTON_HTTP__PORT": "0",
            "IGBUTTON_WEBHOOK__PORT": "0",
            "IGBUTTON_WEBHOOK__APP_SECRETS": json.dumps([APP_SECRET]),
            "IGBUTTON_STORAGE__SQLITE_PATH": str(tmp_path / "server.db"),
            "IGBUTTON_GRAPH__BASE_URL": sandbox.url,
            "IGBUTTON_ACCOUNTS": json.dumps(
                [{"id": ACCOUNT, "access_token_file": str(token_file)}]
            ),
            "IGBUTTON_TOKENS__CHECK_INTERVAL_SECONDS": "3600",
            "IGBUTTON_LOG__FORMAT": "json",
        }
    )
    binary = Path(sys.executable).parent / "igbutton-server"
    with (tmp_path / "server.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [str(binary), "--ports-file", str(tmp_path / "ports.json")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _ports(process: subprocess.Popen[bytes], path: Path) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(path.exists):
        assert process.poll() is None, "igbutton-server exited"
        assert time.monotonic() < deadline, "igbutton-server did not start"
        await asyncio.sleep(0.05)  # polling a file with a bound
    text = await asyncio.to_thread(path.read_text)
    ports: dict[str, int] = json.loads(text)
    return ports


async def test_sighup_rereads_the_token_file(
    tmp_path: Path, sandbox: Sandbox, no_token_leaks: Secrets
) -> None:
    no_token_leaks.tokens.add(ROTATED)
    token_file = tmp_path / "token"
    token_file.write_text(SEED_TOKEN)
    process = _server(tmp_path, sandbox, token_file)
    try:
        ports = await _ports(process, tmp_path / "ports.json")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            stub = send_service_pb2_grpc.SendServiceStub(channel)
            await stub.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=10)
            sandbox.tokens.revoke(ACCOUNT)  # the old token is dead at Meta
            sandbox.tokens.add(ACCOUNT, ROTATED)
            token_file.write_text(ROTATED)
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not any(r.accepted and r.token_generation == 0 for r in sandbox.received[1:]):
                assert time.monotonic() < deadline, "the rotated token was never used"
                try:
                    await stub.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=10)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)  # polling, bounded
        assert process.poll() is None  # SIGHUP did not stop it
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "re-reading the accounts' token files" in log
    assert SEED_TOKEN not in log
    assert ROTATED not in log
