"""Tracing: spans reach an OTLP collector only when one is configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from igbutton.v1 import button_template_pb2, send_service_pb2, send_service_pb2_grpc
from igbutton_server import tracing
from igbutton_server.app import App
from tests.conftest import SettingsFactory


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint that keeps the span names it receives."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.changed = asyncio.Event()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, _context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)
        self.changed.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


def _request() -> send_service_pb2.SendButtonTemplateRequest:
    return send_service_pb2.SendButtonTemplateRequest(
        recipient_id="1254477777772919",
        template=button_template_pb2.ButtonTemplate(
            text="Traced?",
            buttons=[
                button_template_pb2.Button(
                    title="Yes", postback=button_template_pb2.PostbackAction(payload="YES")
                )
            ],
        ),
    )


async def test_rpc_and_graph_spans_are_exported_when_configured(
    make_settings: SettingsFactory, collector: tuple[Collector, int]
) -> None:
    sink, port = collector
    app = App(make_settings(tracing={"otlp_endpoint": f"http://127.0.0.1:{port}"}))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            stub = send_service_pb2_grpc.SendServiceStub(channel)
            await stub.SendButtonTemplate(_request(), timeout=10)
    finally:
        await app.stop()  # flushes the batch exporter
    async with asyncio.timeout(10):
        while not {"graph.send_message"} <= set(sink.names) or not any(
            "SendButtonTemplate" in n for n in sink.names
        ):
            sink.changed.clear()
            await sink.changed.wait()


@pytest.mark.usefixtures("app")
async def test_tracing_is_off_by_default() -> None:
    assert tracing.graph_span("1", 1) is tracing._NOOP
