"""The send path: validate, translate, idempotency, rate limit, Graph client, gRPC service.

:class:`SendPath` builds and owns the parts for one App: one Graph client (one pooled HTTP
session), one rate limiter and one idempotency store.
"""

from __future__ import annotations

import logging

import grpc

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.config import Settings
from igbutton_server.send.api import SendServiceServicer
from igbutton_server.send.graph_client import GraphClient
from igbutton_server.send.idempotency import (
    IdempotencyStore,
    IdempotentSends,
    SqliteIdempotencyStore,
)
from igbutton_server.send.ratelimit import AccountRateLimiter

log = logging.getLogger(__name__)

__all__ = ["SendPath"]


class SendPath:
    """Everything SendService needs, built from the settings."""

    def __init__(self, settings: Settings, store: IdempotencyStore | None = None) -> None:
        self.settings = settings
        self.limiter = AccountRateLimiter(
            settings.rate_limit.per_account_per_second,
            settings.rate_limit.burst,
            rates={a.id: a.rate_per_second for a in settings.accounts if a.rate_per_second},
        )
        self.graph = GraphClient(
            settings.graph, self.limiter, secrets=[a.token() for a in settings.accounts]
        )
        if store is None:
            store = self._default_store(settings)
        self.store = store
        self.sends = IdempotentSends(store, settings.idempotency.ttl_seconds)
        self.servicer = SendServiceServicer(settings, self.graph, self.sends)

    @staticmethod
    def _default_store(settings: Settings) -> IdempotencyStore:
        if settings.storage.backend != "sqlite":
            # Until the NATS KV store exists, request_ids are honoured per replica only.
            log.warning(
                "idempotency records use SQLite (%s) with the %s backend: "
                "request_ids are honoured per replica only",
                settings.storage.sqlite_path,
                settings.storage.backend,
            )
        sqlite = SqliteIdempotencyStore(settings.storage.sqlite_path)
        sqlite.open()  # at start-up, so a bad path stops the process with a clear error
        return sqlite

    def register(self, server: grpc.aio.Server) -> None:
        """Add SendService to the gRPC server."""
        send_service_pb2_grpc.add_SendServiceServicer_to_server(self.servicer, server)

    async def close(self) -> None:
        """Close the HTTP session and the store (after in-flight sends finished)."""
        await self.graph.close()
        await self.store.close()
