"""The middleware is the one place failures become statuses: a tiny servicer behind the real
RpcMiddleware and Registrar on a real grpc.aio server, raising what servicers raise."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from igbutton.v1 import errors_pb2
from igbutton_server.errors import (
    DETAILS_MAX_BYTES,
    TRUNCATED,
    ApiError,
    FieldViolation,
    InvalidRequest,
    RateLimited,
)
from igbutton_server.rpc_middleware import Registrar, RpcMiddleware
from igbutton_server.storage.postbacks import Filter, GroupFilterMismatch, StoreClosed
from tests.postbacks.conftest import eventually
from tests.send.conftest import AppFactory, details

SERVICE = "igbutton.test.Tiny"
SECRET = "secret internals"

Context = grpc.aio.ServicerContext[Any, Any]


async def crash(_request: bytes, _context: Context) -> bytes:
    raise RuntimeError(SECRET)


async def crash_stream(_request: bytes, _context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError(SECRET)


async def rate_limited_stream(_request: bytes, _context: Context) -> AsyncIterator[bytes]:
    yield b"one"
    yield b"two"
    raise RateLimited("slow down", retry_after=1.5, metadata={"accountId": "17841"})


# Four UTF-8 bytes each, and percent-encoded three times that in grpc-message.
HUGE = "\N{GRINNING FACE}" * 2_000


async def huge_invalid_request(_request: bytes, _context: Context) -> bytes:
    raise InvalidRequest([FieldViolation(HUGE, HUGE)] * 1_000)


async def huge_api_error(_request: bytes, _context: Context) -> bytes:
    raise ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_GRAPH_ERROR,
        HUGE,
        metadata={f"key{i}{HUGE}": HUGE for i in range(100)},
        violations=[FieldViolation("x", "y")] * 50,
        retry_after=2.0,
    )


async def store_closed(_request: bytes, _context: Context) -> bytes:
    raise StoreClosed


async def filter_mismatch(_request: bytes, _context: Context) -> bytes:
    raise GroupFilterMismatch("workers", Filter(frozenset({"17841"}), "order:"))


async def aborts(_request: bytes, context: Context) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


async def writes(_request: bytes, context: Context) -> None:
    # The reader/writer form of a server stream, as grpc's own health Watch is written.
    await context.write(b"written")


_HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "Crash": grpc.unary_unary_rpc_method_handler(crash),
    "CrashStream": grpc.unary_stream_rpc_method_handler(crash_stream),
    "RateLimitedStream": grpc.unary_stream_rpc_method_handler(rate_limited_stream),
    "StoreClosed": grpc.unary_unary_rpc_method_handler(store_closed),
    "HugeInvalidRequest": grpc.unary_unary_rpc_method_handler(huge_invalid_request),
    "HugeApiError": grpc.unary_unary_rpc_method_handler(huge_api_error),
    "FilterMismatch": grpc.unary_unary_rpc_method_handler(filter_mismatch),
    "Aborts": grpc.unary_unary_rpc_method_handler(aborts),
    "Writes": grpc.unary_stream_rpc_method_handler(writes),
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a grpc.aio server whose Tiny service is registered through the Registrar."""
    server = grpc.aio.server()
    registrar: Any = Registrar(server, RpcMiddleware(()))
    # Both registrations, as a generated add_*Servicer_to_server makes them.
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, _HANDLERS),))
    registrar.add_registered_method_handlers(SERVICE, _HANDLERS)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def _unary(channel: grpc.aio.Channel, name: str) -> Callable[[], Awaitable[list[bytes]]]:
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{SERVICE}/{name}"
    )

    async def call() -> list[bytes]:
        return [await method(b"", timeout=10)]

    return call


def _stream(channel: grpc.aio.Channel, name: str) -> Callable[[], Awaitable[list[bytes]]]:
    method = _stream_method(channel, name)

    async def call() -> list[bytes]:
        return [item async for item in method(b"", timeout=10)]

    return call


def _stream_method(
    channel: grpc.aio.Channel, name: str
) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(f"/{SERVICE}/{name}")


