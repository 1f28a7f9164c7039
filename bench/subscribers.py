"""Postback subscribers for the benchmark, all streams in one process of their own.

``python -m bench.subscribers --target HOST:PORT --streams K [--group G] [--idle]``
opens K SubscribePostbacks streams, each on its own connection (like K subscribing
services). Broadcast streams each expect every event; with --group the K streams are the
members of one group and acknowledge what they get in small batches. With --idle the
streams never read (the slow-consumer memory check).

Protocol: prints ``{"event": "ready"}`` once every stream is open; then reads one command
line on stdin, ``{"cmd": "drain", "expect": N}`` (N bench events were stored), waits until
they arrived or nothing arrived for --quiet seconds, and prints ``{"event": "result"}``.
End-to-end latency is time.time() at receipt minus the time.time() the poster embedded in
the payload: both processes share this machine's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from bench.loadgen_send import emit
from bench.loadgen_webhook import BENCH_PREFIX
from bench.payloads import sent_time
from bench.stats import latency_summary
from igbutton.v1 import postback_service_pb2, postback_service_pb2_grpc

if TYPE_CHECKING:
    from igbutton.v1.postback_service_pb2_grpc import PostbackServiceAsyncStub


class Score:
    """What every stream received."""

    def __init__(self, streams: int) -> None:
        self.per_stream = [0] * streams
        self.latencies: list[float] = []
        self.mids: Counter[str] = Counter()
        self.last_receipt = time.monotonic()
        self.errors: Counter[str] = Counter()
        self.first_error: str | None = None
        self.progress = asyncio.Event()

    def error(self, exc: grpc.aio.AioRpcError) -> None:
        self.errors[exc.code().name] += 1
        self.first_error = self.first_error or f"{exc.code().name}: {exc.details()}"


def _request(
    args: argparse.Namespace, since: float
) -> postback_service_pb2.SubscribePostbacksRequest:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(since * 1e9))
    request = postback_service_pb2.SubscribePostbacksRequest(since_time=stamp)
    if args.group:
        request.group = args.group
        request.ack_deadline.CopyFrom(duration_pb2.Duration(seconds=30))
        request.max_unacked = args.max_unacked
    return request


class Acker:
    """Acknowledges a group member's deliveries every few milliseconds, in one call."""

    def __init__(self, stub: PostbackServiceAsyncStub, group: str) -> None:
        self.stub = stub
        self.group = group
        self.pending: list[str] = []
        self.wake = asyncio.Event()

    def add(self, ack_id: str) -> None:
        self.pending.append(ack_id)
        self.wake.set()

    async def run(self, score: Score) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0.005)  # gathers the acks of a burst into one call
            ids, self.pending = self.pending, []
            if not ids:
                continue
            try:
                await self.stub.AckPostbacks(
                    postback_service_pb2.AckPostbacksRequest(group=self.group, ack_ids=ids),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                score.error(exc)


async def _consume(
    index: int,
    call: Any,
    score: Score,
    acker: Acker | None,
) -> None:
    try:
        async for response in call:
            now = time.time()
            postback = response.postback
            if acker is not None:
                acker.add(response.ack_id)
            # Any postback is progress for the drain: a subscriber still reading the
            # warm-up's backlog is behind, not stalled.
            score.last_receipt = time.monotonic()
            if not postback.payload.startswith(BENCH_PREFIX):
                continue
            sent = sent_time(postback.payload)
            if sent is not None:
                score.latencies.append(now - sent)
            score.per_stream[index] += 1
            if acker is not None:
                score.mids[postback.mid] += 1
            score.last_receipt = time.monotonic()
            score.progress.set()
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            score.error(exc)


def _done(score: Score, expect: int, group: bool) -> bool:
    if group:
        return len(score.mids) >= expect
    return min(score.per_stream, default=0) >= expect


async def _drain(args: argparse.Namespace, score: Score, expect: int) -> None:
    """Wait until every expected postback arrived, or none did for ``args.quiet`` seconds."""
    score.last_receipt = time.monotonic()
    while not _done(score, expect, bool(args.group)):
        if time.monotonic() - score.last_receipt > args.quiet:
            break
        score.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(score.progress.wait(), 0.5)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribe, wait for the drain command, and return the result record."""
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.streams)
    ]
    score = Score(args.streams)
    since = time.time()
    calls = []
    tasks: list[asyncio.Task[None]] = []
    for n, channel in enumerate(channels):
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub: PostbackServiceAsyncStub = postback_service_pb2_grpc.PostbackServiceStub(channel)
        call = stub.SubscribePostbacks(_request(args, since))
        calls.append(call)
        if args.idle:
            continue
        acker = Acker(stub, args.group) if args.group else None
        if acker is not None:
            tasks.append(asyncio.create_task(acker.run(score)))
        tasks.append(asyncio.create_task(_consume(n, call, score, acker)))
    for call in calls:
        await asyncio.wait_for(call.wait_for_connection(), 30)
    emit("ready", streams=args.streams)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    command = json.loads(line) if line.strip() else {"expect": 0}
    expect = int(command.get("expect", 0))
    drain_start = time.monotonic()
    if not args.idle:
        await _drain(args, score, expect)
    drain_s = time.monotonic() - drain_start
    for call in calls:
        call.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    received = sum(score.per_stream)
    wanted = expect if args.group else expect * args.streams
    return {
        "streams": args.streams,
        "group": args.group or None,
        "idle": args.idle,
        "expected": wanted,
        "received": received,
        "missing": max(0, wanted - (len(score.mids) if args.group else received)),
        "duplicates": sum(c - 1 for c in score.mids.values() if c > 1),
        "per_stream_min": min(score.per_stream, default=0),
        "per_stream_max": max(score.per_stream, default=0),
        "drain_s": round(drain_s, 3),
        "errors": dict(score.errors),
        "first_error": score.first_error,
        "latency": latency_summary(score.latencies),
        # By order of receipt: a subscriber that keeps up has the same latency in its first
        # and last quarters; one that falls behind the posters has it growing (a backlog).
        "latency_by_quarter_p50_ms": [
            latency_summary(
                score.latencies[n * len(score.latencies) // 4 :][
                    : max(1, len(score.latencies) // 4)
                ]
            )["p50_ms"]
            for n in range(4)
        ]
        if score.latencies
        else [],
        "subscriber_cpu_seconds": round(
            usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 3
        ),
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="igbutton's gRPC host:port")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--group", default="", help="consumer group: the streams are members")
    parser.add_argument("--max-unacked", type=int, default=1000)
    parser.add_argument("--idle", action="store_true", help="never read (slow consumer)")
    parser.add_argument("--quiet", type=float, default=5.0, help="give up after this idle time")
    args = parser.parse_args()
    emit("result", **asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
