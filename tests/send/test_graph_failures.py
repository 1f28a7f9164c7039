"""Graph errors, retries, ambiguous failures and deadlines, against the real sandbox."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import time
from typing import Any

import grpc
import pytest

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.sandbox import Fault, Sandbox
from igbutton_server.send.graph_client import retry_after_seconds
from tests.send.conftest import ACCOUNT, AppFactory, details, send_request, stub_for

C = grpc.StatusCode

# (graph code, subcode, is_transient, gRPC status, ErrorInfo reason, RetryInfo expected)
GRAPH_TABLE: list[tuple[int, int | None, bool | None, grpc.StatusCode, str, bool]] = [
    (1, None, None, C.UNAVAILABLE, "GRAPH_UNAVAILABLE", False),
    (2, None, None, C.UNAVAILABLE, "GRAPH_UNAVAILABLE", False),
    (1200, None, None, C.UNAVAILABLE, "GRAPH_UNAVAILABLE", False),
    (4, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (17, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (32, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (613, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (341, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (80001, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (80002, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (80006, None, None, C.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    (368, None, None, C.FAILED_PRECONDITION, "POLICY_BLOCKED", False),
    (10, None, None, C.PERMISSION_DENIED, "GRAPH_PERMISSION_DENIED", False),
    (10, 2534022, None, C.FAILED_PRECONDITION, "OUTSIDE_MESSAGING_WINDOW", False),
    (10, 2018278, None, C.FAILED_PRECONDITION, "OUTSIDE_MESSAGING_WINDOW", False),
    (10, 1545041, None, C.PERMISSION_DENIED, "GRAPH_PERMISSION_DENIED", False),
    (100, None, None, C.INVALID_ARGUMENT, "GRAPH_INVALID_PARAMETER", False),
    (100, 2018001, None, C.NOT_FOUND, "RECIPIENT_NOT_FOUND", False),
    (190, None, None, C.FAILED_PRECONDITION, "ACCESS_TOKEN_INVALID", False),
    (200, None, None, C.PERMISSION_DENIED, "GRAPH_PERMISSION_DENIED", False),
    (230, None, None, C.PERMISSION_DENIED, "GRAPH_PERMISSION_DENIED", False),
    (299, None, None, C.PERMISSION_DENIED, "GRAPH_PERMISSION_DENIED", False),
    (200, 1545041, None, C.FAILED_PRECONDITION, "RECIPIENT_UNAVAILABLE", False),
    (551, None, None, C.FAILED_PRECONDITION, "RECIPIENT_UNAVAILABLE", False),
    (12345, None, None, C.UNKNOWN, "GRAPH_ERROR", False),
    (12345, None, True, C.UNAVAILABLE, "GRAPH_UNAVAILABLE", False),
]

NO_RETRY = {"max_attempts": 1}
FAST_RETRY = {"backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05}


def _case_id(case: tuple[Any, ...]) -> str:
    code, subcode, transient = case[:3]
    return f"{code}" + (f"-{subcode}" if subcode else "") + ("-transient" if transient else "")


@pytest.mark.parametrize(
    ("code", "subcode", "transient", "status", "reason", "has_retry_info"),
    GRAPH_TABLE,
    ids=[_case_id(c) for c in GRAPH_TABLE],
)
async def test_graph_error_maps_to_status_and_error_info(
    start_app: AppFactory,
    code: int,
    subcode: int | None,
    transient: bool | None,
    status: grpc.StatusCode,
    reason: str,
    has_retry_info: bool,
) -> None:
    app = await start_app(graph=NO_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(
        Fault(kind="graph_error", code=code, subcode=subcode, is_transient=transient)
    )
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (status, reason)
    assert got.metadata["graphCode"] == str(code)
    assert got.metadata.get("graphSubcode") == (str(subcode) if subcode else None)
    assert got.metadata["graphType"] == "IGApiException"
    assert len(app.sandbox.received) == 1
    assert len(got.metadata["fbtraceId"]) == 11  # the sandbox's fbtrace_id, passed through
    assert f"(#{code})" in got.message
    assert (got.retry_delay is not None) == has_retry_info


@pytest.mark.parametrize(
    ("code", "subcode"),
    [(c[0], c[1]) for c in GRAPH_TABLE if c[3] not in (C.UNAVAILABLE, C.RESOURCE_EXHAUSTED)],
)
async def test_final_graph_errors_are_not_retried(
    start_app: AppFactory, code: int, subcode: int | None
) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=code, subcode=subcode, count=5))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SendButtonTemplate(send_request(), timeout=10)
    assert len(app.sandbox.received) == 1


async def test_temporary_error_is_retried_then_delivers_once(start_app: AppFactory) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=2, count=2, http_status=500))
    async with stub_for(app) as stub:
        reply = await stub.SendButtonTemplate(send_request(), timeout=10)
    assert len(app.sandbox.received) == 3
    assert [r.message_id for r in app.sandbox.received if r.accepted] == [reply.message_id]


async def test_retries_stop_at_max_attempts(start_app: AppFactory) -> None:
    app = await start_app(graph={**FAST_RETRY, "max_attempts": 3})
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=1200, count=10))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
    assert details(caught.value).reason == "GRAPH_UNAVAILABLE"
    assert len(app.sandbox.received) == 3


async def test_rate_limit_code_is_retried_after_holding_the_account(
    start_app: AppFactory,
) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=613))
    async with stub_for(app) as stub:
        reply = await stub.SendButtonTemplate(send_request(), timeout=10)
    assert reply.message_id
    assert len(app.sandbox.received) == 2


def _usage(minutes: int) -> dict[str, str]:
    entry = {"type": "instagram", "call_count": 100, "estimated_time_to_regain_access": minutes}
    return {"X-Business-Use-Case-Usage": json.dumps({ACCOUNT: [entry]})}


@pytest.mark.parametrize("code", [4, 80002])
async def test_meta_throttle_holds_the_account_back(start_app: AppFactory, code: int) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=code, headers=_usage(2)))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=5)
        first = details(caught.value)
        assert (first.code, first.reason) == (C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert first.metadata["graphCode"] == str(code)
        assert first.retry_delay == pytest.approx(120, abs=1)

        # Every later caller is held back without reaching Meta.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=5)
        second = details(caught.value)
        assert (second.code, second.reason) == (C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert second.retry_delay is not None
        assert 100 < second.retry_delay <= 120
        assert "graphCode" not in second.metadata
    assert len(app.sandbox.received) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_of_a_429_sets_the_hold_and_retry_info(
    start_app: AppFactory, form: str
) -> None:
    """Retry-After comes as delay-seconds or as an HTTP-date (RFC 9110); both are honoured."""
    app = await start_app(graph={**FAST_RETRY, "max_attempts": 2})
    assert app.sandbox is not None
    retry_after = (
        "30" if form == "seconds" else email.utils.formatdate(time.time() + 30, usegmt=True)
    )
    app.sandbox.add_fault(
        Fault(kind="http_status", http_status=429, headers={"Retry-After": retry_after}, count=2)
    )
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=5)
        first = details(caught.value)
        # The next caller is held back by the same wait, without reaching Meta.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=5)
        second = details(caught.value)
    assert (first.code, first.reason) == (C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert first.retry_delay == pytest.approx(30, abs=1.5)  # an HTTP-date has 1 s resolution
    assert (second.code, second.reason) == (C.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert second.retry_delay is not None
    assert 25 < second.retry_delay <= 31
    assert len(app.sandbox.received) == 1


NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),
        ("Fri, 15 Jan 2027 08:01:00 -0000", 60.0),  # RFC 5322's "UTC, origin unknown"
        ("Fri, 15 Jan 2027 09:00:30 +0100", 30.0),
        ("Fri, 15 Jan 2027 07:59:00 GMT", None),  # in the past
        ("0", None),
        ("-5", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=NOW) == seconds


@pytest.mark.parametrize(
    ("http_status", "retried", "status", "reason"),
    [
        (503, True, C.UNAVAILABLE, "GRAPH_UNAVAILABLE"),
        (429, True, C.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
        (500, False, C.UNKNOWN, "SEND_OUTCOME_UNKNOWN"),
        (502, False, C.UNKNOWN, "SEND_OUTCOME_UNKNOWN"),
        (504, False, C.UNKNOWN, "SEND_OUTCOME_UNKNOWN"),
        (404, False, C.UNKNOWN, "GRAPH_ERROR"),
    ],
)
async def test_http_status_without_graph_error(
    start_app: AppFactory,
    http_status: int,
    retried: bool,
    status: grpc.StatusCode,
    reason: str,
) -> None:
    """Only a 503/429 from a proxy surely means "not processed"; the rest may have sent."""
    app = await start_app(graph={**FAST_RETRY, "max_attempts": 2})
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="http_status", http_status=http_status, count=2))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (status, reason)
    assert got.metadata["httpStatus"] == str(http_status)
    assert len(app.sandbox.received) == (2 if retried else 1)


async def test_no_retry_on_timeout_after_the_request_was_written(start_app: AppFactory) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="slow", delay_seconds=30))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=1.0)
    got = details(caught.value)
    assert got.code in (C.DEADLINE_EXCEEDED, C.UNKNOWN)
    if got.reason:  # igbutton answered before the caller's own deadline fired
        assert got.reason == "SEND_OUTCOME_UNKNOWN"
        assert "did not retry" in got.message
    assert len(app.sandbox.received) == 1


async def test_no_retry_on_dropped_connection(start_app: AppFactory) -> None:
    app = await start_app(graph=FAST_RETRY)
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="drop"))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (C.UNKNOWN, "SEND_OUTCOME_UNKNOWN")
    assert len(app.sandbox.received) == 1


def _send_path_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still serving a SendService call or running send-path or HTTP-client code.

    grpc.aio names each call's handler task after its method; other tasks are recognised
    by walking their await chain (grpc's Cython coroutines end that walk early).
    """
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        if "/igbutton.v1.SendService/" in task.get_name():
            found.append(task)
            continue
        awaitable: Any = task.get_coro()
        while awaitable is not None:
            code = getattr(awaitable, "cr_code", None) or getattr(awaitable, "gi_code", None)
            if code is not None and (
                "igbutton_server/send/" in code.co_filename or "aiohttp/client" in code.co_filename
            ):
                found.append(task)
                break
            awaitable = getattr(awaitable, "cr_await", None) or getattr(
                awaitable, "gi_yieldfrom", None
            )
    return found


