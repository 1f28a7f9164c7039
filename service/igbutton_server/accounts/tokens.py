"""Each account's access token over time: seeded from the configuration, refreshed before
it expires, kept in the token store, and marked dead when Meta rejects it.

- **Seed**: the configured token (``access_token`` or ``access_token_file``). The store's
  record remembers the SHA-256 of the configured token it descends from; while that matches,
  the record's (possibly refreshed, newer) token wins; when the configured token changes (a
  rewritten file, re-read on change or SIGHUP), the configured token wins again.
- **Refresh**: once a token is at least ``tokens.min_age_seconds`` old and expires within
  ``tokens.refresh_margin_seconds`` (expiry unknown: 60 days after igbutton first saw it),
  one replica takes a lease on the record by compare-and-set, calls
  ``refresh_access_token`` and writes the new token and its expiry; every replica then sends
  with it. A failure is retried with exponential backoff and jitter; Graph code 190 marks the
  account REAUTHORIZATION_REQUIRED instead (also when a send gets 190), until a new token is
  configured.
- Tokens are never logged, and every token igbutton learns is handed to ``on_token`` (the
  Graph client's redaction) before it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from igbutton_server import metrics
from igbutton_server.accounts.graph import AccountCallError, AccountGraph
from igbutton_server.config import Account, Settings
from igbutton_server.errors import ReauthorizationRequired
from igbutton_server.storage._events import wait_event
from igbutton_server.storage.tokens import StoredToken, TokenRecord, TokenStore

log = logging.getLogger(__name__)

ASSUMED_LIFETIME_MS = 60 * 24 * 3600 * 1000
"""Meta's long-lived tokens live 60 days: the expiry assumed until a refresh tells it."""


class TokenStatus(enum.Enum):
    """What an account's token is good for now (the proto's TokenStatus without prefix)."""

    OK = "ok"
    EXPIRING = "expiring"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"


