"""Real igbutton replicas (``igbutton-server`` processes) and a real sandbox process, on
loopback with port 0, sharing one NATS JetStream cluster. Every process is stopped by the
fixture that started it, even when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from igbutton_server.app import SANDBOX_ACCOUNT_ID

ACCOUNT = SANDBOX_ACCOUNT_ID
APP_SECRET = "replica-test-app-secret"
ACCESS_TOKEN = "replica-test-access-token"
START_TIMEOUT = 60.0


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class SandboxProcess:
    """``python -m igbutton_server.sandbox --port 0``: the Graph stand-in every replica calls."""

    workdir: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    """More command-line options (e.g. the token lifetime)."""

    def start(self) -> None:
        """Start it and read the URL it prints."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "sandbox.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "igbutton_server.sandbox",
                    "--port",
                    "0",
                    "--token",
                    f"{ACCOUNT}={ACCESS_TOKEN}",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", log_path.read_text(errors="replace"))
            if found:
                self.url = found.group(1).rstrip("/")
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sandbox did not start:\n{log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        """Stop it (safe to call twice)."""
        proc, self.process = self.process, None
        _stop(proc)


@dataclass
class Replica:
    """One ``igbutton-server`` process on the NATS backend."""

    name: str
    workdir: Path
    nats_urls: list[str]
    graph_url: str = "http://127.0.0.1:9"  # nothing listens: sends fail unless a sandbox is given
    extra_env: dict[str, str] = field(default_factory=dict)
    """More configuration, over the defaults (e.g. the rate limit)."""
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The configuration: environment variables only, as in a deployment."""
        env = _clean_env()
        env.update(
            {
                "IGBUTTON_STORAGE__BACKEND": "nats",
                "IGBUTTON_STORAGE__NATS__SERVERS": json.dumps(self.nats_urls),
                "IGBUTTON_STORAGE__NATS__REPLICAS": "3",
                "IGBUTTON_STORAGE__SQLITE_PATH": str(self.workdir / "unused.db"),
                "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
                "IGBUTTON_GRPC__SHUTDOWN_GRACE_SECONDS": "1",
                "IGBUTTON_HTTP__PORT": "0",
                "IGBUTTON_WEBHOOK__PORT": "0",
                "IGBUTTON_WEBHOOK__APP_SECRETS": json.dumps([APP_SECRET]),
                "IGBUTTON_ACCOUNTS": json.dumps([{"id": ACCOUNT, "access_token": ACCESS_TOKEN}]),
                "IGBUTTON_GRAPH__BASE_URL": self.graph_url,
                "IGBUTTON_LOG__FORMAT": "text",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def log_path(self) -> Path:
        """Where the process's output goes."""
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        """Start the process (see wait_ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports_file = self.workdir / f"{self.name}.ports.json"
        ports_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [_bin("igbutton-server"), "--ports-file", str(ports_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Wait for the ports file the server writes once it serves."""
        ports_file = self.workdir / f"{self.name}.ports.json"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ports_file.exists():
                self.ports = json.loads(ports_file.read_text())
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"replica {self.name} did not start:\n{self.log_path.read_text(errors='replace')}"
        )

    @property
    def grpc_target(self) -> str:
        """host:port of its gRPC server."""
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def webhook_url(self) -> str:
        """Its webhook URL."""
        return f"http://127.0.0.1:{self.ports['webhook']}/webhook"

    def stop(self) -> None:
        """SIGTERM (graceful), safe to call twice."""
        proc, self.process = self.process, None
        _stop(proc)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or closed."""
        proc, self.process = self.process, None
        _stop(proc, signal.SIGKILL)