async def _nothing_left_running() -> None:
    for _ in range(200):
        if not _send_path_tasks():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still running: {_send_path_tasks()}")


async def test_short_deadline_ends_the_call_on_time(start_app: AppFactory) -> None:
    app = await start_app()
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="slow", delay_seconds=30))
    async with stub_for(app) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=0.3)
        elapsed = time.monotonic() - started
    assert details(caught.value).code in (C.DEADLINE_EXCEEDED, C.UNKNOWN)
    assert elapsed < 2.0  # loose: CI machines are slow; the point is "not 30 s"
    await _nothing_left_running()
    # The HTTP request was abandoned: the sandbox never answered it.
    assert [r.status for r in app.sandbox.received] == [0]


async def test_cancelled_call_cancels_the_http_request(start_app: AppFactory) -> None:
    app = await start_app()
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="slow", delay_seconds=30))
    async with stub_for(app) as stub:
        call = stub.SendButtonTemplate(send_request(), timeout=20)
        for _ in range(500):
            if app.sandbox.received:
                break
            await asyncio.sleep(0.01)
        assert app.sandbox.received
        assert _send_path_tasks()  # the check below is not vacuous
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await _nothing_left_running()


async def test_deadline_shorter_than_the_backoff_is_not_slept_past(
    start_app: AppFactory,
) -> None:
    app = await start_app(graph={"backoff_initial_seconds": 5.0, "backoff_max_seconds": 5.0})
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=2, count=5))
    # Full jitter could draw a short delay; a fixed random draw makes the test exact.
    assert app.send is not None
    app.send.graph._rand = lambda: 1.0
    async with stub_for(app) as stub:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=2.0)
        elapsed = time.monotonic() - started
    assert details(caught.value).reason == "GRAPH_UNAVAILABLE"
    assert elapsed < 1.5
    assert len(app.sandbox.received) == 1


