"""The declared dependency floors are true.

The client: a fresh venv with exactly the lowest versions it allows (``==`` pins taken from its
pyproject, binary wheels only, as a user's resolver may pick them) imports it and round-trips a
send and a typed error with its details, against a real igbutton on loopback. A floor below
what the generated stubs need fails here: the stubs refuse an older protobuf runtime or grpcio
at import; a floor that contradicts another dependency's fails to resolve.

The server: a fresh venv with the lowest versions its wheel's metadata allows runs
``igbutton-server --sandbox`` on each storage engine, and that venv's ``igbutton`` command sends,
taps and reads the postback back from the stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from igbutton_server.app import App
from tests.conftest import Engine
from tests.packaging.conftest import REPO, VERSION, Wheel, Wheels, clean_env, run

pytestmark = pytest.mark.slow

RECIPIENT = "1234567890123456"

# Run by the fresh venv's interpreter: the versions it got, a send, an invalid send (the
# error details decode through grpcio-status and googleapis-common-protos) and a stream.
CLIENT_SCRIPT = r"""
import json, sys
from importlib.metadata import version
import igbutton
from igbutton import Client, InvalidRequestError, PostbackButton, template

addr, recipient = sys.argv[1], sys.argv[2]
out = {"versions": {n: version(n) for n in sys.argv[3:]}, "client": igbutton.__version__}
with Client(addr) as client:
    sent = client.send_button_template(
        recipient, template("Pick one", PostbackButton("Yes", "ANSWER_YES")))
    out["message_id"] = sent.message_id
    try:
        client.send_button_template(recipient, template("x" * 641, PostbackButton("", "P")))
    except InvalidRequestError as err:
        out["error"] = {"reason": err.reason, "fields": sorted(v.field for v in err.violations)}
    print(json.dumps(out), flush=True)
