"""Cross-language round trips: the Go, TypeScript and Java clients against a real igbutton.

One ``igbutton-server --sandbox`` process serves the module. Each test runs one language's
own test suite (``go test``, ``npm test``, ``mvn test``) with IGBUTTON_ADDR and
IGBUTTON_SANDBOX_URL pointing at it; that suite sends a template, has the sandbox tap its
postback button and expects the postback on a subscription.

A missing toolchain skips its test with what to install, unless IGBUTTON_REQUIRE_TOOLCHAINS=1
(set by .ci/run), where it fails: CI must always run every round trip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.toolchains import require

pytestmark = [pytest.mark.clients, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
SERVER_START_TIMEOUT = 60.0
# Generous: a first run downloads Go modules, npm packages or Maven artifacts and compiles.
RUN_TIMEOUT = 840.0


@dataclass(frozen=True)
class Server:
    """A running igbutton with its sandbox, and where its log goes."""

    addr: str
    sandbox_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """The environment for a client test suite."""
        return {**os.environ, "IGBUTTON_ADDR": self.addr, "IGBUTTON_SANDBOX_URL": self.sandbox_url}

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def state(self) -> str:
        """Whether the server still runs, for failure messages."""
        code = self.process.poll()
        return "still running" if code is None else f"exited with {code}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``igbutton-server --sandbox`` on loopback port 0 everywhere, stopped at module end."""
    tmp = tmp_path_factory.mktemp("igbutton-clients")
    ports_file = tmp / "ports.json"
    log_path = tmp / "server.log"
    env = {
        **os.environ,
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
        "IGBUTTON_STORAGE__SQLITE_PATH": str(tmp / "igbutton.db"),
    }
    command = [_server_binary(), "--sandbox", "--ports-file", str(ports_file)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ports = _wait_for_ports(proc, ports_file, log_path)
        yield Server(
            addr=f"127.0.0.1:{ports['grpc']}",
            sandbox_url=f"http://127.0.0.1:{ports['sandbox']}",
            log_path=log_path,
            process=proc,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _server_binary() -> str:
    beside_python = Path(sys.executable).parent / "igbutton-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("igbutton-server")
    if found is None:
        pytest.fail("igbutton-server is not installed: run `make venv`")
    return found


def _wait_for_ports(proc: subprocess.Popen[bytes], ports_file: Path, log: Path) -> dict[str, int]:
    """Poll, with a deadline, for the ports file the server writes once it is ready."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if ports_file.exists():
            ports: dict[str, int] = json.loads(ports_file.read_text())
            return ports
        if proc.poll() is not None:
            pytest.fail(f"igbutton-server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"igbutton-server not ready after {SERVER_START_TIMEOUT} s:\n{log.read_text()}")


def _run(command: list[str], cwd: Path, server: Server) -> str:
    """Run a client's test command; fail with its output and the server's log unless it passes."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(command)} still running after {RUN_TIMEOUT} s:\n{exc.output!r}")
    output = f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} (in {cwd.relative_to(ROOT)}) exited {result.returncode} "
            f"after {time.monotonic() - started:.1f} s\n{output}\n"
            f"--- igbutton-server ({server.state()}) log, tail ---\n{server.log_tail()}"
        )
    return output


@pytest.mark.timeout(900)
def test_go_client_round_trip(request: pytest.FixtureRequest) -> None:
    require(["go"], "Go 1.26 or newer")
    server: Server = request.getfixturevalue("server")  # only once the toolchain is there
    output = _run(["go", "test", "-count=1", "-v", "./..."], CLIENTS / "go", server)
    # The suite skips itself without the environment: make sure it really ran here.
    assert "--- PASS: TestRoundTrip" in output, output
    assert "--- PASS: TestGroupRoundTrip" in output, output


@pytest.mark.timeout(900)
def test_typescript_client_round_trip(request: pytest.FixtureRequest) -> None:
    require(["node", "npm"], "Node.js 20 or newer with npm")
    server: Server = request.getfixturevalue("server")  # only once the toolchain is there
    ts = CLIENTS / "typescript"
    if not (ts / "node_modules" / ".installed").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], ts, server)
    output = _run(["npm", "test"], ts, server)
    # The suite skips itself without the environment: make sure it really ran here.
    assert re.search(r"\bskipped 0\b", output), output
    assert "dead-letter a group's postback, read the group, redrive it" in output, output


@pytest.mark.timeout(900)
def test_java_client_round_trip(request: pytest.FixtureRequest) -> None:
    require(["java", "mvn"], "a JDK 17 or newer and Maven 3.8 or newer")
    server: Server = request.getfixturevalue("server")  # only once the toolchain is there
    java = CLIENTS / "java"
    _run(["mvn", "-B", "-q", "test"], java, server)
    report = java / "target" / "surefire-reports" / "TEST-com.igbutton.client.RoundTripTest.xml"
    suite = ET.parse(report).getroot()  # noqa: S314 - our own build's report
    # Two round trips: send, tap and receive; dead-letter, GetGroup and RedriveDeadLetters.
    assert (suite.get("tests"), suite.get("skipped")) == ("2", "0"), ET.tostring(suite)
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0"), ET.tostring(suite)
