"""OpenTelemetry spans for RPCs and Graph calls, exported over OTLP only when configured.

Configuration, each of igbutton's settings first, then the standard variable:

- endpoint: ``tracing.otlp_endpoint``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_ENDPOINT``; none of them: tracing off. ``OTEL_SDK_DISABLED=true``
  turns it off in any case.
- ``service.name``: ``tracing.service_name``, ``OTEL_SERVICE_NAME``, ``igbutton``
  (``OTEL_RESOURCE_ATTRIBUTES`` adds other resource attributes).
- sampling: ``tracing.sample_ratio`` (parent-based ratio), ``OTEL_TRACES_SAMPLER`` and
  ``OTEL_TRACES_SAMPLER_ARG``, parent-based always-on.
- plaintext: ``tracing.insecure``, ``OTEL_EXPORTER_OTLP_INSECURE``, plaintext unless the
  endpoint is ``https://``.

When tracing is off nothing is installed: no interceptor, no provider, and
:func:`graph_span` returns a shared no-op context, so tracing costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import yarl

from igbutton_server import logs
from igbutton_server.config import TracingSettings


@dataclass
class _Installed:
    """What :func:`configure` installed, for this process."""

    tracer: Any = None  # an opentelemetry Tracer once configured
    provider: Any = None  # its TracerProvider, so shutdown() can flush it


_installed = _Installed()


@dataclass(frozen=True)
class Resolved:
    """Tracing as configured: igbutton's settings first, then the standard OTEL_* variables."""

    endpoint: str | None
    """The OTLP/gRPC collector; None: tracing off."""
    service_name: str
    sample_ratio: float | None
    """None: the SDK's sampler from OTEL_TRACES_SAMPLER (parent-based always-on by default)."""
    insecure: bool | None
    """None: the exporter reads OTEL_EXPORTER_OTLP_INSECURE."""


def resolve(settings: TracingSettings, environ: Mapping[str, str]) -> Resolved:
    """Each of igbutton's settings wins over its OTEL_* variable; OTEL_SDK_DISABLED=true
    turns tracing off whatever the rest says."""
    endpoint = (
        settings.otlp_endpoint
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        endpoint = None
    insecure = settings.insecure
    if insecure is None and "OTEL_EXPORTER_OTLP_INSECURE" not in environ:
        # Plaintext unless https://, also for a bare host:port (the exporter would pick TLS
        # for one), as igbutton always did: the usual collector is a plaintext sidecar.
        insecure = None if endpoint is None else not endpoint.startswith("https://")
    return Resolved(
        endpoint=endpoint,
        service_name=settings.service_name or environ.get("OTEL_SERVICE_NAME") or "igbutton",
        sample_ratio=settings.sample_ratio,
        insecure=insecure,
    )


def configure(
    settings: TracingSettings, environ: Mapping[str, str] | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """Install the tracer provider and return the server interceptors to add (none when off).

    Log lines written while a span is current carry its ``trace_id`` and ``span_id``.
    """
    resolved = resolve(settings, os.environ if environ is None else environ)
    if resolved.endpoint is None:
        _installed.tracer = None
        logs.current_trace_ids = None
        return []
    # Imported here so a process without tracing never loads the SDK.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=resolved.endpoint, insecure=resolved.insecure)
    return install(resolved, BatchSpanProcessor(exporter))


def install(resolved: Resolved, processor: Any) -> list[grpc.aio.ServerInterceptor]:
    """Install a provider that hands spans to ``processor`` (tests pass an in-memory one)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; service.name given here wins.
        resource=Resource.create({"service.name": resolved.service_name}),
        # None: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself.
        sampler=None
        if resolved.sample_ratio is None
        else ParentBased(TraceIdRatioBased(resolved.sample_ratio)),
    )
    provider.add_span_processor(processor)
    _installed.tracer = provider.get_tracer("igbutton")
    _installed.provider = provider
    logs.current_trace_ids = _current_trace_ids
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(tracer_provider=provider)
    return [interceptor]


def _current_trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids as W3C hex, or None outside any span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def shutdown() -> None:
    """Flush and stop the exporter, if tracing was on."""
    if _installed.provider is not None:
        _installed.provider.shutdown()
    _installed.provider = None
    _installed.tracer = None
    logs.current_trace_ids = None


class GraphSpan:
    """One Graph API attempt's CLIENT span, with the HTTP semantic-convention attributes.

    The URL is described by ``server.address``, ``server.port`` and ``url.template`` (the
    account's id as ``{ig_user_id}``); ``url.full`` is left out on purpose: with
    ``graph.token_in=query`` it would carry the access token.
    """

    def __init__(self, span: Any) -> None:
        self._span = span
        self._status: int | None = None

    def answered(self, status: int) -> None:
        """Graph answered with this HTTP status."""
        self._status = status
        self._span.set_attribute("http.response.status_code", status)

    def failed(self, outcome: str) -> None:
        """The attempt failed: ``error.type`` is the HTTP status when Meta answered 4xx/5xx,
        else igbutton's low-cardinality outcome (timeout, connect_error, graph_error, ...)."""
        from opentelemetry.trace import Status, StatusCode

        answered_error = self._status is not None and self._status >= 400
        error_type = str(self._status) if answered_error else outcome
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR))


class _NoGraphSpan(GraphSpan):
    """What :func:`graph_span` yields when tracing is off: records nothing."""

    def __init__(self) -> None:
        super().__init__(None)

    def answered(self, status: int) -> None:
        pass

    def failed(self, outcome: str) -> None:
        pass


_NOOP = contextlib.nullcontext(_NoGraphSpan())


@contextlib.contextmanager
def _graph_span(url: yarl.URL, account_id: str, attempt: int) -> Iterator[GraphSpan]:
    from opentelemetry.trace import SpanKind

    template = _url_template(url, account_id)
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        "server.address": url.host or "",
        "server.port": url.port or 0,
        "url.template": template,
        "igbutton.account_id": account_id,
        "igbutton.attempt": attempt,
    }
    if attempt > 1:
        attributes["http.request.resend_count"] = attempt - 1
    with _installed.tracer.start_as_current_span(
        f"POST {template}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        # GraphSpan.failed sets the status and error.type; an exception is not news.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield GraphSpan(span)


def _url_template(url: yarl.URL, account_id: str) -> str:
    """The path with the account's id (a path segment) as ``{ig_user_id}``: low cardinality."""
    return "/".join("{ig_user_id}" if part == account_id else part for part in url.path.split("/"))


def graph_span(
    url: yarl.URL, account_id: str, attempt: int
) -> contextlib.AbstractContextManager[GraphSpan]:
    """A CLIENT span around one Graph API attempt to ``url`` (without its query: the token
    may be there); a shared no-op when tracing is off."""
    if _installed.tracer is None:
        return _NOOP
    return _graph_span(url, account_id, attempt)
