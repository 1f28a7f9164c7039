"""Opens the storage engine the configuration names (``storage.backend``)."""

from __future__ import annotations

from dataclasses import dataclass

from igbutton_server.config import Settings
from igbutton_server.storage.groups import GroupOperations
from igbutton_server.storage.idempotency import IdempotencyStore
from igbutton_server.storage.postbacks import PostbackStore
from igbutton_server.storage.ratelimit import RateLedger
from igbutton_server.storage.sqlite import idempotency as sqlite_idempotency
from igbutton_server.storage.sqlite import postbacks as sqlite_postbacks
from igbutton_server.storage.sqlite import windows as sqlite_windows
from igbutton_server.storage.sqlite.file import SqliteFile
from igbutton_server.storage.tokens import TokenStore
from igbutton_server.storage.windows import WindowLedger


@dataclass(frozen=True)
class Storage:
    """The stores of one backend, opened together."""

    postbacks: PostbackStore
    """The postback log and consumer groups."""
    idempotency: IdempotencyStore
    """The send path's request_id records."""

    groups: GroupOperations
    """Operating the consumer groups (inspect, delete, seek, dead letters, deadlines): the
    postback store itself, which every engine implements it on."""
    windows: WindowLedger
    """Each person's last message time, for the messaging window."""

    async def close(self) -> None:
        """Close the stores (after every user of them stopped)."""
        await self.windows.close()
        await self.idempotency.close()
        await self.postbacks.close()


async def open_storage(settings: Settings) -> Storage:
    """The stores of ``settings.storage.backend``, ready to use. On SQLite both live in one
    file and share its writer thread, so concurrent claims and appends share commits."""
    if settings.storage.backend == "nats":
        from igbutton_server.storage.nats.idempotency import NatsIdempotencyStore
        from igbutton_server.storage.nats.postbacks import NatsPostbackStore
        from igbutton_server.storage.nats.windows import NatsWindowLedger

        nats_postbacks = await NatsPostbackStore.open(settings)
        try:
            nats_idempotency = await NatsIdempotencyStore.open(settings)
        except BaseException:
            await nats_postbacks.close()
            raise
        try:
            nats_windows = await NatsWindowLedger.open(settings)
        except BaseException:
            await nats_idempotency.close()
            await nats_postbacks.close()
            raise
        return Storage(nats_postbacks, nats_idempotency, nats_postbacks, nats_windows)
    file = SqliteFile(
        settings.storage.sqlite_path,
        (
            sqlite_postbacks.create_schema,
            sqlite_idempotency.create_schema,
            sqlite_windows.create_schema,
        ),
    )
    idempotency = sqlite_idempotency.SqliteIdempotencyStore(file)
    windows = sqlite_windows.SqliteWindowLedger(file)
    try:
        postbacks = await sqlite_postbacks.SqlitePostbackStore.open(file)
    except BaseException:
        await windows.close()
        await idempotency.close()
        raise
    return Storage(postbacks, idempotency, postbacks, windows)


async def open_rate_ledger(settings: Settings) -> RateLedger | None:
    """The send rate limit's state shared by the replicas: on NATS a KV bucket; None on
    SQLite (one process, whose limiter keeps its buckets in memory)."""
    if settings.storage.backend != "nats":
        return None
    from igbutton_server.storage.nats.ratelimit import NatsRateLedger

    return await NatsRateLedger.open(settings)


async def open_token_store(settings: Settings) -> TokenStore:
    """The accounts' refreshed tokens: on NATS a KV bucket every replica shares; on SQLite a
    file of their own beside the postback log's (``<name>.tokens.db``, mode 0600)."""
    if settings.storage.backend == "nats":
        from igbutton_server.storage.nats.tokens import NatsTokenStore

        return await NatsTokenStore.open(settings)
    from igbutton_server.storage.sqlite.tokens import SqliteTokenStore, tokens_path

    return await SqliteTokenStore.open(tokens_path(settings.storage.sqlite_path))
