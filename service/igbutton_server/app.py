"""Composes igbutton from its parts and runs them: start in order, stop in reverse.

This is the only module that knows every component. Each part gets what it needs
through its constructor, so tests can build the same App on loopback with port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from igbutton.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    group_service_pb2,
    group_service_pb2_grpc,
    postback_service_pb2,
    postback_service_pb2_grpc,
    send_service_pb2,
)
from igbutton_server import tracing
from igbutton_server.accounts.activity import AccountActivity
from igbutton_server.accounts.api import AccountServiceServicer
from igbutton_server.accounts.checks import AccountChecks
from igbutton_server.accounts.graph import AccountGraph
from igbutton_server.accounts.tokens import AccountTokens
from igbutton_server.config import Account, Settings
from igbutton_server.console import PREFIX as CONSOLE_PREFIX
from igbutton_server.console import build_console_app, console_url
from igbutton_server.groups.api import GroupApi
from igbutton_server.groups.gauges import GroupGauges
from igbutton_server.grpc_options import server_options
from igbutton_server.health import HealthServicer
from igbutton_server.ops_http import build_ops_app
from igbutton_server.postbacks.api import PostbackApi
from igbutton_server.postbacks.retention import RetentionPruner
from igbutton_server.postbacks.webhook import Webhook
from igbutton_server.postbacks.webhook_site import serve_webhook
from igbutton_server.rpc_middleware import Registrar, RpcMiddleware
from igbutton_server.sandbox import Sandbox
from igbutton_server.send.path import SendPath
from igbutton_server.storage.backends import (
    Storage,
    open_rate_ledger,
    open_storage,
    open_token_store,
)
from igbutton_server.storage.groups import GroupOperations
from igbutton_server.storage.postbacks import PostbackStore
from igbutton_server.storage.ratelimit import RateLedger
from igbutton_server.storage.tokens import TokenStore

log = logging.getLogger(__name__)

SANDBOX_ACCOUNT_ID = "17841400000000000"
SANDBOX_ACCESS_TOKEN = "sandbox-access-token"  # noqa: S105 - the sandbox's fixed fake token

_SERVICE_NAMES = (
    send_service_pb2.DESCRIPTOR.services_by_name["SendService"].full_name,
    postback_service_pb2.DESCRIPTOR.services_by_name["PostbackService"].full_name,
    account_service_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    group_service_pb2.DESCRIPTOR.services_by_name["GroupService"].full_name,
)


@dataclass
class Ports:
    """The ports actually bound (differ from the settings when those say 0)."""

    grpc: int = 0
    http: int = 0
    webhook: int = 0
    sandbox: int = 0


@dataclass
class _Sites:
    runners: list[web.AppRunner] = field(default_factory=list)


def with_sandbox_defaults(settings: Settings, sandbox_url: str) -> Settings:
    """Point Graph at the sandbox and fill in an account and app secret if none are set."""
    update: dict[str, object] = {
        "graph": settings.graph.model_copy(update={"base_url": sandbox_url}),
    }
    if not settings.accounts:
        update["accounts"] = [
            Account(id=SANDBOX_ACCOUNT_ID, access_token=SecretStr(SANDBOX_ACCESS_TOKEN))
        ]
    if not settings.webhook.app_secrets:
        update["webhook"] = settings.webhook.model_copy(
            update={"app_secrets": [SecretStr(secrets.token_hex(16))]}
        )
    return settings.model_copy(update=update)


class App:
    """One igbutton process: gRPC API, webhook, ops HTTP and (optionally) the sandbox."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ports = Ports()
        self._grpc: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._sites = _Sites()
        self.sandbox: Sandbox | None = None
        """The in-process sandbox, when ``settings.sandbox.enabled`` (tests reach it here)."""
        self.send: SendPath | None = None
        """The send path's parts, once SendService is registered."""
        self.postback_store: PostbackStore | None = None
        """The postback log, once storage is open (tests reach it here)."""
        self.console: web.Application | None = None
        """The web console's application, once mounted (tests read its routes here)."""
        self.group_operations: GroupOperations | None = None
        """Operating the consumer groups (storage.groups), once storage is open: the typed
        API for in-process users such as a web console."""
        self._storage: Storage | None = None
        # The servicers the console's Groups and Accounts pages call, once registered.
        self._group_api: GroupApi | None = None
        self._account_api: AccountServiceServicer | None = None
        self._rate_ledger: RateLedger | None = None
        self._token_store: TokenStore | None = None
        self.account_graph: AccountGraph | None = None
        """The Graph calls about accounts (refresh, me, subscribed_apps)."""
        self.tokens: AccountTokens | None = None
        """Each account's current token, kept fresh (tests reach it here)."""
        self.activity = AccountActivity()
        """What this replica saw of each account (AccountService reports it)."""
        self._checks: AccountChecks | None = None
        self._look_up: asyncio.Task[None] | None = None
        self._pruner: RetentionPruner | None = None
        self._gauges: GroupGauges | None = None
        self._postback_api: PostbackApi | None = None
        self._webhook_runner: web.AppRunner | None = None
        self._ready = False
        self._stop_requested = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every part; on return all ports are bound and the service is ready."""
        if self.settings.sandbox.enabled:
            await self._start_sandbox()
        await self._start_storage()
        self._grpc = grpc.aio.server(
            interceptors=tracing.configure(self.settings.tracing) or None,
            options=server_options(self.settings.grpc),
        )
        # Generated add_*_to_server functions register through the middleware.
        services: Any = Registrar(self._grpc, RpcMiddleware(self.settings.callers))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, services)
        # The real server: reflection picks its asyncio servicer by the server's type, and
        # the middleware would pass its open, request-streaming methods through unchanged.
        reflection.enable_server_reflection(
            (*_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self._add_send_service(services)
        await self._start_accounts(services)
        self._add_postback_service(services)
        self._add_group_service(services)
        self.ports.grpc = self._bind_grpc(self._grpc)
        await self._grpc.start()
        ops = build_ops_app(self._readiness, self._liveness)
        self._add_console(ops)
        self.ports.http = await self._serve_http(
            ops, self.settings.http.host, self.settings.http.port
        )
        await self._start_webhook()
        self._look_up = asyncio.create_task(self._look_up_accounts(), name="account-look-up")
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        if self.settings.console_enabled:
            # Its own line, so the address stands out in `make run`'s output.
            url = console_url(self.settings, self.ports.http)
            log.info("web console at %s", url, extra={"console_url": url})
        log.info(
            "igbutton started",
            extra={
                "grpc_port": self.ports.grpc,
                "http_port": self.ports.http,
                "webhook_port": self.ports.webhook,
                "sandbox_port": self.ports.sandbox,
                "storage": self.settings.storage.backend,
                "tls": self.settings.grpc.tls.enabled,
            },
        )

    def reload_tokens(self) -> None:
        """Re-read the accounts' token files now (SIGHUP)."""
        if self.tokens is not None:
            self.tokens.reload()

    def request_stop(self) -> None:
        """Ask the process to stop (from a signal handler); serve() then calls stop()."""
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        """Return once request_stop() or stop() has been called."""
        await self._stop_requested.wait()

    async def stop(self) -> None:
        """Stop taking work, let in-flight calls finish within the grace period, then close.

        Safe to call more than once and from several tasks: every caller waits for the one
        shutdown, which is shielded so a cancelled caller cannot cut it short.
        """
        self._stop_requested.set()
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        self._ready = False
        await self._health.enter_graceful_shutdown()
        await self._stop_webhook()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.grpc.shutdown_grace_seconds)
        await self._stop_accounts()
        await self._stop_send()
        await self._stop_storage()
        for runner in reversed(self._sites.runners):
            await runner.cleanup()
        await self._stop_sandbox()
        # The exporter flushes with blocking I/O; keep it off the event loop.
        await asyncio.to_thread(tracing.shutdown)
        log.info("igbutton stopped")

    async def _readiness(self) -> str | None:
        if not self._ready:
            return "starting or stopping"
        reasons: list[str | None] = []
        if self._storage is not None:
            reasons += [self._storage.postbacks.unready_reason()]
            reasons += [self._storage.idempotency.unready_reason()]
        if self._rate_ledger is not None:
            reasons += [self._rate_ledger.unready_reason()]
        return next((reason for reason in reasons if reason is not None), None)

    async def _liveness(self) -> str | None:
        if self.postback_store is not None:
            return self.postback_store.unhealthy_reason()
        return None

    def _bind_grpc(self, server: grpc.aio.Server) -> int:
        listen = self.settings.grpc.listen
        tls = self.settings.grpc.tls
        if not tls.enabled:
            port = server.add_insecure_port(listen)
        else:
            assert tls.cert_file is not None
            assert tls.key_file is not None
            ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
            creds = grpc.ssl_server_credentials(
                [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            port = server.add_secure_port(listen, creds)
        if port == 0:
            raise OSError(f"cannot bind gRPC to {listen}")
        return port

    async def _serve_http(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._sites.runners.append(runner)
        # The runner's public addresses work on any event loop (uvloop included).
        bound: int = runner.addresses[0][1]
        return bound

    # --- Extension points. Each belongs to one part of the service. ---

    # Sandbox (igbutton_server/sandbox/).
    async def _start_sandbox(self) -> None:
        """Start the sandbox, then point the settings at it (with_sandbox_defaults)."""
        box = self.settings.sandbox
        sandbox = Sandbox(
            box.host,
            box.port,
            token_lifetime_seconds=box.token_lifetime_seconds,
            min_refresh_age_seconds=box.min_refresh_age_seconds,
        )
        await sandbox.start()
        self.sandbox = sandbox
        self.settings = with_sandbox_defaults(self.settings, sandbox.url)
        # The sandbox accepts exactly the configured accounts' tokens, as Meta would, and
        # starts them subscribed to the webhook fields, as a set-up app would be.
        sandbox.set_tokens({account.id: account.token() for account in self.settings.accounts})
        for account in self.settings.accounts:
            sandbox.tokens.subscribe(account.id, "messages,messaging_postbacks")
        self.ports.sandbox = sandbox.port
        log.warning(
            "sandbox mode: sends go to the local sandbox, not to Instagram",
            extra={"sandbox_url": sandbox.url},
        )

    async def _stop_sandbox(self) -> None:
        """Stop the sandbox, if started."""
        if self.sandbox is not None:
            await self.sandbox.stop()

    # Storage (igbutton_server/storage/): postback log, groups, idempotency records.
    async def _start_storage(self) -> None:
        """Open the configured storage backend."""
        self._storage = await open_storage(self.settings)
        self.postback_store = self._storage.postbacks
        self.group_operations = self._storage.groups
        self._rate_ledger = await open_rate_ledger(self.settings)
        self._pruner = RetentionPruner(
            self.postback_store,
            retention=self.settings.postbacks.retention_seconds,
            interval=self.settings.postbacks.prune_interval_seconds,
            group_idle_retention=self.settings.postbacks.group_idle_retention_seconds,
            windows=self._storage.windows,
        )
        self._pruner.start()
        self._gauges = GroupGauges(
            self._storage.groups, self.settings.postbacks.group_metrics_interval_seconds
        )
        self._gauges.start()

    async def _stop_storage(self) -> None:
        """Close the storage backend after every user of it stopped."""
        if self._gauges is not None:
            await self._gauges.stop()
        if self._pruner is not None:
            await self._pruner.stop()
        if self._rate_ledger is not None:
            await self._rate_ledger.close()
        if self._storage is not None:
            await self._storage.close()

    # Send path (igbutton_server/send/).
    def _add_send_service(self, server: grpc.aio.Server) -> None:
        """Register SendService."""
        assert self._storage is not None
        self.send = SendPath(
            self.settings,
            store=self._storage.idempotency,
            ledger=self._rate_ledger,
            activity=self.activity,
            windows=self._storage.windows,
        )
        self.send.register(server)

    # Accounts (igbutton_server/accounts/): token lifecycle.
    async def _start_accounts(self, server: grpc.aio.Server) -> None:
        """Open the token store, start keeping every account's token fresh, and register
        AccountService."""
        assert self.send is not None
        graph = self.send.graph
        self._token_store = await open_token_store(self.settings)
        self.account_graph = AccountGraph(
            self.settings.graph, self.settings.tokens.timeout_seconds, graph.redact
        )
        self.tokens = AccountTokens(
            self.settings, self._token_store, self.account_graph, graph.add_secret
        )
        await self.tokens.start()
        self.send.use_tokens(self.tokens)
        if self.sandbox is not None:
            # A token refreshed in an earlier run is one the new sandbox never issued.
            for account in self.settings.accounts:
                token = self.tokens.token(account.id)
                if self.sandbox.tokens.lookup(token) is None:
                    self.sandbox.tokens.add(account.id, token)
        self._checks = AccountChecks(
            self.settings, self.tokens, self.account_graph, self.activity, self._webhook_url
        )
        self._account_api = AccountServiceServicer(
            self.settings, self.tokens, self.activity, self.send.limiter, self._checks
        )
        account_service_pb2_grpc.add_AccountServiceServicer_to_server(self._account_api, server)

    def _webhook_url(self) -> str | None:
        """igbutton's own webhook URL on loopback (for the self-test), once it serves."""
        if not self.ports.webhook:
            return None
        host = self.settings.webhook.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.ports.webhook}{self.settings.webhook.path}"

    async def _look_up_accounts(self) -> None:
        """Read each account's name and webhook fields at Meta once, after start and after
        the tokens' first pass: not with a token a refresh due at start is about to replace."""
        assert self._checks is not None
        assert self.tokens is not None
        await self.tokens.first_pass()
        for account in self.settings.accounts:
            await self._checks.look_up(account.id)

    async def _stop_accounts(self) -> None:
        """Stop refreshing; close the token store and the account Graph session."""
        if self._look_up is not None:
            self._look_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._look_up
        if self.tokens is not None:
            await self.tokens.stop()
        if self.account_graph is not None:
            await self.account_graph.close()
        if self._token_store is not None:
            await self._token_store.close()

    async def _stop_send(self) -> None:
        """Close the Graph client after in-flight sends finished."""
        if self.send is not None:
            await self.send.close()

    # Web console (igbutton_server/console/).
    def _add_console(self, ops: web.Application) -> None:
        """Mount the console on the operations app, when enabled."""
        if not self.settings.console_enabled:
            return
        assert self.postback_store is not None
        assert self.send is not None
        if self.settings.callers and not any(c.admin for c in self.settings.callers):
            log.warning("web console enabled, but no caller has admin = true to log in with")
        console = build_console_app(
            self.settings,
            self.postback_store,
            self.send.servicer,
            self.sandbox,
            self.ports.grpc,
            groups=self._group_api,
            accounts=self._account_api,
        )

        async def to_console(_: web.Request) -> web.StreamResponse:
            raise web.HTTPPermanentRedirect(f"{CONSOLE_PREFIX}/")

        ops.router.add_get(CONSOLE_PREFIX, to_console)
        ops.add_subapp(CONSOLE_PREFIX, console)
        self.console = console

    # Postback path (igbutton_server/postbacks/).
    def _add_postback_service(self, server: grpc.aio.Server) -> None:
        """Register PostbackService."""
        assert self.postback_store is not None
        self._postback_api = PostbackApi(self.postback_store, self.settings.postbacks)
        postback_service_pb2_grpc.add_PostbackServiceServicer_to_server(self._postback_api, server)

    # Group operations (igbutton_server/groups/).
    def _add_group_service(self, server: grpc.aio.Server) -> None:
        """Register GroupService."""
        assert self._storage is not None
        api = GroupApi(self._storage.groups, self.settings.callers)
        group_service_pb2_grpc.add_GroupServiceServicer_to_server(api, server)
        self._group_api = api

    async def _start_webhook(self) -> None:
        """Serve Meta's webhook and tell the sandbox (if any) where it is."""
        assert self.postback_store is not None
        settings = self.settings.webhook
        accounts = [account.id for account in self.settings.accounts]
        assert self._storage is not None
        webhook = Webhook(
            settings, self.postback_store, accounts, self.activity, self._storage.windows
        )
        # Its own runner, bounded against slow and hostile clients (webhook_site.py); stopped
        # apart from the other HTTP sites: before the streams end and the store closes.
        self._webhook_runner = await serve_webhook(webhook.build_app(), settings)
        self.ports.webhook = self._webhook_runner.addresses[0][1]
        sandbox = self.sandbox
        if sandbox is not None:
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{self.ports.webhook}{settings.path}"
            app_secrets = settings.secrets()
            sandbox.set_webhook(url, app_secrets[0] if app_secrets else b"")

    async def _stop_webhook(self) -> None:
        """Stop taking webhooks; finish stores in flight; end streams with UNAVAILABLE."""
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()  # waits for deliveries being stored
            self._webhook_runner = None
        if self._postback_api is not None:
            await self._postback_api.shutdown()
