"""Closed-loop send load: N concurrent callers for a fixed time, in its own process.

``python -m bench.loadgen_send grpc --target HOST:PORT ...`` calls SendButtonTemplate (on
igbutton or on the trivial servicer); ``grpc_rid`` does the same with a fresh request_id
per send; ``python -m bench.loadgen_send http --url URL ...`` POSTs the same message's
Graph JSON straight to the sandbox (pre-encoded: the ceiling); ``client --target`` sends
through igbutton's AsyncClient with its defaults (a request_id per send) and ``aiohttp
--sandbox-url`` the way a team calls the Graph API directly with aiohttp (bench.peers).
After the warm-up it prints ``{"event": "start"}``, at the end ``{"event": "end"}`` (the
orchestrator measures the server between the two), then one ``{"event": "result", ...}``
line. Only calls that complete inside the measured window count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc

import igbutton
from bench import payloads, peers
from bench.stats import latency_summary
from igbutton.v1 import send_service_pb2, send_service_pb2_grpc

if TYPE_CHECKING:
    from igbutton.v1.send_service_pb2_grpc import SendServiceAsyncStub

Call = Callable[[], Awaitable[None]]


def emit(event: str, **fields: Any) -> None:
    """Print one protocol line for the orchestrator."""
    print(json.dumps({"event": event, **fields}), flush=True)


class Window:
    """The warm-up and measured phases shared by every caller."""

    def __init__(self, warmup: float, duration: float) -> None:
        now = time.perf_counter()
        self.start = now + warmup
        self.end = self.start + duration
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first_error: str | None = None

    def record(self, started: float, finished: float, error: str | None) -> None:
        if not self.start <= finished <= self.end:
            return
        if error is None:
            self.latencies.append(finished - started)
        else:
            self.errors[error] += 1


async def _caller(call: Call, window: Window) -> None:
    while True:
        started = time.perf_counter()
        if started >= window.end:
            return
        error: str | None = None
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            error = exc.code().name
            window.first_error = window.first_error or f"{error}: {exc.details()}"
        except (
            aiohttp.ClientError,
            OSError,
            TimeoutError,
            igbutton.IgButtonError,
            peers.SendFailed,
        ) as exc:
            error = type(exc).__name__
            window.first_error = window.first_error or f"{error}: {exc}"
        window.record(started, time.perf_counter(), error)


async def _announce(window: Window) -> None:
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    emit("start")
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    emit("end")


async def _run(calls: list[Call], warmup: float, duration: float) -> Window:
    window = Window(warmup, duration)
    await asyncio.gather(_announce(window), *(_caller(call, window) for call in calls))
    return window


def _grpc_calls(
    target: str, concurrency: int, channels: int, timeout: float, *, request_ids: bool = False
) -> tuple[list[Call], list[grpc.aio.Channel]]:
    # A local subchannel pool per channel gives each its own TCP connection (SO_REUSEPORT
    # workers are balanced per connection).
    options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs: list[SendServiceAsyncStub] = [send_service_pb2_grpc.SendServiceStub(ch) for ch in chans]
    request = payloads.send_request()
    calls: list[Call] = []
    for n in range(concurrency):
        stub = stubs[n % channels]

        async def call(stub: SendServiceAsyncStub = stub) -> None:
            if request_ids:  # what the clients add: a fresh request_id per send
                one = send_service_pb2.SendButtonTemplateRequest()
                one.CopyFrom(request)
                one.request_id = str(uuid.uuid4())
                await stub.SendButtonTemplate(one, timeout=timeout)
            else:
                await stub.SendButtonTemplate(request, timeout=timeout)

        calls.append(call)
    return calls, chans


def _http_calls(
    session: aiohttp.ClientSession, url: str, token: str, concurrency: int
) -> list[Call]:
    body = payloads.graph_body()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def call() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)

    return [call] * concurrency


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load and return the result record."""
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    if args.mode in ("grpc", "grpc_rid"):
        calls, chans = _grpc_calls(
            args.target,
            args.concurrency,
            args.channels,
            args.timeout,
            request_ids=args.mode == "grpc_rid",
        )
        for ch in chans:
            await asyncio.wait_for(ch.channel_ready(), 30)
        try:
            window = await _run(calls, args.warmup, args.duration)
        finally:
            for ch in chans:
                await ch.close()
    elif args.mode == "client":
        clients = [igbutton.AsyncClient(args.target) for _ in range(args.channels)]
        try:
            sends = [peers.igbutton_async_send(client) for client in clients]
            calls = [sends[n % len(sends)] for n in range(args.concurrency)]
            window = await _run(calls, args.warmup, args.duration)
        finally:
            for client in clients:
                await client.close()
    else:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            calls = (
                _http_calls(session, args.url, args.token, args.concurrency)
                if args.mode == "http"
                else [peers.aiohttp_send(session, args.sandbox_url)] * args.concurrency
            )
            window = await _run(calls, args.warmup, args.duration)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    ok = len(window.latencies)
    return {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "channels": args.channels if args.mode in ("grpc", "grpc_rid", "client") else None,
        "duration_s": args.duration,
        "calls": ok,
        "calls_per_s": round(ok / args.duration, 1),
        "errors": dict(window.errors),
        "first_error": window.first_error,
        "latency": latency_summary(window.latencies),
        "loadgen_cpu_seconds": round(
            usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 3
        ),
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["grpc", "grpc_rid", "http", "client", "aiohttp"])
    parser.add_argument("--target", help="host:port of a SendService (grpc, client)")
    parser.add_argument("--url", help="the Graph send URL (http mode)")
    parser.add_argument("--sandbox-url", help="the sandbox's base URL (aiohttp mode)")
    parser.add_argument("--token", default=payloads.ACCESS_TOKEN)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--channels", type=int, default=1, help="gRPC connections")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per call, seconds")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    emit("result", **result)


if __name__ == "__main__":
    main()
