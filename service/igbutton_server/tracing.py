"""OpenTelemetry spans for RPCs and Graph calls, exported over OTLP only when configured.

When ``tracing.otlp_endpoint`` is unset nothing is installed: no interceptor, no provider,
and :func:`graph_span` returns a shared no-op context, so tracing costs nothing when off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from igbutton_server.config import TracingSettings


@dataclass
class _Installed:
    """What :func:`configure` installed, for this process."""

    tracer: Any = None  # an opentelemetry Tracer once configured
    provider: Any = None  # its TracerProvider, so shutdown() can flush it


_installed = _Installed()


def configure(settings: TracingSettings) -> list[grpc.aio.ServerInterceptor]:
    """Install the tracer provider and return the server interceptors to add (none when off)."""
    if settings.otlp_endpoint is None:
        _installed.tracer = None
        return []
    # Imported here so a process without tracing never loads the SDK.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=settings.insecure)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _installed.tracer = provider.get_tracer("igbutton")
    _installed.provider = provider
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(tracer_provider=provider)
    return [interceptor]


def shutdown() -> None:
    """Flush and stop the exporter, if tracing was on."""
    if _installed.provider is not None:
        _installed.provider.shutdown()
    _installed.provider = None
    _installed.tracer = None


@contextlib.contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    with _installed.tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


_NOOP = contextlib.nullcontext(None)


def graph_span(account_id: str, attempt: int) -> contextlib.AbstractContextManager[Any]:
    """A client span around one Graph API attempt (the no-op context when tracing is off)."""
    if _installed.tracer is None:
        return _NOOP
    return _span(
        "graph.send_message",
        {"igbutton.account_id": account_id, "igbutton.attempt": attempt, "rpc.system": "http"},
    )
