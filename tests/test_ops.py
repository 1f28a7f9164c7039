"""The operational surface: gRPC health and reflection, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from igbutton_server.app import App
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer


async def test_grpc_health_reports_serving_for_each_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", "igbutton.v1.SendService", "igbutton.v1.PostbackService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_reflection_lists_both_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(one_request()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"igbutton.v1.SendService", "igbutton.v1.PostbackService"} <= names


async def test_http_health_readiness_and_metrics(app: App) -> None:
    base = f"http://127.0.0.1:{app.ports.http}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ready"
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert "python_info" in await resp.text()


async def test_readyz_fails_after_stop(app: App) -> None:
    await app.stop()
    assert await app._readiness() is not None


async def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    env = {
        **os.environ,
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
        "IGBUTTON_STORAGE__SQLITE_PATH": str(tmp_path / "db.sqlite"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "igbutton_server",
        "--sandbox",
        "--ports-file",
        str(ports_file),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while not ports_file.exists():
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        assert ports["grpc"] > 0
        assert ports["sandbox"] > 0
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0
        text = stderr.decode()
        assert "igbutton stopped" in text
        assert "Unclosed" not in text
        assert "Traceback" not in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_readyz_follows_the_nats_connection(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    server = NatsServer(name="readyz", store_dir=tmp_path / "nats" / "js")
    server.start_healthy()
    app: App | None = None
    try:
        app = App(
            make_settings(
                storage={"backend": "nats", "nats": {"servers": [server.url], "stream": "READYZ"}}
            )
        )
        await app.start()
        url = f"http://127.0.0.1:{app.ports.http}/readyz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 200
            server.stop()
            async with asyncio.timeout(20):
                while True:
                    async with http.get(url) as resp:
                        if resp.status == 503:
                            assert "NATS" in (await resp.json())["reason"]
                            break
                    await asyncio.sleep(0.1)
    finally:
        server.stop()
        if app is not None:
            await app.stop()
