"""Run igbutton-server for a benchmark, optionally on uvloop or as N SO_REUSEPORT workers.

``python -m bench.serve_igbutton [igbutton-server arguments]`` behaves like
``igbutton-server`` with two knobs read from the environment, so the lead can measure
whether they help without changing igbutton_server:

- ``IGBUTTON_BENCH_UVLOOP=0``: run on asyncio's loop instead of the default uvloop
  (igbutton's ``IGBUTTON_EVENT_LOOP`` setting).
- ``IGBUTTON_BENCH_WORKERS=N`` (N > 1): a supervisor starts N igbutton processes that share
  the gRPC and webhook ports through SO_REUSEPORT. igbutton_server binds gRPC with
  ``grpc.so_reuseport=0`` and aiohttp without ``reuse_port``; here each worker patches
  both at import time (see docs/performance.md for the igbutton_server change this stands for).
  The kernel balances *connections*, not calls: a load generator must open several
  connections to spread its load. Worker 0 binds the ports (port 0 allowed); the others
  bind the same ports once it is ready. Each worker has its own ops HTTP port and, with
  --sandbox, its own in-process sandbox. With SQLite, live subscribers are woken only by
  appends in their own worker, so use workers for the send path (or with NATS).

Each worker also serves ``igbutton_bench_sqlite_commits_total`` on its ``/metrics``: the
SQLite writers' ``commits`` counters (one durable commit, one WAL fsync, per write
transaction), which the send benchmark reads before and after a window to count commits
per idempotent send.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def use_uvloop_if_asked() -> bool:
    """Choose igbutton's event loop: uvloop unless IGBUTTON_BENCH_UVLOOP=0, then asyncio's.

    igbutton runs on uvloop by default (its ``event_loop`` setting); the benchmark pins the
    loop either way so that the ``igbutton`` and ``igbutton_uvloop`` targets stay comparable.
    """
    wanted = os.environ.get("IGBUTTON_BENCH_UVLOOP", "1") in ("1", "true", "yes")
    os.environ["IGBUTTON_EVENT_LOOP"] = "uvloop" if wanted else "asyncio"
    return wanted


def _patch_reuseport() -> None:
    """Make every gRPC server and aiohttp site of this process bind with SO_REUSEPORT."""
    import functools

    import grpc
    from aiohttp import web

    original_server = grpc.aio.server

    @functools.wraps(original_server)
    def server(*args: Any, **kwargs: Any) -> Any:
        options = [o for o in kwargs.pop("options", None) or [] if o[0] != "grpc.so_reuseport"]
        kwargs["options"] = [*options, ("grpc.so_reuseport", 1)]
        return original_server(*args, **kwargs)

    grpc.aio.server = server

    class ReusePortSite(web.TCPSite):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("reuse_port", True)
            super().__init__(*args, **kwargs)

    web.TCPSite = ReusePortSite  # type: ignore[misc]


def _expose_sqlite_commits() -> None:
    """Serve the SQLite writers' ``commits`` counters as a metric (a bench-only debug hook)."""
    import weakref
    from collections.abc import Iterator

    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector

    from igbutton_server.storage.sqlite._threads import SqliteWriter

    writers: weakref.WeakSet[SqliteWriter] = weakref.WeakSet()
    original_init = SqliteWriter.__init__

    def init(self: SqliteWriter, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        writers.add(self)

    SqliteWriter.__init__ = init  # type: ignore[method-assign]

    class Commits(Collector):
        def collect(self) -> Iterator[CounterMetricFamily]:
            yield CounterMetricFamily(
                "igbutton_bench_sqlite_commits",
                "SQLite write transactions committed (bench hook on SqliteWriter.commits).",
                value=sum(w.commits for w in list(writers)),
            )

    REGISTRY.register(Commits())


def _worker(argv: list[str]) -> int:
    if os.environ.get("IGBUTTON_BENCH_REUSEPORT") == "1":
        _patch_reuseport()
    _expose_sqlite_commits()
    use_uvloop_if_asked()
    from igbutton_server.main import main

    return main(argv)


def _ports_file_arg(argv: list[str]) -> tuple[list[str], Path | None]:
    rest: list[str] = []
    ports_file: Path | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--ports-file":
            ports_file = Path(next(it))
        elif arg.startswith("--ports-file="):
            ports_file = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest, ports_file


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        time.sleep(0.05)
    raise SystemExit("worker not ready in time")


def _supervise(argv: list[str], workers: int) -> int:
    rest, ports_file = _ports_file_arg(argv)
    if ports_file is None:
        raise SystemExit("IGBUTTON_BENCH_WORKERS needs --ports-file")
    env = {**os.environ, "IGBUTTON_BENCH_WORKERS": "1", "IGBUTTON_BENCH_REUSEPORT": "1"}
    cmd = [sys.executable, "-m", "bench.serve_igbutton", *rest]
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    first_file = ports_file.with_name(ports_file.name + ".w0")
    procs.append(subprocess.Popen([*cmd, "--ports-file", str(first_file)], env=env))
    ports = _wait_file(first_file, procs[0])
    shared = {
        **env,
        "IGBUTTON_GRPC__LISTEN": f"127.0.0.1:{ports['grpc']}",
        "IGBUTTON_WEBHOOK__PORT": str(ports["webhook"]),
        "IGBUTTON_HTTP__PORT": "0",
    }
    for n in range(1, workers):
        if stopping:
            break
        worker_file = ports_file.with_name(f"{ports_file.name}.w{n}")
        procs.append(subprocess.Popen([*cmd, "--ports-file", str(worker_file)], env=shared))
        _wait_file(worker_file, procs[-1])
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({**ports, "workers": workers}))
    tmp.replace(ports_file)
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0) if not stopping else 0


def main() -> int:
    """Entry point: a worker, or a supervisor when IGBUTTON_BENCH_WORKERS > 1."""
    argv = sys.argv[1:]
    workers = int(os.environ.get("IGBUTTON_BENCH_WORKERS", "1") or "1")
    if workers > 1:
        return _supervise(argv, workers)
    return _worker(argv)


if __name__ == "__main__":
    sys.exit(main())
