"""Shared fixtures: real servers on loopback, real files in tmp_path."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from igbutton_server.app import App
from igbutton_server.config import Settings
from igbutton_server.logs import JsonFormatter
from igbutton_server.sandbox.accounts import TokenRegistry
from tests.nats_servers import NatsCluster, NatsServer

SettingsFactory = Callable[..., Settings]
AppFactory = Callable[..., Awaitable[App]]


class _TokenLeakWatch(logging.Handler):
    """Looks for every access token a sandbox accepted or issued (seeded, added, refreshed) in
    every log record of the test run, ``extra`` fields included (JSON-formatted)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.known: set[str] = set()
        self.leaks: list[str] = []
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.known:
            return
        line = self._json.format(record)
        if any(token in line for token in self.known):
            # Never the line itself: it holds the token.
            where = os.environ.get("PYTEST_CURRENT_TEST", "?")
            self.leaks.append(f"{record.levelname} {record.name} during {where}")


@pytest.fixture(scope="session", autouse=True)
def no_token_in_any_log_line() -> Iterator[None]:
    """Over the whole test run: no log line carries a token the sandbox knows."""
    watch = _TokenLeakWatch()
    add, refresh = TokenRegistry.add, TokenRegistry.refresh

    def watched_add(self: TokenRegistry, account_id: str, token: str, **kw: Any) -> None:
        watch.known.add(token)
        add(self, account_id, token, **kw)

    def watched_refresh(self: TokenRegistry, token: str | None) -> Any:
        outcome = refresh(self, token)
        if isinstance(outcome, tuple):
            watch.known.add(outcome[0])
        return outcome

    root = logging.getLogger()
    root.addHandler(watch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TokenRegistry, "add", watched_add)
        patch.setattr(TokenRegistry, "refresh", watched_refresh)
        try:
            yield
        finally:
            root.removeHandler(watch)
    assert watch.leaks == [], f"log lines carried an access token: {watch.leaks[:20]}"


@contextlib.asynccontextmanager
async def starting_apps(settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """``await start(**overrides)`` starts an App on ``settings(**overrides)``; every App it
    started is stopped on exit (App.stop is idempotent, so a test may stop one itself)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> App:
            app = App(settings(**overrides))
            stack.push_async_callback(app.stop)
            await app.start()
            return app

        yield start


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


# --- Storage engines: one ``engine`` fixture, parametrized over sqlite and nats. ---


def on_engines(*names: str) -> pytest.MarkDecorator:
    """Run a test (or, as ``pytestmark``, a module) on only these engines, e.g.
    ``on_engines("sqlite")`` for a test that reads the SQLite file itself."""
    return pytest.mark.parametrize("engine", names, indirect=True)


def unique_nats_storage(servers: list[str], replicas: int = 1) -> dict[str, Any]:
    """A ``storage`` settings section with stream and bucket names no other test uses; every
    name JetStream gets from it (streams, KV buckets) contains ``nats.stream``'s tag."""
    tag = uuid.uuid4().hex[:12]
    return {
        "backend": "nats",
        "nats": {
            "servers": servers,
            "stream": f"T_{tag}",
            "subject_prefix": f"t{tag}.postbacks",
            "idempotency_bucket": f"idem_{tag}",
            "replicas": replicas,
        },
    }


async def remove_nats_streams(servers: list[str], tag: str) -> None:
    """Delete every JetStream stream (KV buckets are streams too) whose name holds ``tag``."""
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            if name is not None and tag in name:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
    finally:
        await client.close()


@dataclass(frozen=True)
class Engine:
    """The storage engine a test runs on, as the ``storage`` section of its settings."""

    name: str
    """``sqlite`` or ``nats`` (the test id's suffix)."""
    storage: dict[str, Any]
    """The ``storage`` settings: the SQLite file in tmp_path, or the session nats-server
    with stream and bucket names of this test's own (removed after it)."""

    def env(self) -> dict[str, str]:
        """The same settings as ``IGBUTTON_STORAGE__*`` variables, for a server process."""
        variables: dict[str, str] = {}

        def add(prefix: str, section: dict[str, Any]) -> None:
            for key, value in section.items():
                name = f"{prefix}__{key.upper()}"
                if isinstance(value, dict):
                    add(name, value)
                elif isinstance(value, list):
                    variables[name] = json.dumps(value)
                else:
                    variables[name] = str(value)

        add("IGBUTTON_STORAGE", self.storage)
        return variables


@pytest.fixture(params=["sqlite", "nats"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    """Each storage engine in turn (test ids ``[sqlite]``, ``[nats]``)."""
    if request.param == "sqlite":
        yield Engine("sqlite", {"backend": "sqlite", "sqlite_path": str(tmp_path / "igbutton.db")})
        return
    assert request.param == "nats", request.param
    server: NatsServer = request.getfixturevalue("nats_server")
    # The SQLite file stays in tmp_path too, should anything open it on this engine.
    storage = {**unique_nats_storage([server.url]), "sqlite_path": str(tmp_path / "igbutton.db")}
    try:
        yield Engine("nats", storage)
    finally:
        await remove_nats_streams([server.url], storage["nats"]["stream"])


@pytest.fixture
def engine_settings(make_settings: SettingsFactory, engine: Engine) -> SettingsFactory:
    """Like ``make_settings``, on the test's ``engine``."""

    def make(**overrides: Any) -> Settings:
        storage = {**engine.storage, **overrides.pop("storage", {})}
        return make_settings(storage=storage, **overrides)

    return make
