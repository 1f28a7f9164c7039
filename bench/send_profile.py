"""Where igbutton's CPU goes per send: per thread, idempotent (AsyncClient) against plain.

``python -m bench.send_profile [--concurrency 64] [--duration 6] [--rounds 2] [--py-spy DIR]``
starts the sandbox and one igbutton (SQLite, uvloop, as the send benchmark does), then
alternates the two ways of calling it, ``client`` (igbutton's AsyncClient with its
defaults, so a ``request_id`` per send) and ``grpc`` (the raw stub, no ``request_id``), on
the same server. For each window it prints, per send: igbutton's CPU microseconds by thread
(the event loop's main thread, the SQLite writer, gRPC's threads; read from
``/proc/<pid>/task``), the threads' voluntary and involuntary context switches, and the
SQLite commits (fsyncs). CPU per thread holds up on a shared machine far better than
sends/s do, so this is the tool for "what does an idempotent send cost, and where".

With ``--py-spy DIR`` each window is also sampled by py-spy (non-blocking, 100 Hz, every
thread, idle samples left out) into ``DIR/<mode>-<round>.txt``, collapsed stacks that
``py-spy``'s own tools or flamegraph.pl read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import procs, servers
from bench.send_bench import CommitsMeter
from bench.servers import ServerKnobs

_TICKS = os.sysconf("SC_CLK_TCK")
_DUMPED_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "([^"]*)"', re.MULTILINE)

ThreadUse = dict[str, tuple[float, int, int]]
"""Thread name -> (CPU seconds, voluntary, involuntary context switches), summed by name."""


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(procs.PYTHON).with_name("py-spy"))


def _python_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name (MainThread, sqlite-writer, ...), by py-spy:
    Linux's own name of every Python thread is just ``python``."""
    try:
        dump = subprocess.run(
            [_py_spy(), "dump", "--pid", str(pid)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:  # no bench extra: the threads keep Linux's names
        return {}
    return {int(tid): name for tid, name in _DUMPED_THREAD.findall(dump.stdout)}


def _threads(pid: int, names: dict[int, str]) -> ThreadUse:
    use: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = Path(f"/proc/{pid}/task/{tid}")
        try:
            name = (base / "comm").read_text().strip()
            fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
            status = (base / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), name)
        entry = use[re.sub(r"_\d+$", "", name)]  # sqlite-reader_0 and _1: one line
        entry[0] += (int(fields[11]) + int(fields[12])) / _TICKS
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                entry[1] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                entry[2] += int(line.split()[1])
    return {name: (cpu, int(vol), int(inv)) for name, (cpu, vol, inv) in use.items()}


def _window(
    igb: servers.Running, mode: str, args: argparse.Namespace, spy: Path | None
) -> dict[str, Any]:
    """One load window of ``mode``; igbutton's use per send in it."""
    load = subprocess.Popen(
        [
            procs.PYTHON,
            "-m",
            "bench.loadgen_send",
            mode,
            f"--target=127.0.0.1:{igb.ports['grpc']}",
            "--channels=1",
            f"--concurrency={args.concurrency}",
            f"--warmup={args.warmup}",
            f"--duration={args.duration}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert load.stdout is not None
    sampler = None
    try:
        events = (json.loads(line) for line in load.stdout if line.startswith("{"))
        next(e for e in events if e["event"] == "start")
        names = _python_names(igb.child.pid)
        commits = CommitsMeter(igb.ports["http"])
        before = _threads(igb.child.pid, names)
        commits.begin()
        if spy is not None:
            sampler = subprocess.Popen(
                [_py_spy(),
                 "record", "--pid", str(igb.child.pid), "--duration", str(int(args.duration)),
                 "--rate", "100", "--nonblocking", "--threads", "--format", "raw",
                 "--output", str(spy)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        next(e for e in events if e["event"] == "end")
        after = _threads(igb.child.pid, names)
        committed = commits.end()["commits"] or 0
        result = next(e for e in events if e["event"] == "result")
    finally:
        load.wait(timeout=60)
        if sampler is not None:
            sampler.wait(timeout=60)
    sends = max(int(result["calls"]), 1)
    threads = {
        name: {
            "cpu_us": round((cpu - before[name][0]) * 1e6 / sends, 1),
            "voluntary": round((vol - before[name][1]) / sends, 2),
            "involuntary": round((inv - before[name][2]) / sends, 2),
        }
        for name, (cpu, vol, inv) in after.items()
        if name in before
    }
    return {
        "mode": mode,
        "sends_per_s": result["calls_per_s"],
        "p50_ms": result["latency"]["p50_ms"],
        "cpu_us": round(sum(t["cpu_us"] for t in threads.values()), 1),
        "commits": round(committed / sends, 3),
        "threads": threads,
    }


def _line(window: dict[str, Any]) -> str:
    threads = sorted(window["threads"].items(), key=lambda item: -item[1]["cpu_us"])
    shown = " | ".join(
        f"{name} {t['cpu_us']:.0f} µs v{t['voluntary']:.2f} i{t['involuntary']:.2f}"
        for name, t in threads
        if t["cpu_us"] >= 5
    )
    return (
        f"{window['mode']:<6} {window['sends_per_s']:>8.1f} sends/s  p50 {window['p50_ms']:.1f} ms"
        f"  igbutton {window['cpu_us']:.0f} µs/send  commits {window['commits']:.3f}  | {shown}"
    )


def main() -> None:
    """Run the windows and print one line each (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="client,grpc")
    parser.add_argument("--py-spy", type=Path, dest="spy", help="write py-spy samples here")
    parser.add_argument("--json", type=Path, help="write every window here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="igbutton-send-profile-"))
    if args.spy is not None:
        args.spy.mkdir(parents=True, exist_ok=True)
    sandbox = servers.start_sandbox("sandbox", work)
    windows = []
    try:
        igb = servers.start_igbutton(
            "igbutton", work, ServerKnobs(), graph_url=sandbox.ports["url"]
        )
        try:
            for round_ in range(1, args.rounds + 1):
                for mode in args.modes.split(","):
                    spy = None if args.spy is None else args.spy / f"{mode}-{round_}.txt"
                    windows.append(_window(igb, mode, args, spy))
                    print(_line(windows[-1]), flush=True)
        finally:
            igb.stop()
    finally:
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(windows, indent=1))


if __name__ == "__main__":
    main()
