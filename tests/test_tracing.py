"""Tracing: spans reach an OTLP collector only when one is configured."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
import yarl
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from igbutton.v1 import button_template_pb2, send_service_pb2, send_service_pb2_grpc
from igbutton_server import logs, tracing
from igbutton_server.app import App
from igbutton_server.config import TracingSettings
from igbutton_server.sandbox import Fault
from tests.conftest import SettingsFactory


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self.raw = b""
        """Every export request as received, to search for what must never be there."""
        self.changed = asyncio.Event()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, _context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.raw += request.SerializeToString()
        for resource in request.resource_spans:
            for attribute in resource.resource.attributes:
                if attribute.key == "service.name":
                    self.service_names.add(attribute.value.string_value)
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)
                self.spans.extend(scope.spans)
        self.changed.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def graph_spans(self) -> list[trace_pb2.Span]:
        return [s for s in self.spans if s.name.startswith("POST ")]


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
        while not sink.graph_spans() or not any("SendButtonTemplate" in n for n in sink.names):
            sink.changed.clear()
            await sink.changed.wait()


@pytest.mark.usefixtures("app")
async def test_tracing_is_off_by_default() -> None:
    assert tracing.graph_span(yarl.URL("http://h/v25.0/1/messages"), "1", 1) is tracing._NOOP


def _attributes(span: trace_pb2.Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        kind = attribute.value.WhichOneof("value")
        values[attribute.key] = getattr(attribute.value, kind) if kind else None
    return values


@contextlib.contextmanager
def _json_log_lines() -> Iterator[list[str]]:
    """Every line logged (DEBUG and up) while inside, formatted by igbutton's JSON formatter
    as it is emitted, in the caller's context, as the production handler does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    lines: list[str] = []
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        lines.extend(stream.getvalue().splitlines())


async def test_graph_span_follows_the_http_client_conventions_without_the_token(
    make_settings: SettingsFactory, collector: tuple[Collector, int]
) -> None:
    sink, port = collector
    # The token in the query string is the case where a full URL would leak it.
    settings = make_settings(
        tracing={"otlp_endpoint": f"http://127.0.0.1:{port}"}, graph={"token_in": "query"}
    )
    app = App(settings)
    await app.start()
    try:
        assert app.sandbox is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            stub = send_service_pb2_grpc.SendServiceStub(channel)
            await stub.SendButtonTemplate(_request(), timeout=10)
            app.sandbox.add_fault(Fault(kind="graph_error", code=100, http_status=400))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SendButtonTemplate(_request(), timeout=10)
            app.sandbox.add_fault(Fault(kind="drop"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SendButtonTemplate(_request(), timeout=10)
    finally:
        await app.stop()
    await sink.wait_for(lambda: len(sink.graph_spans()) >= 3)

    version = settings.graph.api_version
    ok, rejected, dropped = sink.graph_spans()
    for span in (ok, rejected, dropped):
        assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        assert span.name == f"POST /{version}/{{ig_user_id}}/messages"
        attributes = _attributes(span)
        assert attributes["http.request.method"] == "POST"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == app.ports.sandbox
        assert attributes["url.template"] == f"/{version}/{{ig_user_id}}/messages"
        assert "url.full" not in attributes
    assert _attributes(ok)["http.response.status_code"] == 200
    assert "error.type" not in _attributes(ok)
    assert ok.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    assert _attributes(rejected)["http.response.status_code"] == 400
    assert _attributes(rejected)["error.type"] == "400"
    assert rejected.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert "http.response.status_code" not in _attributes(dropped)
    assert _attributes(dropped)["error.type"] == "disconnected"
    assert dropped.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    (account,) = app.settings.accounts  # the sandbox's
    assert account.token().encode() not in sink.raw


async def test_log_lines_of_a_traced_call_carry_its_trace_and_span_ids(
    make_settings: SettingsFactory, collector: tuple[Collector, int]
) -> None:
    sink, port = collector
    app = App(make_settings(tracing={"otlp_endpoint": f"http://127.0.0.1:{port}"}))
    await app.start()
    try:
        with _json_log_lines() as lines:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
                stub = send_service_pb2_grpc.SendServiceStub(channel)
                await stub.SendButtonTemplate(_request(), timeout=10)
    finally:
        await app.stop()
    await sink.wait_for(lambda: bool(sink.graph_spans()))

    entries = [json.loads(line) for line in lines]
    in_call = [e for e in entries if "call_id" in e]
    assert in_call, entries
    (graph,) = sink.graph_spans()
    trace_id, graph_span_id = graph.trace_id.hex(), graph.span_id.hex()
    for entry in in_call:
        assert entry.get("trace_id") == trace_id, entry
        assert len(entry.get("span_id", "")) == 16, entry
    answer = [e for e in in_call if e["msg"] == "graph answer"]
    assert answer, in_call
    assert all(e["span_id"] == graph_span_id for e in answer), answer
    outside = [e for e in entries if "call_id" not in e]
    assert all("trace_id" not in e for e in outside), outside


async def test_standard_otel_variables_are_honoured(
    make_settings: SettingsFactory,
    collector: tuple[Collector, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel-env")
    app = App(make_settings())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            stub = send_service_pb2_grpc.SendServiceStub(channel)
            await stub.SendButtonTemplate(_request(), timeout=10)
    finally:
        await app.stop()
    await sink.wait_for(lambda: bool(sink.graph_spans()))
    assert sink.service_names == {"from-otel-env"}


def test_igbutton_settings_win_over_otel_variables() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
        "OTEL_SERVICE_NAME": "generic",
    }
    own = TracingSettings(otlp_endpoint="http://own:4317", service_name="own", sample_ratio=0.5)
    assert tracing.resolve(own, environ) == tracing.Resolved(
        endpoint="http://own:4317", service_name="own", sample_ratio=0.5, insecure=True
    )
    assert tracing.resolve(TracingSettings(), environ) == tracing.Resolved(
        endpoint="http://generic:4317", service_name="generic", sample_ratio=None, insecure=True
    )
    traces_only = {**environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317"}
    assert tracing.resolve(TracingSettings(), traces_only).endpoint == "http://traces:4317"
    assert tracing.resolve(TracingSettings(), {}).endpoint is None
    assert tracing.resolve(TracingSettings(), {}).service_name == "igbutton"
    # Plaintext unless https:// (a bare host:port too), unless told otherwise.
    bare = TracingSettings(otlp_endpoint="collector:4317")
    assert tracing.resolve(bare, {}).insecure is True
    tls = TracingSettings(otlp_endpoint="https://collector:4317")
    assert tracing.resolve(tls, {}).insecure is False
    told = {"OTEL_EXPORTER_OTLP_INSECURE": "false"}
    assert tracing.resolve(bare, told).insecure is None  # the exporter reads the variable
    assert tracing.resolve(TracingSettings(otlp_endpoint="x:1", insecure=True), told).insecure
    disabled = {**environ, "OTEL_SDK_DISABLED": "true"}
    assert tracing.resolve(own, disabled).endpoint is None


def test_otel_traces_sampler_is_used_unless_igbutton_sets_a_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # never reached
    try:
        tracing.configure(TracingSettings(), environ)
        assert tracing._installed.provider.sampler.get_description() == "AlwaysOffSampler"
        tracing.shutdown()
        tracing.configure(TracingSettings(sample_ratio=0.25), environ)
        description = tracing._installed.provider.sampler.get_description()
        assert description.startswith("ParentBased{root:TraceIdRatioBased{0.25}"), description
    finally:
        tracing.shutdown()
