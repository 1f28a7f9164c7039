"""The client distribution on its own: a fresh venv with only ``clients/python`` installed
works as a client and never reaches for the server, which depends on it and not the reverse.

Every command runs with its working directory outside the repository, so the repository's
folders are not on ``sys.path`` and only what pip installed can be imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from igbutton_server.app import App

REPO = Path(__file__).resolve().parents[2]
RECIPIENT = "1234567890123456"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ClientVenv:
    """A venv holding the igbutton client and its dependencies, nothing of the server."""

    bin: Path
    cwd: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientVenv]:
    root = tmp_path_factory.mktemp("client-alone")
    # pip builds in the source tree (build/, *.egg-info); a copy keeps the checkout untouched.
    source = root / "python-client"
    shutil.copytree(
        REPO / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    cwd = root / "elsewhere"
    cwd.mkdir()
    venv = root / "venv"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], cwd=cwd, env=env, check=True, timeout=60
        )
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input"]
        installed = subprocess.run(
            [*pip, "-c", str(REPO / "constraints.txt"), str(source)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        yield ClientVenv(venv / "bin", cwd, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_help_works_without_the_server(client_venv: ClientVenv) -> None:
    result = client_venv.run("igbutton", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "sandbox", "send", "tail", "tap"):
        assert command in result.stdout


def test_importing_the_client_imports_nothing_of_the_server(client_venv: ClientVenv) -> None:
    timed = client_venv.run("python", "-X", "importtime", "-c", "import igbutton, igbutton.cli")
    assert timed.returncode == 0, timed.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines()]
    assert "igbutton.client" in modules
    assert not [name for name in modules if name.startswith("igbutton_server")]

    server = client_venv.run("python", "-c", "import igbutton_server")
    assert server.returncode == 1
    assert "ModuleNotFoundError: No module named 'igbutton_server'" in server.stderr


@pytest.mark.parametrize("command", ["serve", "sandbox"])
def test_server_commands_say_how_to_get_the_server(client_venv: ClientVenv, command: str) -> None:
    result = client_venv.run("igbutton", command, "--sandbox")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"igbutton {command} needs the server: pip install igbutton-server\n"


async def test_send_reaches_a_running_server(client_venv: ClientVenv, app: App) -> None:
    # A subprocess the event loop waits on: the App serves on this same loop meanwhile.
    process = await asyncio.create_subprocess_exec(
        str(client_venv.bin / "igbutton"),
        *("send", "--addr", f"127.0.0.1:{app.ports.grpc}", "--to", RECIPIENT),
        *("--text", "Pick one", "--postback-button", "Yes=ANSWER_YES", "--json"),
        cwd=client_venv.cwd,
        env=client_venv.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    sent = json.loads(stdout)
    assert sent["recipient_id"] == RECIPIENT
    assert app.sandbox is not None
    [record] = app.sandbox.accepted()
    assert record.message_id == sent["message_id"]
