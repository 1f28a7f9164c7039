"""Signed webhook deliveries into igbutton, in its own process.

Open loop at a fixed rate (``--rate`` events/s, as Meta would deliver regardless of how
fast we answer) or closed loop (``--rate 0``: ``--concurrency`` posters back to back, to
find the most events/s the server stores). Each body carries ``--batch`` taps, signed with
the bench app secret; each payload embeds time.time() at the POST, so subscribers measure
end-to-end latency. Warm-up payloads start with ``warm|``, measured ones with ``bench|``.
Protocol on stdout as in bench.loadgen_send; with ``--count`` it posts that many events
(no warm-up) and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import time
from collections import Counter
from typing import Any

import aiohttp

from bench import payloads
from bench.loadgen_send import emit
from bench.stats import latency_summary

BENCH_PREFIX = "bench|"
WARM_PREFIX = "warm|"


class Poster:
    """Builds, signs and POSTs deliveries, and keeps the score."""

    def __init__(self, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.session = session
        self.url = args.url
        self.batch = args.batch
        self.run_id = args.run_id
        self.ids = itertools.count()
        self.window_start = 0.0
        self.window_end = float("inf")
        self.latencies: list[float] = []
        self.events_in_window = 0
        self.bench_events_ok = 0
        self.errors: Counter[str] = Counter()
        self.first_error: str | None = None

    async def post(self, measured: bool) -> None:
        mids = [f"bench-{self.run_id}-{next(self.ids)}" for _ in range(self.batch)]
        body = payloads.webhook_body(mids, BENCH_PREFIX if measured else WARM_PREFIX)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": payloads.signature(body),
        }
        started = time.perf_counter()
        error: str | None = None
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    error = f"HTTP {response.status}"
                    self.first_error = self.first_error or f"{error}: {text[:200]!r}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = type(exc).__name__
            self.first_error = self.first_error or f"{error}: {exc}"
        finished = time.perf_counter()
        if error is not None:
            self.errors[error] += 1
            return
        if measured:
            self.bench_events_ok += self.batch
        if self.window_start <= finished <= self.window_end:
            self.latencies.append(finished - started)
            self.events_in_window += self.batch


async def _open_loop(
    poster: Poster, rate: float, warmup: float, duration: float, inflight: int
) -> dict[str, Any]:
    """Start one POST every batch/rate seconds; never wait for answers except at the cap."""
    interval = poster.batch / rate
    limit = asyncio.Semaphore(inflight)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    poster.window_start = t0 + warmup
    poster.window_end = poster.window_start + duration
    started_measure = False
    lag_max = 0.0
    for n in itertools.count():
        due = t0 + n * interval
        if due >= poster.window_end:
            break
        measured = due >= poster.window_start
        if measured and not started_measure:
            started_measure = True
            emit("start")
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_max = max(lag_max, -delay)
        await limit.acquire()

        async def one(measured: bool = measured) -> None:
            try:
                await poster.post(measured)
            finally:
                limit.release()

        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    emit("end")
    if tasks:
        await asyncio.wait(tasks)
    return {"schedule_lag_max_ms": round(1000 * lag_max, 2)}


async def _closed_loop(
    poster: Poster, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    t0 = time.perf_counter()
    poster.window_start = t0 + warmup
    poster.window_end = poster.window_start + duration

    async def worker() -> None:
        while (now := time.perf_counter()) < poster.window_end:
            await poster.post(now >= poster.window_start)

    async def announce() -> None:
        await asyncio.sleep(max(0.0, poster.window_start - time.perf_counter()))
        emit("start")
        await asyncio.sleep(max(0.0, poster.window_end - time.perf_counter()))
        emit("end")

    await asyncio.gather(announce(), *(worker() for _ in range(concurrency)))
    return {}


async def _count(poster: Poster, concurrency: int, count: int) -> dict[str, Any]:
    posts = -(-count // poster.batch)
    queue = iter(range(posts))
    poster.window_start = time.perf_counter()
    emit("start")

    async def worker() -> None:
        for _ in queue:
            await poster.post(True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    poster.window_end = time.perf_counter()
    emit("end")
    return {"elapsed_s": round(poster.window_end - poster.window_start, 3)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Post and return the result record."""
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    connector = aiohttp.TCPConnector(limit=max(args.concurrency, 1))
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        poster = Poster(session, args)
        if args.count:
            extra = await _count(poster, args.concurrency, args.count)
            window = extra["elapsed_s"]
        elif args.rate > 0:
            extra = await _open_loop(
                poster, args.rate, args.warmup, args.duration, args.concurrency
            )
            window = args.duration
        else:
            extra = await _closed_loop(poster, args.concurrency, args.warmup, args.duration)
            window = args.duration
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "batch": args.batch,
        "rate": args.rate or None,
        "concurrency": args.concurrency,
        "window_s": window,
        "posts": len(poster.latencies),
        "events_stored": poster.events_in_window,
        "events_per_s": round(poster.events_in_window / window, 1) if window else None,
        "bench_events_ok": poster.bench_events_ok,
        "errors": dict(poster.errors),
        "first_error": poster.first_error,
        "post_latency": latency_summary(poster.latencies),
        "loadgen_cpu_seconds": round(
            usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 3
        ),
        **extra,
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="igbutton's webhook URL")
    parser.add_argument("--batch", type=int, default=1, help="taps per delivery")
    parser.add_argument("--rate", type=float, default=0, help="events/s; 0: closed loop")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="closed-loop posters / open-loop in-flight cap"
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="post this many events, then stop")
    parser.add_argument("--run-id", default=str(int(time.time())), help="makes mids unique")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    emit("result", **asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
