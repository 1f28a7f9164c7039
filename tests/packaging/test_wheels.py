"""``pip wheel --no-deps`` of the server and of the client works from a clean checkout, and the
wheels say what a user (and an index) needs: one version, a true pin of the client, the
licence, project URLs; and they hold the code, the generated stubs and their type stubs."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import VERSION, Wheels, run

pytestmark = pytest.mark.slow


def test_both_wheels_carry_the_one_version(wheels: Wheels) -> None:
    assert wheels.server.metadata()["Version"] == VERSION
    assert wheels.client.metadata()["Version"] == VERSION
    assert wheels.server.path.name == f"igbutton_server-{VERSION}-py3-none-any.whl"
    assert wheels.client.path.name == f"igbutton-{VERSION}-py3-none-any.whl"


def test_the_server_pins_the_client_at_its_own_version(wheels: Wheels) -> None:
    requires = wheels.server.metadata().get_all("Requires-Dist") or []
    assert f"igbutton=={VERSION}" in requires
    # Every runtime requirement has a floor: an unversioned one is resolved to anything.
    runtime = [r for r in requires if "extra ==" not in r]
    unbounded = [r for r in runtime if not re.search(r"[<>=~]=", r.split(";")[0])]
    assert unbounded == []


@pytest.mark.parametrize("which", ["server", "client"])
def test_each_wheel_is_licensed_and_linked(wheels: Wheels, which: str) -> None:
    wheel = getattr(wheels, which)
    metadata = wheel.metadata()
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    (licence,) = [n for n in wheel.names() if n.endswith(".dist-info/licenses/LICENSE")]
    assert licence
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Changelog", "Issues"} <= urls.keys()
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert metadata["Requires-Python"] == ">=3.11"


def test_the_client_wheel_holds_the_stubs_and_their_types(wheels: Wheels) -> None:
    names = set(wheels.client.names())
    for module in ("send_service", "postback_service", "button_template", "errors"):
        assert f"igbutton/v1/{module}_pb2.py" in names
        assert f"igbutton/v1/{module}_pb2.pyi" in names
        assert f"igbutton/v1/{module}_pb2_grpc.py" in names
    assert "igbutton/py.typed" in names
    assert not [n for n in names if n.startswith("igbutton_server/")]


def test_the_server_wheel_holds_the_server_and_nothing_else(wheels: Wheels) -> None:
    names = wheels.server.names()
    assert "igbutton_server/main.py" in names
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"igbutton_server"}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert entry_points


def _build_stage_copies(dockerfile: str) -> list[tuple[list[str], str]]:
    """The ``COPY sources... dest`` lines of the Dockerfile's first stage (from the context)."""
    copies: list[tuple[list[str], str]] = []
    stages = 0
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0].upper() not in {"FROM", "COPY"}:
            continue
        if words[0].upper() == "FROM":
            stages += 1
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if stages == 1 and not any(w.startswith("--from") for w in words[1:]):
            copies.append((args[:-1], args[-1]))
    return copies


def test_the_container_build_stage_copies_what_both_builds_need(
    wheels: Wheels, tmp_path: Path
) -> None:
    # The image installs ./clients/python and . from only what its build stage COPYs: build
    # both from exactly that (a missing VERSION, LICENSE or setup.py fails here, no engine).
    copies = _build_stage_copies((wheels.checkout / "Dockerfile").read_text())
    assert copies, "no COPY in the build stage"
    workdir = tmp_path / "src"
    for sources, dest in copies:
        target = workdir / dest
        for source in sources:
            path = wheels.checkout / source
            if path.is_dir():  # COPY copies a directory's contents into dest
                shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name, follow_symlinks=False)
    out = tmp_path / "wheels"
    for project in (workdir / "clients" / "python", workdir):
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), "."], project)
    assert sorted(p.name.split("-")[0] for p in out.glob("*.whl")) == [
        "igbutton",
        "igbutton_server",
    ]