def _rpcs(method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return REGISTRY.get_sample_value("igbutton_rpcs_total", labels) or 0.0


@pytest.mark.parametrize(("kind", "name"), [("unary", "Crash"), ("stream", "CrashStream")])
async def test_an_unexpected_failure_is_internal_and_logged_once_with_its_trace(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, kind: str, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    before = _rpcs(f"Tiny/{name}", "INTERNAL")
    call = (_unary if kind == "unary" else _stream)(channel, name)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call()
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    assert SECRET not in str(raised.value.debug_error_string())
    assert SECRET not in str(raised.value.trailing_metadata())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert str(errors[0].exc_info[1]) == SECRET
    assert errors[0].__dict__["method"] == f"/{SERVICE}/{name}"

    # Counted once the server's handler ends, which may be just after the caller has the
    # status (the stream's generator is finalised in a later step of the loop).
    async def counted() -> bool:
        assert _rpcs(f"Tiny/{name}", "INTERNAL") <= before + 1, "counted twice"
        return _rpcs(f"Tiny/{name}", "INTERNAL") == before + 1

    await eventually(counted)


async def test_an_api_error_after_some_messages_reaches_the_caller_with_its_details(
    channel: grpc.aio.Channel,
) -> None:
    call = _stream_method(channel, "RateLimitedStream")(b"", timeout=10)
    assert await call.read() == b"one"
    assert await call.read() == b"two"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    got = details(raised.value)
    assert got.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert got.message == "slow down"
    assert got.reason == "RATE_LIMITED"
    assert got.metadata == {"accountId": "17841"}
    assert got.retry_delay == 1.5


@pytest.mark.parametrize("name", ["HugeInvalidRequest", "HugeApiError"])
async def test_every_error_fits_a_default_clients_metadata_limit(
    channel: grpc.aio.Channel, name: str
) -> None:
    # A default client refuses trailers above 16 KiB, and some above 8 KiB at random
    # (grpc's soft limit): many calls, so an error near the soft limit shows.
    for _ in range(30):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _unary(channel, name)()
        got = details(raised.value)
        assert got.code is not grpc.StatusCode.RESOURCE_EXHAUSTED, got.message
        raw = dict(raised.value.trailing_metadata() or ())["grpc-status-details-bin"]
        assert isinstance(raw, bytes)
        assert len(raw) <= DETAILS_MAX_BYTES
        assert len(got.message.encode()) <= 1024
        assert got.message.endswith(TRUNCATED)
    assert got.reason in ("INVALID_REQUEST", "GRAPH_ERROR")
    if name == "HugeInvalidRequest":
        assert got.code is grpc.StatusCode.INVALID_ARGUMENT
        shown, (last_field, last_description) = got.violations[:-1], got.violations[-1]
        assert 1 <= len(shown) <= 20
        assert all(f.endswith(TRUNCATED) and d.endswith(TRUNCATED) for f, d in shown)
        assert (last_field, last_description) == (
            "",
            f"{1_000 - len(shown)} more violations not shown",
        )
    else:
        assert got.code is grpc.StatusCode.FAILED_PRECONDITION
        assert got.retry_delay == 2.0
        assert got.metadata
        assert all(len(k) <= 64 and len(v) <= 256 for k, v in got.metadata.items())
        assert all(v.endswith(TRUNCATED) for v in got.metadata.values())
        assert got.violations[-1] == (
            "",
            f"{50 - len(got.violations) + 1} more violations not shown",
        )


async def test_a_closed_store_is_shutting_down(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "StoreClosed")()
    got = details(raised.value)
    assert got.code is grpc.StatusCode.UNAVAILABLE
    assert got.reason == "SHUTTING_DOWN"


async def test_a_group_filter_mismatch_is_an_invalid_request_naming_the_filters(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "FilterMismatch")()
    got = details(raised.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.reason == "INVALID_REQUEST"
    assert got.violations == [
        (
            "group",
            (
                "group workers exists with other filters: account_ids 17841, "
                "payload_prefix order:; members of a group must use the same filters"
            ),
        )
    ]


async def test_a_handlers_own_abort_passes_through_untouched(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel, "Aborts")()
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no such thing"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_stream_written_through_the_context_is_served(
    channel: grpc.aio.Channel,
) -> None:
    assert await _stream(channel, "Writes")() == [b"written"]


async def test_health_watch_streams_the_serving_status(start_app: AppFactory) -> None:
    app = await start_app()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        first = await watch.read()
        watch.cancel()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
