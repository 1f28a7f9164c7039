"""Requests far beyond the limits: answered INVALID_ARGUMENT that a default client can read,
without the server's memory growing with the request's size."""

from __future__ import annotations

import asyncio
import gc

import grpc
import psutil
import pytest
from google.protobuf.internal import encoder

from igbutton.v1 import button_template_pb2 as bt
from igbutton.v1 import send_service_pb2
from igbutton_server.sandbox import Sandbox
from tests.send.conftest import RECIPIENT, details

MILLION = 1_000_000
# The title and the action of each of the first three buttons; the rest are only counted.
FIRST_THREE = [f"template.buttons[{i}].{part}" for i in range(3) for part in ("title", "action")]


def _raw_request(buttons: int) -> bytes:
    """A send (or validate) request with ``buttons`` empty buttons, built as bytes.

    Each empty Button is two bytes on the wire (field 2, length 0), so a million of them
    make a 2 MB request, well under grpc's 4 MB default; a Python list of a million Button
    messages would cost the test itself hundreds of MB.
    """
    template = bt.ButtonTemplate(text="Pick one").SerializeToString() + b"\x12\x00" * buttons
    head = send_service_pb2.ValidateButtonTemplateRequest(recipient_id=RECIPIENT)
    # Field 3 (template), length-delimited; the same number in both request messages.
    return head.SerializeToString() + b"\x1a" + encoder._VarintBytes(len(template)) + template


def _rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


_RPC_TASKS = frozenset({"_handle_exceptions", "_handle_rpc"})
"""What grpc.aio's server names the task it runs each call in."""


async def _server_calls_ended() -> None:
    """Wait until the server's tasks for its calls have ended. The server (in this process,
    on this loop) holds the parsed request until its task has sent the status and ended,
    which may be after the client has the status: measured before that, the request
    still counts (RSS 45 MB higher under load)."""
    running = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") in _RPC_TASKS
    ]
    if running:
        _, pending = await asyncio.wait(running, timeout=30)
        assert not pending, "the server did not finish the call"


async def _call(channel: grpc.aio.Channel, method: str, request: bytes) -> grpc.aio.AioRpcError:
    # Bytes in, bytes out: a default client with no (de)serializer of its own.
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/igbutton.v1.SendService/{method}"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=30)
    return caught.value


@pytest.mark.parametrize("method", ["ValidateButtonTemplate", "SendButtonTemplate"])
async def test_a_million_buttons_get_one_readable_violation_and_no_memory(
    channel: grpc.aio.Channel, sandbox: Sandbox, method: str
) -> None:
    request = _raw_request(MILLION)
    assert 2_000_000 < len(request) < 2_100_000
    await _call(channel, method, _raw_request(4))  # warm up: code paths and buffers
    await _server_calls_ended()
    before = _rss_mb()
    error = await _call(channel, method, request)
    await _server_calls_ended()
    grown = _rss_mb() - before
    got = details(error)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert got.violations[0] == ("template.buttons", f"at most 3 buttons, got {MILLION}")
    assert [v[0] for v in got.violations[1:]] == FIRST_THREE
    # Parsing the request costs about 54 MB while the call runs; none of it may stay.
    assert grown < 40, f"RSS grew {grown:.0f} MB"
    assert sandbox.received == []


@pytest.mark.parametrize("method", ["ValidateButtonTemplate", "SendButtonTemplate"])
async def test_three_thousand_buttons_are_invalid_argument_not_resource_exhausted(
    channel: grpc.aio.Channel, method: str
) -> None:
    got = details(await _call(channel, method, _raw_request(3000)))
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v[0] for v in got.violations] == ["template.buttons", *FIRST_THREE]
    assert (
        got.message == "invalid request: template.buttons: at most 3 buttons, got 3000 (and 6 more)"
    )
