"""Feeding a deployment's environment to igbutton's real Settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from igbutton_server.config import Settings


def settings_from_env(env: Mapping[str, str], secrets_dir: str, tmp_path: Path) -> Settings:
    """Build the real Settings from a deployment's environment, with its secret files
    created (with dummy content) under tmp_path instead of ``secrets_dir``."""
    local: dict[str, str] = {}
    for key, value in env.items():
        for secret in re.findall(re.escape(secrets_dir) + r"/([A-Za-z0-9_.-]+)", value):
            (tmp_path / secret).write_text("x" * 32 + "\n")
        local[key] = value.replace(secrets_dir, str(tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("IGBUTTON_")]:
            patch.delenv(key)
        for key, value in local.items():
            patch.setenv(key, value)
        return Settings.load()


def port_of(listen: str) -> int:
    """The port of a ``host:port`` listen address."""
    return int(listen.rsplit(":", 1)[1])
