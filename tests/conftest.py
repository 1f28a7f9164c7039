"""Shared fixtures: real servers on loopback, real files in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app import App
from service.config import Settings

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for an App bound to loopback port 0 with its SQLite file in tmp_path."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "grpc": {"listen": "127.0.0.1:0"},
            "http": {"host": "127.0.0.1", "port": 0},
            "webhook": {"host": "127.0.0.1", "port": 0, "app_secrets": ["test-app-secret"]},
            "sandbox": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "storage": {"sqlite_path": str(tmp_path / "igbutton.db")},
            "log": {"format": "text"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return Settings.load(**base)

    return make


@pytest.fixture
async def app(make_settings: SettingsFactory) -> AsyncIterator[App]:
    """A running App with the sandbox, on loopback."""
    instance = App(make_settings())
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure channel to the App's gRPC port."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as ch:
        yield ch
