"""The operational surface: gRPC health and reflection, /healthz, /readyz, /metrics."""

from __future__ import annotations

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.app import App


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
