"""The shared send rate limit in a NATS KV bucket: the RateLedger every replica uses.

Two keys per account:

- ``rate.<account>``: the token bucket (``next_free``, ``held_until``), changed only by a
  compare-and-set publish (``Nats-Expected-Last-Subject-Sequence``), retried on a newer
  revision; replicas take tokens in leases, so this is written once per lease, not per send;
- ``hold.<account>``: Meta's hold, written once per throttle answer and watched by every
  replica (a KV watch), so sends stop on replicas that still hold leased tokens. The hold
  is also folded into ``rate.<account>``, so a replica whose watch lags sees it on its next
  lease.

The bucket's max age forgets an idle account's bucket (it starts full again).

When NATS cannot be reached an update raises StorageUnavailable naming the bucket: at once
while the client is disconnected (a publish would wait in the client's buffer), else when
JetStream does not answer within nats-py's request timeout; after such a failure, updates
fail at once for ``_RETRY_SECONDS`` and then one tries again, so sends do not each wait out
the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import nats.errors
from nats.js import api
from nats.js.errors import APIError, KeyNotFoundError

from igbutton_server.config import Settings
from igbutton_server.storage._events import stop_task
from igbutton_server.storage.nats._connection import (
    WRONG_LAST_SEQUENCE,
    NatsConnection,
    open_kv_bucket,
)
from igbutton_server.storage.nats.idempotency import bucket_key
from igbutton_server.storage.postbacks import StorageUnavailable
from igbutton_server.storage.ratelimit import AccountRate, HoldListener

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 24 * 3600.0
"""How long an account's bucket and hold are kept after their last change."""

_UPDATE_ATTEMPTS = 50
_RETRY_SECONDS = 1.0
"""After JetStream did not answer, how long updates fail without trying."""
_WATCH_RETRY_SECONDS = 1.0


def _rate_key(account_id: str) -> str:
    return f"rate.{bucket_key(account_id)}"


def _hold_key(account_id: str) -> str:
    return f"hold.{bucket_key(account_id)}"


