"""Finding the system Chromium: skip without one, unless CI says it must be there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.console import conftest


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IGBUTTON_CHROMIUM", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(Path, "exists", lambda _self: False)


@pytest.mark.usefixtures("no_chromium")
def test_without_chromium_the_browser_tests_skip_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IGBUTTON_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        conftest.chromium_path()


@pytest.mark.usefixtures("no_chromium")
def test_with_require_browser_a_missing_chromium_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGBUTTON_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="IGBUTTON_REQUIRE_BROWSER=1"):
        conftest.chromium_path()


def test_an_explicit_chromium_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGBUTTON_CHROMIUM", "/opt/chromium/chrome")
    assert conftest.chromium_path() == "/opt/chromium/chrome"
