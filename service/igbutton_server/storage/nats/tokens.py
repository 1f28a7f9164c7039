"""The token records in a JetStream KV bucket shared by every replica.

One key per account (``token.<account>``), changed only by a compare-and-set publish
(``Nats-Expected-Last-Subject-Sequence``), so of the replicas that find a token due exactly
one writes the lease and refreshes it. Every replica watches the bucket and hears of a new
token the moment it is written. The bucket keeps a record for 400 days after its last
change (a token unrefreshed that long expired long ago).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
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
from igbutton_server.storage.tokens import StoredToken, TokenRecord

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 400 * 24 * 3600.0
_WATCH_RETRY_SECONDS = 1.0

TokenListener = Callable[[str, StoredToken], None]
"""Called with (account_id, stored record) for every record written by any replica."""


def _key(account_id: str) -> str:
    return f"token.{bucket_key(account_id)}"


def bucket_name(settings: Settings) -> str:
    """The accounts bucket: named after the postback stream, as its other buckets are."""
    return f"{settings.storage.nats.stream}_accounts"


class NatsTokenStore:
    """TokenStore on a JetStream KV bucket. Build with :meth:`open`."""

    def __init__(self, conn: NatsConnection, name: str) -> None:
        self._conn = conn
        self._name = name
        self._bucket = conn.bucket(name)
        self._subject_prefix = f"$KV.{name}."
        self._listeners: list[TokenListener] = []
        self._watching: asyncio.Task[None] | None = None
        conn.on_revived = self._on_revived

    @classmethod
    async def open(cls, settings: Settings) -> NatsTokenStore:
        """Connect, create or update the bucket, and start watching it."""
        name = bucket_name(settings)
        conn = await open_kv_bucket(
            settings,
            name,
            "igbutton access tokens per account (refreshed tokens and leases)",
            MAX_AGE_SECONDS,
        )
        store = cls(conn, name)
        store._watching = asyncio.create_task(store._watch(), name="nats-token-watch")
        return store

    def listen(self, listener: TokenListener) -> None:
        """Call ``listener`` for every record written (by any replica), from now on."""
        self._listeners.append(listener)

    async def _on_revived(self) -> None:
        self._bucket = self._conn.bucket(self._name)
        if self._watching is not None:
            await stop_task(self._watching)
        self._watching = asyncio.create_task(self._watch(), name="nats-token-watch")

    async def _watch(self) -> None:
        while not self._conn.closing:
            try:
                watcher = await self._bucket.watch("token.*")
            except (nats.errors.Error, OSError) as exc:
                log.warning("cannot watch the token records yet: %s", exc)
                await asyncio.sleep(_WATCH_RETRY_SECONDS)  # a backoff between attempts
                continue
            try:
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue  # the end of the initial values, or a removal
                    self._announce(entry.key, entry.value, entry.revision or 0)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
            return

    def _announce(self, key: str, raw: bytes, revision: int) -> None:
        try:
            record = TokenRecord.decode(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable token record under %s", key)
            return
        account_id = self._account_of(key)
        if account_id is None:
            return
        for listener in self._listeners:
            listener(account_id, StoredToken(record, revision))

    @staticmethod
    def _account_of(key: str) -> str | None:
        name = key.removeprefix("token.")
        if name.startswith("="):  # bucket_key's encoding of ids with other characters
            try:
                padded = name[1:] + "=" * (-len(name[1:]) % 4)
                return base64.urlsafe_b64decode(padded).decode()
            except (binascii.Error, ValueError):
                return None
        return name

    async def get(self, account_id: str) -> StoredToken | None:
        """See TokenStore.get (OSError when NATS does not answer)."""
        try:
            entry = await self._bucket.get(_key(account_id))
        except KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise OSError(f"NATS did not answer for the token record: {exc}") from exc
        if not entry.value:
            return None
        return StoredToken(TokenRecord.decode(entry.value), entry.revision or 0)

    async def put(self, account_id: str, record: TokenRecord, revision: int | None) -> int | None:
        """See TokenStore.put (OSError when NATS does not answer)."""
        headers: dict[str, Any] = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision or 0)}
        try:
            ack = await self._conn.js.publish(
                self._subject_prefix + _key(account_id), record.encode(), headers=headers
            )
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return None
            raise OSError(f"NATS refused the token record: {exc}") from exc
        except nats.errors.Error as exc:
            raise OSError(f"NATS did not take the token record: {exc}") from exc
        return ack.seq

    async def close(self) -> None:
        """Stop watching and close the connection."""
        self._conn.closing = True
        if self._watching is not None:
            await stop_task(self._watching)
        await self._conn.close()
