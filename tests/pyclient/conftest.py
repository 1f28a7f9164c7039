"""Fixtures for the Python client's round trips: in-process Apps and an igbutton process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import AppFactory, SettingsFactory, starting_apps


@pytest.fixture
async def start_app(make_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps with setting overrides; every one still running is stopped at the end."""
    async with starting_apps(make_settings) as start:
        yield start


def igbutton_command() -> list[str]:
    """The installed ``igbutton`` script next to this interpreter (falls back to -m)."""
    script = Path(sys.executable).with_name("igbutton")
    return [str(script)] if script.exists() else [sys.executable, "-m", "igbutton"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``igbutton ARGS`` to completion and capture its output."""
    return subprocess.run(
        [*igbutton_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ServerProcess:
    """A running ``igbutton serve --sandbox`` process and its ports."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    log_path: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"


def stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate, then kill if it does not go within 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """``igbutton serve --sandbox`` on loopback port 0, through the igbutton command."""
    ports_file = tmp_path / "ports.json"
    log_path = tmp_path / "server.log"
    log_file = log_path.open("w")
    env = {
        **os.environ,
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
        "IGBUTTON_STORAGE__SQLITE_PATH": str(tmp_path / "server.db"),
        "IGBUTTON_LOG__FORMAT": "text",
    }
    process = subprocess.Popen(
        [*igbutton_command(), "serve", "--sandbox", "--ports-file", str(ports_file)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            if process.poll() is not None:
                raise AssertionError(
                    f"igbutton serve exited with {process.returncode}:\n" + log_path.read_text()
                )
            if time.monotonic() > deadline:
                raise AssertionError("igbutton serve did not write its ports file in 60 s")
            time.sleep(0.05)  # polling a file with a bound, not synchronisation by delay
        yield ServerProcess(process, json.loads(ports_file.read_text()), log_path)
    finally:
        stop_process(process)
        log_file.close()