class NatsRateLedger:
    """RateLedger on a JetStream KV bucket. Build with :meth:`open`."""

    def __init__(self, conn: NatsConnection, name: str) -> None:
        self._conn = conn
        self._name = name
        self._bucket = conn.bucket(name)
        self._prefix = f"$KV.{name}."
        self._listeners: list[HoldListener] = []
        self._cache: dict[str, tuple[AccountRate, int]] = {}
        """Each account's last state seen and its revision: the first compare-and-set
        tries it, saving a read when this replica wrote last."""
        self._watching: asyncio.Task[None] | None = None
        self._failed: tuple[float, str] | None = None
        """When an update last failed for want of NATS (monotonic) and why; None after one
        succeeded."""
        conn.on_revived = self._on_revived

    @classmethod
    async def open(cls, settings: Settings) -> NatsRateLedger:
        """Connect, create or update the bucket, and start watching holds."""
        name = settings.rate_limit.nats_bucket or f"{settings.storage.nats.stream}_ratelimit"
        conn = await open_kv_bucket(
            settings,
            name,
            "igbutton send rate limit: token buckets and holds per account",
            MAX_AGE_SECONDS,
        )
        ledger = cls(conn, name)
        ledger._watching = asyncio.create_task(ledger._watch(), name="nats-rate-holds")
        return ledger

    async def _on_revived(self) -> None:
        """A new client replaced a closed one: read and watch through it."""
        self._bucket = self._conn.bucket(self._name)
        self._cache.clear()
        if self._watching is not None:
            await stop_task(self._watching)
        self._watching = asyncio.create_task(self._watch(), name="nats-rate-holds")

    def listen(self, listener: HoldListener) -> None:
        """See RateLedger.listen."""
        self._listeners.append(listener)

    async def _watch(self) -> None:
        while not self._conn.closing:
            try:
                watcher = await self._bucket.watch("hold.*")
            except (nats.errors.Error, OSError) as exc:
                log.warning("cannot watch rate-limit holds yet: %s", exc)
                await asyncio.sleep(_WATCH_RETRY_SECONDS)  # a backoff between attempts
                continue
            try:
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue  # the end of the initial values, or a removal
                    self._announce(entry.value)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
            return

    def _announce(self, raw: bytes) -> None:
        try:
            value = json.loads(raw)
            account_id, until = str(value["account_id"]), float(value["until"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable rate-limit hold: %r", raw[:200])
            return
        for listener in self._listeners:
            listener(account_id, until)

    async def _read(self, account_id: str) -> tuple[AccountRate, int]:
        try:
            entry = await self._bucket.get(_rate_key(account_id))
        except KeyNotFoundError as missing:
            entry_revision = missing.entry.revision if missing.entry is not None else 0
            return AccountRate(), entry_revision or 0
        if not entry.value:
            return AccountRate(), entry.revision or 0
        value = json.loads(entry.value)
        state = AccountRate(float(value["next_free"]), float(value["held_until"]))
        return state, entry.revision or 0

    async def _write(self, account_id: str, state: AccountRate, last: int) -> int | None:
        """Write the state if the key is still at revision ``last``; its new revision, or
        None when another write came first."""
        payload = json.dumps(
            {"next_free": state.next_free, "held_until": state.held_until},
            separators=(",", ":"),
        ).encode()
        headers: dict[str, Any] = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        try:
            ack = await self._conn.js.publish(
                self._prefix + _rate_key(account_id), payload, headers=headers
            )
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return None
            raise
        return ack.seq

    def _unavailable(self, why: str) -> StorageUnavailable:
        return StorageUnavailable(f"NATS rate-limit bucket {self._name} unavailable: {why}")

    def unready_reason(self) -> str | None:
        """See RateLedger.unready_reason. Only the connection: nothing probes the bucket
        between sends, and JetStream not answering shows in the idempotency store's
        readiness (its heartbeat, on the same JetStream)."""
        return None if self._conn.connected else "rate-limit bucket: not connected to NATS"

    async def update(
        self, account_id: str, change: Callable[[AccountRate], AccountRate | None]
    ) -> AccountRate:
        """See RateLedger.update."""
        if not self._conn.connected:
            raise self._unavailable("not connected to NATS")
        failed = self._failed
        if failed is not None and time.monotonic() - failed[0] < _RETRY_SECONDS:
            raise self._unavailable(failed[1])
        try:
            state = await self._update(account_id, change)
        except (nats.errors.Error, ConnectionError) as exc:
            why = f"NATS did not answer ({exc!r})"
            self._failed = (time.monotonic(), why)
            raise self._unavailable(why) from exc
        self._failed = None
        return state

    async def _update(
        self, account_id: str, change: Callable[[AccountRate], AccountRate | None]
    ) -> AccountRate:
        cached = self._cache.get(account_id)
        for _ in range(_UPDATE_ATTEMPTS):
            state, revision = cached if cached is not None else await self._read(account_id)
            cached = None
            new = change(state)
            if new is None:
                self._cache[account_id] = (state, revision)
                return state
            written = await self._write(account_id, new, revision)
            if written is not None:
                self._cache[account_id] = (new, written)
                return new
        raise OSError(f"the rate-limit state of account {account_id} keeps changing")

    async def hold(self, account_id: str, until: float) -> None:
        """See RateLedger.hold."""

        def longer(state: AccountRate) -> AccountRate | None:
            return None if state.held_until >= until else replace(state, held_until=until)

        await self.update(account_id, longer)
        payload = json.dumps({"account_id": account_id, "until": until}).encode()
        try:
            await self._conn.js.publish(self._prefix + _hold_key(account_id), payload)
        except (nats.errors.Error, ConnectionError) as exc:
            raise self._unavailable(f"NATS did not take the hold ({exc!r})") from exc

    async def close(self) -> None:
        """Stop watching and close the connection."""
        self._conn.closing = True
        if self._watching is not None:
            await stop_task(self._watching)
        await self._conn.close()
