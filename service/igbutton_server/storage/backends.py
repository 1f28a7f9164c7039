"""Opens the storage engines the configuration names (``storage.backend``)."""

from __future__ import annotations

from igbutton_server.config import Settings
from igbutton_server.send.idempotency import IdempotencyStore
from igbutton_server.storage.postbacks import PostbackStore
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore


async def open_postback_store(settings: Settings) -> PostbackStore:
    """The postback log of ``settings.storage.backend``, ready to use."""
    if settings.storage.backend == "nats":
        from igbutton_server.storage.nats.postbacks import NatsPostbackStore

        return await NatsPostbackStore.open(settings)
    return await SqlitePostbackStore.open(settings.storage.sqlite_path)


async def open_idempotency_store(settings: Settings) -> IdempotencyStore | None:
    """The shared request_id store of the backend; None means the send path's own
    default (SQLite, in the same file as the postback log)."""
    if settings.storage.backend == "nats":
        from igbutton_server.storage.nats.idempotency import NatsIdempotencyStore

        return await NatsIdempotencyStore.open(settings)
    return None
