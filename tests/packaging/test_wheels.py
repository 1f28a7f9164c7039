"""``pip wheel --no-deps`` of the server and of the client works from a clean checkout, and the
wheels say what a user (and an index) needs: one version, a true pin of the client, the
licence, project URLs; and they hold the code, the generated stubs and their type stubs."""

from __future__ import annotations

import re

import pytest

from tests.packaging.conftest import VERSION, Wheels

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
