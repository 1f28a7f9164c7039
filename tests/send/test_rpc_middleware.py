"""What runs around every RPC: call ids in the logs, metrics, authentication."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from igbutton_server.logs import JsonFormatter
from tests.send.conftest import AppFactory, send_request, stub_for

CALLER_TOKEN = "middleware-caller-token-5d1e"


class _JsonLines(logging.Handler):
    """Formats each record as the service would, at the moment it is logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def json_lines() -> Iterator[_JsonLines]:
    handler = _JsonLines()
    logger = logging.getLogger("igbutton_server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_each_call_logs_with_its_own_call_id(
    start_app: AppFactory, json_lines: _JsonLines
) -> None:
    app = await start_app()
    async with stub_for(app) as stub:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SendButtonTemplate(send_request(recipient_id=""), timeout=10)
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    failures = [line for line in json_lines.lines if line["msg"] == "send failed"]
    assert len(failures) == 2
    ids = [line.get("call_id") for line in failures]
    assert all(isinstance(i, str) and re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids
    assert ids[0] != ids[1]


async def test_refused_calls_are_logged_with_a_call_id_and_never_reach_the_servicer(
    start_app: AppFactory, json_lines: _JsonLines
) -> None:
    app = await start_app(callers=[{"name": "mw", "token": CALLER_TOKEN}])
    assert app.sandbox is not None
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SendButtonTemplate(
                send_request(), metadata=(("authorization", "Bearer wrong"),), timeout=10
            )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    refused = [line for line in json_lines.lines if line["msg"] == "caller not authenticated"]
    assert len(refused) == 1
    assert refused[0]["method"] == "/igbutton.v1.SendService/SendButtonTemplate"
    assert isinstance(refused[0].get("call_id"), str)
    assert app.sandbox.received == []


async def test_unknown_methods_are_unimplemented_and_health_is_counted(
    start_app: AppFactory,
) -> None:
    app = await start_app(callers=[{"name": "mw", "token": CALLER_TOKEN}])
    before = _health_checks()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        unknown = channel.unary_unary("/igbutton.v1.SendService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unknown(b"", timeout=10)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert _health_checks() == before + 1


def _health_checks() -> float:
    labels = {"method": "Health/Check", "code": "OK"}
    return REGISTRY.get_sample_value("igbutton_rpcs_total", labels) or 0.0
