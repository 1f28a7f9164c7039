"""Fixtures shared by the NATS storage tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nats_servers import NatsServer


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, which it may stop and start again (same ports, same
    data), unlike the session's shared one."""
    server = NatsServer(name="restartable", store_dir=tmp_path / "js")
    server.start_healthy()
    try:
        yield server
    finally:
        server.stop()
