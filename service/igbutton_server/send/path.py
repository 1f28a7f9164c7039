"""The send path's parts for one App, wired together.

:class:`SendPath` builds and owns the parts for one App: one Graph client (one pooled HTTP
session) and one rate limiter, on the idempotency store the App opened with its storage
(and, with NATS, on the rate ledger every replica shares).
"""

from __future__ import annotations

import grpc

from igbutton.v1 import send_service_pb2_grpc
from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.accounts.tokens import AccountTokens
from igbutton_server.config import Settings
from igbutton_server.send.api import SendServiceServicer
from igbutton_server.send.graph_client import GraphClient
from igbutton_server.send.idempotency import IdempotentSends
from igbutton_server.send.ratelimit import AccountRateLimiter, SharedRateLimiter
from igbutton_server.send.window import MessagingWindows
from igbutton_server.storage.idempotency import IdempotencyStore
from igbutton_server.storage.ratelimit import RateLedger
from igbutton_server.storage.windows import WindowLedger


class SendPath:
    """Everything SendService needs, built from the settings."""

    def __init__(
        self,
        settings: Settings,
        store: IdempotencyStore,
        ledger: RateLedger | None = None,
        activity: AccountActivity | None = None,
        windows: WindowLedger | None = None,
    ) -> None:
        self.settings = settings
        limits = settings.rate_limit
        rates = {a.id: a.rate_per_second for a in settings.accounts if a.rate_per_second}
        self.limiter: AccountRateLimiter
        if ledger is None:  # one process: the buckets live here
            self.limiter = AccountRateLimiter(limits.per_account_per_second, limits.burst, rates)
        else:  # replicas: one bucket per account, shared through the ledger
            self.limiter = SharedRateLimiter(
                ledger,
                limits.per_account_per_second,
                limits.burst,
                rates,
                lease_fraction=limits.lease_fraction,
            )
        self.graph = GraphClient(
            settings.graph,
            self.limiter,
            secrets=[a.token() for a in settings.accounts],
            activity=activity,
        )
        self.store = store
        self.sends = IdempotentSends(store, settings.idempotency.ttl_seconds)
        self.windows = None
        if windows is not None:
            enforce = settings.send.messaging_window_check == "enforce"
            self.windows = MessagingWindows(windows, enforce)
        self.servicer = SendServiceServicer(settings, self.graph, self.sends, self.windows)

    def use_tokens(self, tokens: AccountTokens) -> None:
        """Send with each account's current token (refreshed, re-read) from now on, instead
        of the configured one; a Graph 190 marks the account (before the server starts)."""
        self.servicer.tokens = tokens

    def register(self, server: grpc.aio.Server) -> None:
        """Add SendService to the gRPC server."""
        send_service_pb2_grpc.add_SendServiceServicer_to_server(self.servicer, server)

    async def close(self) -> None:
        """Close the HTTP session (after in-flight sends finished); the store and ledger are
        the App's."""
        await self.graph.close()
        await self.sends.flush()  # outcomes still being stored, before the store closes
        if isinstance(self.limiter, SharedRateLimiter):
            await self.limiter.close()
