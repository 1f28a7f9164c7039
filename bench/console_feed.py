"""Does an open console live feed slow the webhook? Stored postbacks/s with and without it.

Each run gets a fresh igbutton (SQLite, the in-process sandbox, so the console is on) and
closed-loop signed webhook posters (bench.loadgen_webhook: each event counted once igbutton
answered 200, after the durable append). In the "feed" run one browser-like client holds
/console/live/events open and reads every event, as the Live postbacks page does; it reports
how many it read. The runs alternate (none, feed, none, feed, ...) so drift on a shared
machine hits both alike.

    .venv/bin/python -m bench.console_feed --rounds 2 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs, servers
from bench.servers import ServerKnobs


async def _read_feed(url: str, seconds: float) -> None:
    """Hold the event stream open until SIGTERM (or ``seconds``); print how many it read."""
    count = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(url.rsplit("/live/events", 1)[0] + "/live") as page:
            await page.read()  # the session cookie, as a browser gets it
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as stream:

            async def consume() -> None:
                nonlocal count
                async for line in stream.content:
                    if line.startswith(b"event: hello"):
                        print(json.dumps({"event": "ready"}), flush=True)
                    elif line.startswith(b"event: postback"):
                        count += 1

            reading = asyncio.create_task(consume())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([reading, stopping], timeout=seconds, return_when="FIRST_COMPLETED")
            for task in (reading, stopping):
                task.cancel()
            await asyncio.wait([reading, stopping])
    print(json.dumps({"event": "result", "postbacks_read": count}), flush=True)


def _run(work: Path, feed: bool, args: argparse.Namespace, index: int) -> dict[str, Any]:
    name = f"console-{'feed' if feed else 'none'}-{index}"
    igb = servers.start_igbutton(
        name,
        work,
        ServerKnobs(),
        in_process_sandbox=True,
        extra_env={"IGBUTTON_CONSOLE__ENABLED": "true"},
    )
    reader: procs.Child | None = None
    try:
        if feed:
            url = f"http://127.0.0.1:{igb.ports['http']}/console/live/events"
            reader = procs.start(
                f"{name}-reader",
                [
                    procs.PYTHON,
                    "-m",
                    "bench.console_feed",
                    "--read",
                    url,
                    "--seconds",
                    str(args.duration + args.warmup + 60),
                ],
                work,
                pipes=True,
            )
            procs.expect_event(reader, "ready", timeout=60)
        poster = procs.start(
            f"{name}-post",
            [
                procs.PYTHON,
                "-m",
                "bench.loadgen_webhook",
                f"--url=http://127.0.0.1:{igb.ports['webhook']}/webhook",
                "--rate=0",
                f"--batch={args.batch}",
                f"--concurrency={args.concurrency}",
                f"--duration={args.duration}",
                f"--warmup={args.warmup}",
                f"--run-id={name}-{time.time_ns()}",
            ],
            work,
            pipes=True,
        )
        meter = procs.Meter(igb.child.pid)
        try:
            procs.expect_event(poster, "start", timeout=120)
            meter.begin()
            procs.expect_event(poster, "end", timeout=args.duration + 120)
            usage = meter.end()
            result = procs.expect_event(poster, "result", timeout=180)
        finally:
            poster.stop()
        record = {
            "feed": feed,
            "events_per_s": result["events_per_s"],
            "errors": result["errors"],
            "post_p50_ms": result["post_latency"].get("p50_ms"),
            "igbutton_cpu_percent": usage["cpu_percent"],
            # igbutton's CPU per stored postback: what the feed costs it, apart from what
            # the loadgen and the reader take from the same cores.
            "igbutton_cpu_us_per_event": round(
                1e6 * usage["cpu_seconds"] / max(result["events_stored"], 1), 1
            ),
        }
        if reader is not None:
            reader.popen.send_signal(signal.SIGTERM)  # ends its wait: it prints what it read
            record["feed_read"] = _last_count(reader)
        return record
    finally:
        if reader is not None:
            reader.stop()
        igb.stop()


def _last_count(reader: procs.Child) -> int | None:
    try:
        return int(procs.expect_event(reader, "result", timeout=5)["postbacks_read"])
    except (procs.ChildFailed, KeyError, ValueError):
        return None


def main() -> None:
    """Entry point: the comparison, or (``--read``) the feed reader child."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.read:
        asyncio.run(_read_feed(args.read, args.seconds))
        return
    runs = []
    with tempfile.TemporaryDirectory(prefix="igbutton-console-bench-") as tmp:
        for index in range(args.rounds):
            for feed in (False, True):
                record = _run(Path(tmp), feed, args, index)
                print(json.dumps(record), file=sys.stderr, flush=True)
                runs.append(record)
    summary = {}
    for feed in (False, True):
        rates = [r["events_per_s"] for r in runs if r["feed"] is feed]
        summary["with_feed" if feed else "without_feed"] = {
            "events_per_s": rates,
            "mean": round(sum(rates) / len(rates), 1),
        }
    without, with_feed = summary["without_feed"]["mean"], summary["with_feed"]["mean"]
    summary["change_percent"] = round(100 * (with_feed - without) / without, 1)
    print(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