"""


def declared_floors(pyproject: Path) -> dict[str, str]:
    """``name -> lowest allowed version`` of every dependency; each must declare one."""
    floors: dict[str, str] = {}
    for line in tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]:
        requirement = Requirement(line)
        lowest = [s.version for s in requirement.specifier if s.operator in {">=", "=="}]
        assert len(lowest) == 1, f"{line!r} declares no single floor (>=) to test"
        floors[requirement.name] = lowest[0]
    return floors


def test_every_client_dependency_has_a_floor() -> None:
    floors = declared_floors(REPO / "clients" / "python" / "pyproject.toml")
    assert {"grpcio", "protobuf", "grpcio-status", "googleapis-common-protos"} <= floors.keys()


def test_a_dependency_without_a_floor_is_refused(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["grpcio>=1", "protobuf"]\n')
    with pytest.raises(AssertionError, match="protobuf"):
        declared_floors(pyproject)


@dataclass(frozen=True)
class LowestVenv:
    python: Path
    cwd: Path
    floors: dict[str, str]


@pytest.fixture(scope="module")
def lowest_venv(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LowestVenv]:
    root = tmp_path_factory.mktemp("lowest")
    floors = declared_floors(wheels.checkout / "clients" / "python" / "pyproject.toml")
    pins = root / "floors.txt"
    pins.write_text("".join(f"{name}=={floor}\n" for name, floor in floors.items()))
    # Outside the repository, so only what pip installed can be imported.
    cwd = root / "elsewhere"
    cwd.mkdir()
    venv = root / "venv"
    try:
        run([sys.executable, "-m", "venv", str(venv)], cwd=cwd, timeout=120)
        python = venv / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "-q", "--no-input", "--only-binary", ":all:"]
        run([*pip, "-c", str(pins), str(wheels.client.path)], cwd=cwd, timeout=300)
        run([str(python), "-m", "pip", "check"], cwd=cwd)
        yield LowestVenv(python, cwd, floors)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_the_lowest_allowed_versions_round_trip_a_send(
    lowest_venv: LowestVenv, app: App
) -> None:
    # A subprocess this event loop waits on, while the App serves on the same loop.
    process = await asyncio.create_subprocess_exec(
        str(lowest_venv.python),
        *("-c", CLIENT_SCRIPT, f"127.0.0.1:{app.ports.grpc}", RECIPIENT, *lowest_venv.floors),
        cwd=lowest_venv.cwd,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert out["versions"] == lowest_venv.floors, "the venv must hold exactly the floors"
    assert app.sandbox is not None
    [record] = app.sandbox.accepted()
    assert record.message_id == out["message_id"]
    assert out["error"]["reason"] == "INVALID_REQUEST"
    assert out["error"]["fields"] == ["template.buttons[0].title", "template.text"]


# --- the server ---

# nats-py publishes only source distributions (pure Python) at these versions.
SOURCE_ONLY = ("nats-py",)


def wheel_floors(wheel: Wheel) -> dict[str, str]:
    """``name -> lowest allowed version`` of every runtime requirement in a wheel's metadata
    (on this platform), except the client, which the server pins to its own version."""
    floors: dict[str, str] = {}
    for line in wheel.metadata().get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        lowest = [s.version for s in requirement.specifier if s.operator in {">=", "=="}]
        assert len(lowest) == 1, f"{line!r} declares no single floor (>=) to test"
        floors[requirement.name] = lowest[0]
    assert floors.pop("igbutton") == VERSION
    return floors


@pytest.fixture(scope="module")
def server_lowest_venv(
    wheels: Wheels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LowestVenv]:
    root = tmp_path_factory.mktemp("server-lowest")
    floors = wheel_floors(wheels.server)
    pins = root / "floors.txt"
    pins.write_text("".join(f"{name}=={floor}\n" for name, floor in floors.items()))
    cwd = root / "elsewhere"
    cwd.mkdir()
    venv = root / "venv"
    try:
        run([sys.executable, "-m", "venv", str(venv)], cwd=cwd, timeout=120)
        python = venv / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "-q", "--no-input", "--only-binary", ":all:"]
        for name in SOURCE_ONLY:
            pip += ["--no-binary", name]
        run(
            [*pip, "-c", str(pins), str(wheels.server.path), str(wheels.client.path)],
            cwd=cwd,
            timeout=600,
        )
        run([str(python), "-m", "pip", "check"], cwd=cwd)
        yield LowestVenv(python, cwd, floors)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve_send_tap_tail(venv: LowestVenv, engine: Engine, work: Path) -> dict[str, object]:
    """Start the venv's igbutton-server on ``engine``; send, tap and tail with its igbutton."""
    bin_dir = venv.python.parent
    ports_file = work / "ports.json"
    log_path = work / "server.log"
    env = {
        **clean_env(),
        **engine.env(),
        "IGBUTTON_GRPC__LISTEN": "127.0.0.1:0",
        "IGBUTTON_HTTP__PORT": "0",
        "IGBUTTON_WEBHOOK__PORT": "0",
        "IGBUTTON_SANDBOX__PORT": "0",
        "IGBUTTON_LOG__FORMAT": "text",
    }
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(bin_dir / "igbutton-server"), "--sandbox", "--ports-file", str(ports_file)],
            cwd=venv.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no ports file in 60 s:\n" + log_path.read_text()
            time.sleep(0.05)  # polling a file with a bound, not synchronisation by delay
        ports = json.loads(ports_file.read_text())
        addr = f"127.0.0.1:{ports['grpc']}"

        def igbutton(*args: str) -> str:
            return run([str(bin_dir / "igbutton"), *args], cwd=venv.cwd, timeout=60).stdout

        sent = json.loads(
            igbutton(
                *("send", "--addr", addr, "--to", RECIPIENT, "--text", "Pick one"),
                *("--postback-button", "Yes=ANSWER_YES", "--json"),
            )
        )
        sandbox = f"http://127.0.0.1:{ports['sandbox']}"
        igbutton("tap", sent["message_id"], "--button", "1", "--sandbox-url", sandbox)
        line = igbutton("tail", "--addr", addr, "--from", "earliest", "--count", "1")
        version = igbutton("--version")
        return {"postback": json.loads(line), "version": version}
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=15)


def test_every_server_requirement_has_a_floor(wheels: Wheels) -> None:
    floors = wheel_floors(wheels.server)
    assert {"grpcio", "protobuf", "aiohttp", "pydantic-settings", "nats-py"} <= floors.keys()


async def test_the_server_runs_on_its_lowest_allowed_versions(
    server_lowest_venv: LowestVenv, engine: Engine, tmp_path: Path
) -> None:
    out = await asyncio.to_thread(_serve_send_tap_tail, server_lowest_venv, engine, tmp_path)
    assert out["version"] == f"igbutton {VERSION}\n"
    postback = out["postback"]
    assert isinstance(postback, dict)
    assert (postback["sender_id"], postback["payload"]) == (RECIPIENT, "ANSWER_YES")
