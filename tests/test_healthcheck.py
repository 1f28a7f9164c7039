"""``igbutton-server healthcheck`` (the container's HEALTHCHECK) against a real server: it
follows the configured operations port and host, and says in one line why it failed."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from igbutton_server.app import App
from tests.conftest import SettingsFactory

SERVER_BIN = str(Path(sys.executable).parent / "igbutton-server")


async def healthcheck(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the command as a HEALTHCHECK does: a process of its own, with only ``env`` for
    igbutton's settings (no webhook secret: the server under test needs none in sandbox
    mode, and the probe must not need one either). Asynchronous, because the server under
    test runs on this event loop."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}
    proc = await asyncio.create_subprocess_exec(
        SERVER_BIN,
        "healthcheck",
        *args,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert stdout == b""
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_healthy_on_the_port_from_the_environment(app: App) -> None:
    # The fixture's server binds a free port, so this is never the default 9090.
    port = app.ports.http
    assert port != 9090
    status, stderr = await healthcheck(env={"IGBUTTON_HTTP__PORT": str(port)})
    assert (status, stderr) == (0, "")


async def test_settings_the_probe_does_not_use_are_not_read(app: App) -> None:
    # The server's other settings may be unreadable to the probe (a token file only the
    # server's user can read) or need a flag it is not given (--sandbox waives the webhook
    # secret): Settings.load would fail on either; the probe reads only [http].
    env = {
        "IGBUTTON_HTTP__PORT": str(app.ports.http),
        "IGBUTTON_ACCOUNTS": '[{"id": "17841400000000000", "access_token_file": "/nonexistent"}]',
    }
    assert await healthcheck(env=env) == (0, "")


async def test_healthy_on_the_port_from_the_config_file(app: App, tmp_path: Path) -> None:
    config = tmp_path / "igbutton.toml"
    config.write_text(f'[http]\nhost = "127.0.0.1"\nport = {app.ports.http}\n')
    assert await healthcheck("--config", str(config)) == (0, "")
    assert await healthcheck(env={"IGBUTTON_CONFIG_FILE": str(config)}) == (0, "")


async def test_a_wildcard_host_is_probed_on_loopback(app: App) -> None:
    # The image sets IGBUTTON_HTTP__HOST=0.0.0.0 so the port is published; the probe runs
    # inside the container and connects to loopback, and names that address when it fails.
    env = {"IGBUTTON_HTTP__HOST": "0.0.0.0", "IGBUTTON_HTTP__PORT": str(app.ports.http)}
    assert await healthcheck(env=env) == (0, "")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]  # bound, not listening: connections are refused
        for wildcard, loopback in (("0.0.0.0", "127.0.0.1"), ("::", "[::1]")):
            env = {"IGBUTTON_HTTP__HOST": wildcard, "IGBUTTON_HTTP__PORT": str(free)}
            status, stderr = await healthcheck(env=env)
            assert status == 1
            assert stderr.startswith(
                f"igbutton-server healthcheck: unhealthy: http://{loopback}:{free}/readyz: "
            ), stderr


async def test_live_asks_healthz(app: App) -> None:
    env = {"IGBUTTON_HTTP__PORT": str(app.ports.http)}
    app._ready = False  # what shutdown does first: /readyz answers 503, /healthz still 200
    assert await healthcheck("--live", env=env) == (0, "")
    status, stderr = await healthcheck(env=env)
    assert status == 1
    assert stderr == (
        f"igbutton-server healthcheck: unhealthy: http://127.0.0.1:{app.ports.http}/readyz "
        "answered 503: starting or stopping\n"
    )


async def test_unhealthy_once_the_server_stopped(make_settings: SettingsFactory) -> None:
    app = App(make_settings())
    await app.start()
    port = app.ports.http
    try:
        assert await healthcheck(env={"IGBUTTON_HTTP__PORT": str(port)}) == (0, "")
    finally:
        await app.stop()
    status, stderr = await healthcheck(env={"IGBUTTON_HTTP__PORT": str(port)})
    assert status == 1
    assert stderr == (
        f"igbutton-server healthcheck: unhealthy: http://127.0.0.1:{port}/readyz: "
        "Connection refused\n"
    )


async def test_a_listener_that_never_answers_times_out() -> None:
    # Accepted by the kernel (the backlog), never read: the probe must give up on time.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        status, stderr = await healthcheck(
            "--timeout", "0.5", env={"IGBUTTON_HTTP__PORT": str(port)}
        )
    assert status == 1
    assert stderr == (
        f"igbutton-server healthcheck: unhealthy: http://127.0.0.1:{port}/readyz: "
        "no answer within 0.5 s\n"
    )


async def test_configuration_problems_are_one_line_and_status_1() -> None:
    # Docker and Podman reserve exit status 2, so a bad configuration is "unhealthy" too.
    status, stderr = await healthcheck(env={"IGBUTTON_HTTP__PORT": "not-a-port"})
    assert status == 1
    assert stderr.count("\n") == 1
    assert stderr.startswith("igbutton-server healthcheck: unhealthy: invalid configuration: ")
    assert "http.port (IGBUTTON_HTTP__PORT)" in stderr

    status, stderr = await healthcheck(env={"IGBUTTON_HTTP__PORT": "0"})
    assert status == 1
    assert "http.port is 0" in stderr

    status, stderr = await healthcheck(env={"IGBUTTON_CONFIG_FILE": "/nonexistent/igb.toml"})
    assert status == 1
    assert stderr == (
        "igbutton-server healthcheck: unhealthy: cannot read config file "
        "/nonexistent/igb.toml (named by IGBUTTON_CONFIG_FILE): No such file or directory\n"
    )


async def test_the_probe_does_not_load_the_service() -> None:
    # A probe runs every few seconds for the container's life: it must not import grpc,
    # aiohttp or the storage engines (that is most of the server's start-up CPU).
    code = (
        "import sys\n"
        "from igbutton_server.main import main\n"
        "main(['healthcheck', '--timeout', '0.2'])\n"
        "heavy = sorted(m for m in ('grpc', 'aiohttp', 'nats', 'opentelemetry.sdk', "
        "'igbutton_server.app') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IGBUTTON_")}
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = {**clean, "IGBUTTON_HTTP__PORT": str(silent.getsockname()[1])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode() == "[]\n"
    assert "no answer within 0.2 s" in stderr.decode()
