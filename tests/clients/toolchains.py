"""What the client tests share: finding a toolchain, or saying what to install."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import pytest


def require(tools: Sequence[str], install: str) -> None:
    """Skip (or, with IGBUTTON_REQUIRE_TOOLCHAINS=1, fail) when a toolchain is missing."""
    missing = [name for name in tools if shutil.which(name) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not found on PATH: install {install} to run this test"
    if os.environ.get("IGBUTTON_REQUIRE_TOOLCHAINS") == "1":
        pytest.fail(f"{message} (IGBUTTON_REQUIRE_TOOLCHAINS=1 forbids skipping)")
    pytest.skip(message)
