"""Keepalive on idle postback streams, with a real Go client (internal/keepalivecheck).

A Go client that pings every 10 s, with and without calls (common behind load balancers),
keeps an idle SubscribePostbacks stream for more than a minute: no GOAWAY "too_many_pings".
And igbutton's own pings find a client that vanished without a FIN: its stream is closed
instead of staying open for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from igbutton_server.app import App
from tests.clients.toolchains import require
from tests.conftest import AppFactory, SettingsFactory, starting_apps
from tests.postbacks.conftest import eventually

pytestmark = pytest.mark.clients

GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"
BUILD_TIMEOUT = 600.0  # a first build may download the module's dependencies


@pytest.fixture(scope="module")
def keepalive_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keepalivecheck program, built with ``go build``."""
    require(["go"], "Go 1.26 or newer")
    binary = tmp_path_factory.mktemp("keepalivecheck") / "keepalivecheck"
    try:
        built = subprocess.run(
            ["go", "build", "-o", str(binary), "./internal/keepalivecheck"],
            cwd=GO_MODULE,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"go build still running after {BUILD_TIMEOUT} s")
    if built.returncode != 0:
        pytest.fail(f"go build failed:\n{built.stdout}\n{built.stderr}")
    return binary


@pytest.fixture
async def start_app(make_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps with setting overrides; every one is stopped at the end."""
    async with starting_apps(make_settings) as start:
        yield start


@contextlib.asynccontextmanager
async def running(binary: Path, app: App, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """keepalivecheck against ``app``, killed on exit if it still runs (also if stopped)."""
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        "-addr",
        f"127.0.0.1:{app.ports.grpc}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await proc.wait()


def open_broadcast_streams() -> float:
    value = REGISTRY.get_sample_value("igbutton_subscribers", {"kind": "broadcast"})
    return value or 0.0


def is_open(count: float) -> Callable[[], Awaitable[bool]]:
    """A check for ``eventually``: the server has ``count`` broadcast streams open."""

    async def check() -> bool:
        return open_broadcast_streams() == count

    return check


async def subscribed(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line.strip() != b"subscribed":
        assert proc.stderr is not None
        stderr: Awaitable[bytes] = proc.stderr.read()
        pytest.fail(f"keepalivecheck did not subscribe: {line!r} {await stderr!r}")


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_an_idle_stream_outlives_a_minute_of_client_pings_every_10_s(
    keepalive_check: Path, start_app: AppFactory
) -> None:
    app = await start_app()  # igbutton's defaults
    async with running(keepalive_check, app, "-ping", "10s", "-hold", "62s") as proc:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 150)
    output = f"exit {proc.returncode}\n{stdout.decode()}\n{stderr.decode()}"
    assert proc.returncode == 0, output
    report = json.loads(stdout.decode().splitlines()[-1])
    assert report["error"] == "", output
    assert report["states"] == [], output  # the connection stayed READY: no GOAWAY
    assert report["held_seconds"] >= 62, output


async def test_a_client_that_stops_answering_pings_loses_its_stream(
    keepalive_check: Path, start_app: AppFactory
) -> None:
    # Quick pings, so the test need not wait for the 30 s + 20 s of the defaults.
    app = await start_app(grpc={"keepalive_time_seconds": 0.5, "keepalive_timeout_seconds": 1})
    before = open_broadcast_streams()
    async with running(keepalive_check, app, "-ping", "0", "-hold", "120s") as proc:
        await subscribed(proc)
        await eventually(is_open(before + 1), within=10)
        # Frozen, the client reads nothing and answers no ping, but its kernel keeps the
        # TCP connection up: as a peer gone without a FIN looks to the server.
        proc.send_signal(signal.SIGSTOP)
        await eventually(is_open(before), within=15)  # the dead peer's stream is closed
