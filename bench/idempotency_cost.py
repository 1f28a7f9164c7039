"""What the idempotency store costs one send, without gRPC or HTTP around it.

``python -m bench.idempotency_cost [--backend sqlite|nats] [--concurrency 1,50]``: callers
run igbutton's own :class:`IdempotentSends` on the real store (a SQLite file on the
repository's disk, or a nats-server of its own), each send a fresh ``request_id`` whose
"Graph call" answers at once. Reported per send: CPU microseconds of this process (the
event loop and the SQLite threads; psutil), of nats-server, SQLite commits (one WAL fsync
each) and the sends/s. That is the store's share of an idempotent send, the part the
send benchmark's ``idempotent_cost`` rows add over a plain send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench import procs, servers
from igbutton_server import event_loop
from igbutton_server.config import Settings
from igbutton_server.send.idempotency import IdempotentSends
from igbutton_server.send.outcome import SendResult, SendTracker
from igbutton_server.send.ratelimit import AccountRateLimiter
from igbutton_server.storage.idempotency import IdempotencyStore


async def _sends(store: IdempotencyStore, concurrency: int, total: int) -> float:
    """``total`` sends by ``concurrency`` callers; the seconds they took."""
    sends = IdempotentSends(store, 3600.0)
    left = total
    # The server's own limiter, its rate lifted as in the send benchmark: every send finds
    # its slot free at once, as at any rate below the account's limit.
    limiter = AccountRateLimiter(1e9, 1_000_000)

    class Slot:
        def take_now(self) -> bool:
            return limiter.take_now("account")

        def give_back(self) -> None:
            limiter.give_back("account")

    # Builds before the slot existed (for before/after comparisons) take no slot.
    slot = Slot() if hasattr(limiter, "take_now") else None

    async def graph(tracker: SendTracker) -> SendResult:
        if not getattr(tracker, "slot_taken", False):
            await limiter.acquire("account", time.monotonic() + 10)
        await tracker.about_to_write()
        return SendResult("recipient", "mid")

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if slot is None:
                await sends.run(uuid.uuid4().hex, "fingerprint", 10.0, graph)
            else:
                await sends.run(uuid.uuid4().hex, "fingerprint", 10.0, graph, slot)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - started


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by thread name (summed), and the
    process's system (kernel) time as ``kernel``."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for thread in psutil.Process().threads():
        name = names.get(thread.id, "other").split("_")[0]
        out[name] = out.get(name, 0.0) + thread.user_time + thread.system_time
    out["kernel"] = psutil.Process().cpu_times().system
    return out


async def _measure(
    store: IdempotencyStore, concurrency: int, total: int, nats_pid: int | None
) -> dict[str, Any]:
    await _sends(store, concurrency, max(total // 10, concurrency))  # warm-up
    me = psutil.Process()
    other = psutil.Process(nats_pid) if nats_pid else None
    commits0 = getattr(store, "commits", None)
    cpu0 = me.cpu_times()
    threads0 = _thread_cpu()
    nats0 = other.cpu_times() if other else None
    seconds = await _sends(store, concurrency, total)
    cpu1 = me.cpu_times()
    threads1 = _thread_cpu()
    nats1 = other.cpu_times() if other else None
    commits1 = getattr(store, "commits", None)
    own = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1e6 / total
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "sends": total,
        "sends_per_s": round(total / seconds, 1),
        "cpu_us_per_send": round(own, 1),
        "threads_cpu_us_per_send": {
            name: round((spent - threads0.get(name, 0.0)) * 1e6 / total, 1)
            for name, spent in threads1.items()
            if spent > threads0.get(name, 0.0)
        },
    }
    if nats0 is not None and nats1 is not None:
        spent = nats1.user + nats1.system - nats0.user - nats0.system
        out["nats_server_cpu_us_per_send"] = round(spent * 1e6 / total, 1)
    if commits0 is not None and commits1 is not None:
        out["commits_per_send"] = round((commits1 - commits0) / total, 3)
    return out


async def _run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    nats: servers.Running | None = None
    store: IdempotencyStore
    if args.backend == "sqlite":
        from igbutton_server.storage.sqlite.idempotency import SqliteIdempotencyStore

        sqlite_store = SqliteIdempotencyStore(work / "idempotency.db")
        sqlite_store.open()
        store = sqlite_store
    else:
        from igbutton_server.storage.nats.idempotency import NatsIdempotencyStore

        nats = servers.start_nats(work, "nats-idempotency")
        settings = Settings.load(
            storage={"backend": "nats", "nats": {"servers": [nats.ports["url"]]}},
            webhook={"allow_unsigned": True},
        )
        store = await NatsIdempotencyStore.open(settings)
    try:
        pid = nats.child.pid if nats else None
        return [await _measure(store, c, args.sends, pid) for c in args.concurrency]
    finally:
        await store.close()
        if nats is not None:
            nats.stop()


def main() -> None:
    """Entry point: one JSON line per concurrency."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "nats"], default="sqlite")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50]
    )
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--work-dir", type=Path, help="default: a folder on the repo's disk")
    args = parser.parse_args()
    # On the repository's disk, not a tmpfs where fsync is free.
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="idem-", dir=procs.REPO / "bench"))
    work.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        for row in await _run(args, work):
            print(json.dumps({"backend": args.backend, **row}), flush=True)

    try:
        event_loop.run(run())  # uvloop, as igbutton runs
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
