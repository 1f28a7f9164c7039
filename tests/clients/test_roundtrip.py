"""Cross-language round trips: the Go, TypeScript and Java clients against a real igbutton.

One ``igbutton-server --sandbox`` process serves the module. Each test runs one language's
own test suite (``go test``, ``npm test``, ``mvn test``) with IGBUTTON_ADDR and
IGBUTTON_SANDBOX_URL pointing at it; that suite sends a template, has the sandbox tap its
postback button and expects the postback on a subscription. With IGBUTTON_FLAKY_ADDR (a
proxy that loses an answer on request) and IGBUTTON_CONTROL_URL (restart igbutton on the same
ports and SQLite file), see tests/clients/harness.py, it also proves that a send retried after
UNAVAILABLE goes out once and that a subscription resumes across a restart without a gap or a
duplicate.

A missing toolchain skips its test with what to install, unless IGBUTTON_REQUIRE_TOOLCHAINS=1
(set by .ci/run), where it fails: CI must always run every round trip.
"""

from __future__ import annotations

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

from tests.clients import harness
from tests.clients.harness import IgbuttonProcess
from tests.clients.toolchains import require

pytestmark = [pytest.mark.clients, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
# Generous: a first run downloads Go modules, npm packages or Maven artifacts and compiles.
RUN_TIMEOUT = 840.0


@dataclass(frozen=True)
class Server:
    """A running igbutton with its sandbox, the answer-dropping proxy and the control API."""

    igbutton: IgbuttonProcess
    flaky_addr: str
    control_url: str

    def env(self) -> dict[str, str]:
        """The environment for a client test suite."""
        return {
            **os.environ,
            "IGBUTTON_ADDR": self.igbutton.grpc_addr,
            "IGBUTTON_SANDBOX_URL": self.igbutton.sandbox_url,
            "IGBUTTON_FLAKY_ADDR": self.flaky_addr,
            "IGBUTTON_CONTROL_URL": self.control_url,
        }

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.igbutton.tail(chars)

    def state(self) -> str:
        """Whether the server still runs, for failure messages."""
        return self.igbutton.state()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``igbutton-server --sandbox`` on loopback port 0 everywhere (restartable on the same
    ports through the control API), stopped at module end with the proxy and control API."""
    tmp = tmp_path_factory.mktemp("igbutton-clients")
    try:
        with harness.running(_server_binary(), tmp) as (igbutton, dropper, control_url):
            yield Server(igbutton, f"127.0.0.1:{dropper.port}", control_url)
    except RuntimeError as exc:  # igbutton did not start
        pytest.fail(str(exc))


def _server_binary() -> str:
    beside_python = Path(sys.executable).parent / "igbutton-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("igbutton-server")
    if found is None:
        pytest.fail("igbutton-server is not installed: run `make venv`")
    return found


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
    for name in (
        "TestRoundTrip",
        "TestGroupRoundTrip",
        "TestRetryAfterUnavailable",
        "TestResumeAfterRestart",
    ):
        assert f"--- PASS: {name} " in output, output


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
    for name in (
        "send, tap and receive the postback",
        "dead-letter a group's postback, read the group, redrive it",
        "a send retried after a lost answer goes out once",
        "a subscription resumes after a restart without gap or duplicate",
    ):
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", output, re.MULTILINE), output


@pytest.mark.timeout(900)
def test_java_client_round_trip(request: pytest.FixtureRequest) -> None:
    require(["java", "mvn"], "a JDK 17 or newer and Maven 3.8 or newer")
    server: Server = request.getfixturevalue("server")  # only once the toolchain is there
    java = CLIENTS / "java"
    _run(["mvn", "-B", "-q", "test"], java, server)
    reports = java / "target" / "surefire-reports"
    # RoundTripTest: send, tap and receive; dead-letter, GetGroup and RedriveDeadLetters.
    for name, tests in (("RoundTripTest", "2"), ("ResilienceTest", "2")):
        suite = ET.parse(reports / f"TEST-com.igbutton.client.{name}.xml").getroot()  # noqa: S314 - our own build's report
        assert (suite.get("tests"), suite.get("skipped")) == (tests, "0"), ET.tostring(suite)
        assert (suite.get("failures"), suite.get("errors")) == ("0", "0"), ET.tostring(suite)
