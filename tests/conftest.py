"""Shared fixtures: real servers on loopback, real files in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from igbutton_server.app import App
from igbutton_server.config import Settings
from tests.nats_servers import NatsCluster, NatsServer

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


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream nats-server for the whole session; tests isolate by stream/bucket names."""
    server = NatsServer(name="single", store_dir=tmp_path_factory.mktemp("nats") / "js")
    try:
        server.start_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node JetStream cluster on loopback, stopped after the test."""
    cluster = NatsCluster.create(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
