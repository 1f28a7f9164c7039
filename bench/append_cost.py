"""What storing one webhook delivery costs the SQLite store, without HTTP around it.

``python -m bench.append_cost [--concurrency 16] [--deliveries 3000] [--statements]``:
posters append one postback each and note its sender's messaging window side by side, as
the webhook does for a delivery of one tap, on the real store (one SQLite file on the
repository's disk, its writer thread and readers). Reported per delivery: CPU microseconds
of this process (the event loop and the SQLite threads; psutil), SQLite commits (one WAL
fsync each), and with ``--statements`` the statements the writer ran (its connection's
trace callback, which costs CPU itself: the two are measured in separate runs). With
``PYTHONPATH=<a checkout>/service`` it measures that checkout's store, for before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import psutil

from bench import procs
from igbutton_server.storage.postbacks import NewPostback
from igbutton_server.storage.sqlite import _threads
from igbutton_server.storage.sqlite import postbacks as sqlite_postbacks
from igbutton_server.storage.sqlite import windows as sqlite_windows
from igbutton_server.storage.sqlite.file import SqliteFile


def _count_statements() -> list[int]:
    """Count the writer's statements from now on: the count is the list's one item."""
    count = [0]
    connect = _threads.connect

    def counted(path: Path, *, readonly: bool) -> sqlite3.Connection:
        conn = connect(path, readonly=readonly)
        if not readonly:

            def trace(_sql: str) -> None:
                count[0] += 1

            conn.set_trace_callback(trace)
        return conn

    _threads.connect = counted  # type: ignore[assignment]
    return count


async def _run(
    work: Path, concurrency: int, deliveries: int, statements: bool
) -> dict[str, object]:
    count = _count_statements() if statements else None
    file = SqliteFile(
        work / "igbutton.db", (sqlite_postbacks.create_schema, sqlite_windows.create_schema)
    )
    store = await sqlite_postbacks.SqlitePostbackStore.open(file)
    ledger = sqlite_windows.SqliteWindowLedger(file)
    numbers = iter(range(deliveries))

    async def poster() -> None:
        for i in numbers:
            tap = NewPostback(
                account_id="17841400000000000",
                sender_id=f"sender-{i}",
                mid=f"mid-{i}",
                title="Yes",
                payload="ORDER_YES",
                tap_time_ms=int(time.time() * 1000),
                raw_json='{"postback": {"mid": "mid", "title": "Yes", "payload": "ORDER_YES"}}',
            )
            seen = {(tap.account_id, tap.sender_id): tap.tap_time_ms}
            await asyncio.gather(store.append([tap]), ledger.note(seen))

    try:
        process = psutil.Process()
        commits, ran = file.commits, count[0] if count else 0
        cpu = process.cpu_times()
        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(concurrency)))
        took = time.perf_counter() - started
        used = process.cpu_times()
        cpu_seconds = (used.user + used.system) - (cpu.user + cpu.system)
        result: dict[str, object] = {
            "concurrency": concurrency,
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / took, 1),
            "cpu_us_per_delivery": round(cpu_seconds * 1e6 / deliveries, 1),
            "commits_per_delivery": round((file.commits - commits) / deliveries, 4),
        }
        if count is not None:
            result["statements_per_delivery"] = round((count[0] - ran) / deliveries, 3)
        return result
    finally:
        await store.close()
        await ledger.close()


def main() -> None:
    """Run the posters and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--statements", action="store_true", help="count the writer's SQL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="igbutton-append-cost-", dir=procs.REPO))
    try:
        result = asyncio.run(_run(work, args.concurrency, args.deliveries, args.statements))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
