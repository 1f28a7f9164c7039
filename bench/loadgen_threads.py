"""Closed-loop send load from a pool of threads, the way blocking libraries are used.

``python -m bench.loadgen_threads LIBRARY --threads 50 ...``: each of the threads sends
the seed's button template in a loop through LIBRARY (bench.peers.THREAD_LIBRARIES):
fbmessenger and pymessenger to the sandbox at ``--sandbox-url``, igbutton's blocking
``Client`` (one, shared by every thread, as its channel is thread-safe) to ``--target``.
The protocol with the orchestrator is bench.loadgen_send's: ``start``, ``end``, ``result``.

Each fbmessenger thread has its own ``MessengerClient`` (and so its own requests.Session
and kept-alive connection): one client shared by 50 threads would overflow its session's
10-connection pool and reconnect. pymessenger posts with ``requests.post`` (a new
connection per send), which its users cannot change.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from typing import Any

import igbutton
from bench import peers
from bench.loadgen_send import Window, emit
from bench.stats import latency_summary


def _caller(send: peers.SyncSend, window: Window, lock: threading.Lock) -> None:
    while True:
        started = time.perf_counter()
        if started >= window.end:
            return
        error: str | None = None
        try:
            send()
        except Exception as exc:  # noqa: BLE001 - any library's failure is a counted error
            error = type(exc).__name__
            with lock:
                window.first_error = window.first_error or f"{error}: {exc}"[:300]
        finished = time.perf_counter()
        with lock:
            window.record(started, finished, error)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the threads, announce the window, join them and return the result record."""
    client = igbutton.Client(args.target) if args.library == "igbutton_sync" else None
    try:
        sends = [
            peers.thread_send(args.library, sandbox_url=args.sandbox_url, client=client)
            for _ in range(args.threads)
        ]
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        window = Window(args.warmup, args.duration)
        lock = threading.Lock()
        threads = [
            threading.Thread(target=_caller, args=(send, window, lock), daemon=True)
            for send in sends
        ]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, window.start - time.perf_counter()))
        emit("start")
        time.sleep(max(0.0, window.end - time.perf_counter()))
        emit("end")
        for thread in threads:
            thread.join(args.timeout + 5)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        if client is not None:
            client.close()
    ok = len(window.latencies)
    return {
        "mode": args.library,
        "concurrency": args.threads,
        "channels": None,
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
    parser.add_argument("library", choices=peers.THREAD_LIBRARIES)
    parser.add_argument("--sandbox-url", help="the sandbox's base URL (fbmessenger, pymessenger)")
    parser.add_argument("--target", help="host:port of igbutton (igbutton_sync)")
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per call, seconds")
    args = parser.parse_args()
    emit("result", **run(args))


if __name__ == "__main__":
    main()
