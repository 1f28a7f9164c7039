"""A replica whose NATS client closes for good: a new client, fast failures meanwhile, and
/healthz failing only when no new client can be opened (a plain disconnect is /readyz only).

nats-py closes its client on any protocol error from the server (it reconnects only a
dropped or stale connection). The tests close it the way a hostile webhook once did, with
a subject over the server's 4 KiB protocol line, or directly while the server is down.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from igbutton_server.app import App
from igbutton_server.storage.nats.postbacks import DISCONNECTED_APPEND_SECONDS, NatsPostbackStore
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer
from tests.postbacks.conftest import (
    WAIT,
    WebhookClient,
    appended_during,
    delivery,
    eventually,
    postback_item,
    postback_overrides,
    webhook_url,
)
from tests.storage.nats_fixtures import nats_test_settings, removing_layout


@pytest.fixture
async def app(make_settings: SettingsFactory, restartable_server: NatsServer) -> AsyncIterator[App]:
    """An App on the test's own nats-server (which the test may stop and start)."""
    settings = nats_test_settings(make_settings, [restartable_server.url], **postback_overrides())
    async with removing_layout(settings):
        instance = App(settings)
        await instance.start()
        try:
            yield instance
        finally:
            await instance.stop()
            if restartable_server.process is None:
                restartable_server.start_healthy()  # so the streams can be removed


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def store(app: App) -> NatsPostbackStore:
    assert isinstance(app.postback_store, NatsPostbackStore)
    return app.postback_store


async def probe(http: aiohttp.ClientSession, app: App, path: str) -> int:
    async with http.get(f"http://127.0.0.1:{app.ports.http}{path}") as resp:
        return resp.status


async def test_a_client_closed_by_the_server_is_replaced_and_the_next_webhook_stored(
    app: App, http: aiohttp.ClientSession
) -> None:
    conn = store(app).conn
    old = conn.client
    # What a 4,100-character mid used to do: the server answers a protocol line over its
    # limit with -ERR and drops the connection, and nats-py closes the client for good.
    await old.publish("x" * 5000, b"")

    async def replaced() -> bool:
        return conn.revivals == 1 and conn.connected

    await eventually(replaced)
    assert old.is_closed
    assert conn.client is not old
    assert await probe(http, app, "/readyz") == 200
    webhook = WebhookClient(http, webhook_url(app))
    answer, stored = await appended_during(app, webhook.deliver(postback_item("after")))
    assert answer["stored"] == 1
    assert [p.mid for p in stored] == ["after"]


async def test_without_a_new_client_appends_fail_at_once_and_healthz_fails_after_the_window(
    app: App, http: aiohttp.ClientSession, restartable_server: NatsServer
) -> None:
    conn = store(app).conn
    conn.revive_window = 1.0
    restartable_server.stop()
    await conn.client.close()  # closed, and no server to open a new client on
    webhook = WebhookClient(http, webhook_url(app))
    started = time.monotonic()
    status, _ = await webhook.post(delivery(postback_item("while-closed")))
    assert status == 503
    assert time.monotonic() - started < 1.0
    assert await probe(http, app, "/readyz") == 503

    async def unhealthy() -> bool:
        return await probe(http, app, "/healthz") == 503

    await eventually(unhealthy)
    restartable_server.start_healthy()  # same ports and data

    async def recovered() -> bool:
        return (
            await probe(http, app, "/healthz") == 200 and await probe(http, app, "/readyz") == 200
        )

    await eventually(recovered, within=WAIT + 10)
    assert conn.revivals == 1
    status, _ = await webhook.post(delivery(postback_item("after")))
    assert status == 200


async def test_a_disconnect_is_unready_but_healthy_and_appends_fail_within_a_bound(
    app: App, http: aiohttp.ClientSession, restartable_server: NatsServer
) -> None:
    conn = store(app).conn
    conn.revive_window = 1.0  # a disconnect longer than this is still not "unhealthy"
    restartable_server.stop()

    async def unready() -> bool:
        return await probe(http, app, "/readyz") == 503

    await eventually(unready)
    webhook = WebhookClient(http, webhook_url(app))
    started = time.monotonic()
    status, _ = await webhook.post(delivery(postback_item("while-down")))
    elapsed = time.monotonic() - started
    assert status == 503
    assert elapsed < DISCONNECTED_APPEND_SECONDS + 4.0  # not the 20 s of the append deadline
    assert elapsed > conn.revive_window
    assert await probe(http, app, "/healthz") == 200
    restartable_server.start_healthy()

    async def stored() -> bool:
        status, _ = await webhook.post(delivery(postback_item("after")))
        return status == 200

    await eventually(stored, within=WAIT + 10)
    assert conn.revivals == 0  # the client reconnected by itself
    assert await probe(http, app, "/healthz") == 200