def digest(token: str) -> str:
    """The SHA-256 of a token, hex: how the record names its seed without holding it."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Account:
    config: Account
    configured: str
    file_stamp: tuple[int, int, int] | None = None
    stored: StoredToken | None = None


class AccountTokens:
    """The current token of every configured account, kept fresh by one background task."""

    def __init__(
        self,
        settings: Settings,
        store: TokenStore,
        graph: AccountGraph,
        on_token: Callable[[str], None],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings.tokens
        self._store = store
        self._graph = graph
        self._on_token = on_token
        self._rand = rand
        self._holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._accounts = {a.id: _Account(a, a.token()) for a in settings.accounts}
        for account in self._accounts.values():
            on_token(account.configured)
            account.file_stamp = _stamp(account.config.access_token_file)
        self._wake = asyncio.Event()
        self._first_pass = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        listen = getattr(store, "listen", None)
        if listen is not None:  # NATS: hear other replicas' writes at once
            listen(self._heard)

    # --- Lifecycle ---

    async def start(self) -> None:
        """Bring every account's record in line with its configured token, then keep it so."""
        for account in self._accounts.values():
            try:
                await self._sync(account)
            except OSError as exc:
                log.warning(
                    "cannot read the stored token yet; sending with the configured one",
                    extra={"account_id": account.config.id, "error": str(exc)},
                )
            self._export(account)
        self._task = asyncio.create_task(self._run(), name="account-tokens")

    async def first_pass(self) -> None:
        """Return once the background task has made its first pass over every account
        (a refresh due at start included), so that what reads the account at Meta next uses
        the token that pass left, and a 190 is told by the refresh that met it."""
        await self._first_pass.wait()

    async def stop(self) -> None:
        """Stop the background task."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def reload(self) -> None:
        """Re-read token files and records now (SIGHUP)."""
        log.info("re-reading the accounts' token files")
        for account in self._accounts.values():
            account.file_stamp = None  # read again even if the stamp looks the same
        self._wake.set()

    async def check_now(self) -> None:
        """One pass over every account, as the background task makes (CheckAccount)."""
        for account in self._accounts.values():
            await self._tick(account)

    # --- What the send path and AccountService read ---

    def token(self, account_id: str) -> str:
        """The token to send with now."""
        account = self._accounts[account_id]
        if account.stored is not None:
            return account.stored.record.token
        return account.configured

    def record(self, account_id: str) -> TokenRecord | None:
        """The account's record as last read or written (None: the store was unreachable)."""
        stored = self._accounts[account_id].stored
        return None if stored is None else stored.record

    def last_error(self, account_id: str) -> str:
        """Why the last refresh failed ('' when it did not), on whichever replica."""
        record = self.record(account_id)
        return "" if record is None else record.last_error

    def status(self, account_id: str) -> TokenStatus:
        """The account's token status now."""
        record = self.record(account_id)
        if record is None:
            return TokenStatus.OK
        if record.reauthorization_required:
            return TokenStatus.REAUTHORIZATION_REQUIRED
        if _expires_ms(record) - _now_ms() <= self._settings.expiring_seconds * 1000:
            return TokenStatus.EXPIRING
        return TokenStatus.OK

    def require_usable(self, account_id: str) -> None:
        """Raise REAUTHORIZATION_REQUIRED when Meta rejected the account's token."""
        if self.status(account_id) is TokenStatus.REAUTHORIZATION_REQUIRED:
            raise ReauthorizationRequired(account_id)

    async def rejected(self, account_id: str, token: str) -> None:
        """A call with ``token`` got Graph code 190: mark the account, unless its token
        changed in the meantime (then the new one gets its chance)."""
        account = self._accounts[account_id]
        for _ in range(3):
            stored = account.stored
            if stored is None or stored.record.token != token:
                return
            if stored.record.reauthorization_required:
                return
            marked = replace(stored.record, reauthorization_required=True)
            try:
                revision = await self._store.put(account_id, marked, stored.revision)
            except OSError as exc:
                log.warning(
                    "cannot store that the token was rejected",
                    extra={"account_id": account_id, "error": str(exc)},
                )
                account.stored = StoredToken(marked, stored.revision)
                break
            if revision is not None:
                account.stored = StoredToken(marked, revision)
                break
            await self._reread(account)
        log.warning(
            "Meta rejected the account's access token (Graph code 190): reauthorization required",
            extra={"account_id": account_id},
        )
        self._export(account)

    # --- The background task ---

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass, not after: a reload() (SIGHUP) that arrives while a
            # pass is under way must wake the next one, not be lost for a whole interval.
            self._wake.clear()
            for account in self._accounts.values():
                try:
                    await self._tick(account)
                except OSError as exc:
                    log.warning(
                        "cannot reach the token store",
                        extra={"account_id": account.config.id, "error": str(exc)},
                    )
                except Exception:
                    log.exception(
                        "keeping the account's token failed",
                        extra={"account_id": account.config.id},
                    )
            self._first_pass.set()
            await wait_event(self._wake, self._settings.check_interval_seconds)

    async def _tick(self, account: _Account) -> None:
        self._reread_file(account)
        await self._sync(account)
        await self._maybe_refresh(account)
        self._export(account)

    def _reread_file(self, account: _Account) -> None:
        path = account.config.access_token_file
        if path is None:
            return
        stamp = _stamp(path)
        if stamp is not None and stamp == account.file_stamp:
            return
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.warning(
                "cannot re-read the access token file; keeping the token in use",
                extra={"account_id": account.config.id, "path": str(path), "error": exc.strerror},
            )
            return
        account.file_stamp = stamp
        if not value:
            log.warning(
                "the access token file is empty; keeping the token in use",
                extra={"account_id": account.config.id, "path": str(path)},
            )
            return
        if value != account.configured:
            self._on_token(value)
            account.configured = value
            log.info(
                "the access token file changed; using its token",
                extra={"account_id": account.config.id, "path": str(path)},
            )

    async def _reread(self, account: _Account) -> None:
        stored = await self._store.get(account.config.id)
        if stored is not None:
            self._on_token(stored.record.token)
        account.stored = stored

    async def _sync(self, account: _Account) -> None:
        """Make the record descend from the configured token: read it, and where it is
        missing or its seed is not the configured token, write the configured token."""
        await self._reread(account)
        seed = digest(account.configured)
        for _ in range(3):
            stored = account.stored
            if stored is not None and stored.record.seed_digest == seed:
                return
            record = TokenRecord(token=account.configured, seed_digest=seed, obtained_ms=_now_ms())
            revision = await self._store.put(
                account.config.id, record, None if stored is None else stored.revision
            )
            if revision is not None:
                account.stored = StoredToken(record, revision)
                if stored is not None:
                    log.info(
                        "the configured access token changed; it replaces the stored one",
                        extra={"account_id": account.config.id},
                    )
                return
            await self._reread(account)  # another replica wrote first: look again

    def _due(self, record: TokenRecord, now_ms: int) -> bool:
        if record.reauthorization_required or now_ms < record.retry_at_ms:
            return False
        if now_ms - record.obtained_ms < self._settings.min_age_seconds * 1000:
            return False
        return _expires_ms(record) - now_ms <= self._settings.refresh_margin_seconds * 1000

    async def _maybe_refresh(self, account: _Account) -> None:
        stored = account.stored
        now_ms = _now_ms()
        if stored is None or not self._due(stored.record, now_ms):
            return
        record = stored.record
        if record.lease_holder not in ("", self._holder) and record.lease_until_ms > now_ms:
            return  # another replica is refreshing it
        leased = replace(
            record,
            lease_holder=self._holder,
            lease_until_ms=now_ms + int(self._settings.lease_seconds * 1000),
        )
        revision = await self._store.put(account.config.id, leased, stored.revision)
        if revision is None:
            await self._reread(account)  # another replica took the lease (or refreshed)
            return
        account.stored = StoredToken(leased, revision)
        await self._refresh(account, record, revision)

    async def _refresh(self, account: _Account, record: TokenRecord, revision: int) -> None:
        account_id = account.config.id
        released = replace(record, lease_holder="", lease_until_ms=0)
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                answer = await self._graph.refresh(record.token)
        except (AccountCallError, TimeoutError) as exc:
            error = (
                exc
                if isinstance(exc, AccountCallError)
                else AccountCallError("the Graph API did not answer in time")
            )
            released = replace(released, last_error=error.message)
            if error.token_rejected:
                result = "rejected"
                released = replace(released, reauthorization_required=True)
                log.warning(
                    "token refresh rejected (Graph code 190): reauthorization required",
                    extra={"account_id": account_id, "error": error.message},
                )
            else:
                result = "failed"
                # In the record, so every replica waits out the backoff, not only this one.
                failures = record.failures + 1
                wait = self._backoff(failures)
                released = replace(
                    released,
                    failures=failures,
                    retry_at_ms=_now_ms() + int(wait * 1000),
                )
                log.warning(
                    "token refresh failed; retrying later",
                    extra={
                        "account_id": account_id,
                        "error": error.message,
                        "retry_in_seconds": round(wait, 1),
                    },
                )
            metrics.TOKEN_REFRESHES.labels(account_id, result).inc()
            await self._write_after(account, released, revision)
            return
        self._on_token(answer.token)  # redacted before anything can echo it
        now_ms = _now_ms()
        new = TokenRecord(
            token=answer.token,
            seed_digest=record.seed_digest,
            obtained_ms=now_ms,
            expires_ms=now_ms + answer.expires_in * 1000,
            refreshed_ms=now_ms,
        )
        metrics.TOKEN_REFRESHES.labels(account_id, "ok").inc()
        log.info(
            "access token refreshed",
            extra={"account_id": account_id, "expires_in_seconds": answer.expires_in},
        )
        await self._write_after(account, new, revision)

    async def _write_after(self, account: _Account, record: TokenRecord, revision: int) -> None:
        written = await self._store.put(account.config.id, record, revision)
        if written is None:
            # Only a changed configured token replaces a leased record: it wins.
            log.info(
                "the token record changed during the refresh; keeping the newer record",
                extra={"account_id": account.config.id},
            )
            await self._reread(account)
        else:
            account.stored = StoredToken(record, written)

    def _backoff(self, failures: int) -> float:
        cap = min(
            self._settings.retry_max_seconds,
            self._settings.retry_initial_seconds * 2.0 ** (failures - 1),
        )
        return cap / 2 + self._rand() * cap / 2  # jitter, at least half the cap

    def _heard(self, account_id: str, stored: StoredToken) -> None:
        """A record written by any replica (NATS watch): use it if newer than ours."""
        account = self._accounts.get(account_id)
        if account is None:
            return
        current = account.stored
        if current is not None and current.revision >= stored.revision:
            return
        self._on_token(stored.record.token)
        account.stored = stored
        self._export(account)

    def _export(self, account: _Account) -> None:
        account_id = account.config.id
        record = self.record(account_id)
        if record is not None and record.expires_ms is not None:
            metrics.TOKEN_EXPIRY.labels(account_id).set(record.expires_ms / 1000)
        status = self.status(account_id)
        for each in TokenStatus:
            metrics.ACCOUNT_STATUS.labels(account_id, each.value).set(1 if each is status else 0)


def _expires_ms(record: TokenRecord) -> int:
    if record.expires_ms is not None:
        return record.expires_ms
    return record.obtained_ms + ASSUMED_LIFETIME_MS


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)
