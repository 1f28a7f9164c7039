"""Opens the storage engine the configuration names."""

from __future__ import annotations

from service.config import StorageSettings
from service.storage.postbacks import PostbackStore
from service.storage.sqlite_postbacks import SqlitePostbackStore


async def open_postback_store(settings: StorageSettings) -> PostbackStore:
    """The postback log of ``settings.backend``, ready to use."""
    if settings.backend == "sqlite":
        return await SqlitePostbackStore.open(settings.sqlite_path)
    raise NotImplementedError(f"storage backend {settings.backend!r} is not available yet")