async def test_slow_answers_seen_earlier_keep_a_late_retry_from_starting(
    start_app: AppFactory,
) -> None:
    """The process's answer times count, not only this call's: after Meta answered in 0.6 s,
    a retry with under 0.5 s left is not started even though this call's failure was quick."""
    app = await start_app()
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="slow", delay_seconds=0.6))
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(), timeout=10)
        app.sandbox.add_fault(Fault(kind="graph_error", code=2))
        app.sandbox.add_fault(Fault(kind="slow", delay_seconds=0.6))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=0.5)
    got = details(caught.value)
    assert (got.code, got.reason) == (C.UNAVAILABLE, "GRAPH_UNAVAILABLE")
    assert len(app.sandbox.received) == 2
    assert app.sandbox.pending_faults == 1  # the slow answer was never asked for


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_retried_then_unavailable(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="igbutton_server.send")
    app = await start_app(
        sandbox={"enabled": False},
        accounts=[{"id": ACCOUNT, "access_token": "some-access-token"}],
        graph={**FAST_RETRY, "max_attempts": 3, "base_url": f"http://127.0.0.1:{_closed_port()}"},
    )
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (C.UNAVAILABLE, "GRAPH_UNAVAILABLE")
    assert "nothing was sent" in got.message
    attempts = [r for r in caplog.records if r.getMessage() == "graph attempt failed"]
    assert [getattr(r, "attempt", None) for r in attempts] == [1, 2, 3]


async def test_success_after_meta_answers_without_message_id_is_unknown(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    """A 2xx without a message id: Meta acted, but igbutton cannot say what happened."""
    sandbox.add_fault(Fault(kind="http_status", http_status=200))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(send_request(), timeout=10)
    assert details(caught.value).reason == "SEND_OUTCOME_UNKNOWN"
    assert len(sandbox.received) == 1


async def test_unexpected_exception_is_logged_with_trace_and_internal(
    app: App,
    stub: send_service_pb2_grpc.SendServiceStub,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug in the send path")

    assert app.send is not None
    monkeypatch.setattr(app.send.graph, "send", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(send_request(), timeout=10)
    assert caught.value.code() == C.INTERNAL
    assert "a bug" not in (caught.value.details() or "")  # internals stay in the log
    [record] = [r for r in caplog.records if r.getMessage() == "RPC failed unexpectedly"]
    assert record.exc_info is not None
