"""The shared PostbackStore contract (tests/postbacks/test_store_contract.py), on JetStream.

Every test of the contract module is imported here and runs again with ``reopen`` opening
the NATS engine on the session's nats-server, with stream and bucket names of its own;
"reopening" connects a new store to the same streams (a restart of the process). So both
engines pass one behavioural suite, and a test added there runs here too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.postbacks.test_store_contract import *  # noqa: F403 - the contract's tests
from tests.postbacks.test_store_contract import Reopen
from tests.storage.nats_fixtures import nats_test_settings, store_opener


@pytest.fixture
async def reopen(make_settings: SettingsFactory, nats_server: NatsServer) -> AsyncIterator[Reopen]:
    """Opens the NATS engine on the same streams each time (a restart)."""
    async with store_opener(nats_test_settings(make_settings, [nats_server.url])) as opener:
        yield opener
