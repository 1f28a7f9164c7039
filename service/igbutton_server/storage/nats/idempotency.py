"""request_id records in a NATS KV bucket: the IdempotencyStore every replica shares.

A claim is a KV ``create`` (a publish with ``Nats-Expected-Last-Subject-Sequence``), which
the stream leader applies atomically: of two replicas racing on one request_id exactly one
creates the record and sends; the other gets the existing record back, and the send path
polls it until the outcome lands or the claim's lease runs out (``IdempotentSends``).
Each record carries its own expiry, so a record past its TTL counts as absent at once; the
per-message TTL (``Nats-TTL``) and the bucket's max age then remove it from NATS.

Each store (one per process) has an owner id and keeps a heartbeat under the key
``_owner.<id>`` (a key no request_id maps to), rewritten every ``HEARTBEAT_SECONDS``. A
claim names its owner; a pending claim whose owner's heartbeat is older than
``OWNER_DEAD_SECONDS`` (or gone) is abandoned: its process crashed or lost NATS for good.
Taking over a claim, marking it written and releasing it are compare-and-set writes on the
claim's revision, so a presumed-dead owner that comes back cannot write after a take-over.

When NATS cannot be reached (disconnected, or JetStream does not answer within nats-py's
request timeout) every operation raises StorageUnavailable naming the bucket, at once when
the client is disconnected: a publish would otherwise wait in the client's buffer and could
land after the caller was told it failed. From then on operations fail at once and the store
is not ready until the heartbeat (every second) is answered again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import APIError, KeyNotFoundError, NoStreamResponseError
from nats.js.kv import KeyValue

from igbutton_server.config import Settings
from igbutton_server.send.outcome import Outcome, dump_outcome, load_outcome
from igbutton_server.storage.idempotency import ClaimLost, Record
from igbutton_server.storage.nats._connection import (
    CONNECT_WINDOW_SECONDS,
    WRONG_LAST_SEQUENCE,
    NatsConnection,
)
from igbutton_server.storage.postbacks import StorageUnavailable

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CLAIM_ATTEMPTS = 5
_MARKER_TTL = "60"
HEARTBEAT_SECONDS = 1.0
"""How often a store rewrites its owner heartbeat."""
OWNER_DEAD_SECONDS = 5.0
"""A heartbeat older than this means its owner is gone."""
_OWNER_PREFIX = "_owner."

log = logging.getLogger(__name__)

T = TypeVar("T")


def bucket_key(request_id: str) -> str:
    """The KV key of a request_id (KV keys allow fewer characters than request_ids)."""
    if _PLAIN_KEY.match(request_id):
        return request_id
    return "=" + base64.urlsafe_b64encode(request_id.encode()).decode().rstrip("=")


class NatsIdempotencyStore:
    """IdempotencyStore on a JetStream KV bucket. Build with :meth:`open`."""

    def __init__(self, conn: NatsConnection, bucket: KeyValue) -> None:
        self._conn = conn
        self._bucket = bucket
        self._prefix = f"$KV.{conn.layout.idempotency_bucket}."
        self._owner = uuid.uuid4().hex
        self._heartbeat: asyncio.Task[None] | None = None
        self._beat_ok = True
        self._unwritten: dict[str, tuple[dict[str, Any], int]] = {}
        """This store's claims not yet marked written: the value and revision it wrote."""
        self._problem: str | None = None
        """Why the last operation failed for want of NATS; None once one succeeded."""
        conn.on_revived = self._on_revived

    async def _on_revived(self) -> None:
        """The client closed and a new one replaced it: read the bucket through that one."""
        self._bucket = self._conn.bucket(self._conn.layout.idempotency_bucket)

    def _unavailable(self, why: str) -> StorageUnavailable:
        self._problem = why
        bucket = self._conn.layout.idempotency_bucket
        return StorageUnavailable(f"NATS idempotency store (bucket {bucket}) unavailable: {why}")

    async def _guarded(self, operation: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        """``operation()``'s result; StorageUnavailable when NATS cannot be reached, at once
        while a request failed and the heartbeat has not been answered since: only probes
        (the heartbeat every second, outcomes, releases) try then, so new calls do not each
        wait out nats-py's request timeout. Only the heartbeat clears the problem: it is a
        write, and a read may be answered (by any replica) while writes are not."""
        if not self._conn.connected:
            raise self._unavailable("not connected to NATS")
        if self._problem is not None and not probe:
            raise self._unavailable(self._problem)
        try:
            return await operation()
        except (nats.errors.Error, ConnectionError) as exc:
            raise self._unavailable(f"NATS did not answer ({exc!r})") from exc

    @classmethod
    async def open(cls, settings: Settings) -> NatsIdempotencyStore:
        """Connect and create or update the bucket."""
        conn = await NatsConnection.open(settings)
        try:
            bucket = await conn.ensure_idempotency_layout()
            store = cls(conn, bucket)
            await store._first_beat()
        except BaseException:
            await conn.close()
            raise
        store._heartbeat = asyncio.create_task(store._beat_forever(), name="idempotency-heartbeat")
        return store

    async def _beat(self) -> None:
        now = time.time()
        await self._conn.js.publish(
            self._prefix + _OWNER_PREFIX + self._owner,
            json.dumps({"at": now}).encode(),
            headers={api.Header.MSG_TTL: str(math.ceil(OWNER_DEAD_SECONDS * 2))},
        )

    async def _first_beat(self) -> None:
        """The first heartbeat, before any claim (so none of ours looks dead on arrival). A
        bucket just created in a cluster may not answer for a few seconds: retry a while."""
        deadline = time.monotonic() + CONNECT_WINDOW_SECONDS
        delay = 0.1
        while True:
            try:
                await self._beat()
            except (NoRespondersError, NoStreamResponseError, NatsTimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("idempotency bucket not ready for the heartbeat (%r); retrying", exc)
            else:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self._conn.connected:
                continue  # a publish now would sit in the client's buffer until reconnected
            try:
                await self._guarded(self._beat, probe=True)
            except Exception as exc:  # noqa: BLE001 - the heartbeat goes on; logged once
                if self._beat_ok:  # once per outage, not once a second
                    log.warning("could not write the idempotency owner heartbeat: %s", exc)
                self._beat_ok = False
            else:
                self._beat_ok = True
                self._problem = None

    async def _owner_alive(self, owner: str) -> bool:
        if owner == self._owner:
            return True
        try:
            entry = await self._bucket.get(_OWNER_PREFIX + owner)
        except KeyNotFoundError:
            return False
        if not entry.value:
            return False
        at = float(json.loads(entry.value)["at"])
        return time.time() - at < OWNER_DEAD_SECONDS

    async def _latest(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The stored value (None if absent or deleted) and the revision to write after."""
        try:
            entry = await self._bucket.get(bucket_key(key))
        except KeyNotFoundError as missing:
            # nats-py reports a delete marker as KeyNotFoundError carrying the marker's entry
            # (KeyDeletedError exists but get() does not raise it): its revision is the one a
            # new claim must write after, or the claim fails until the marker expires.
            return None, (missing.entry.revision or 0) if missing.entry is not None else 0
        if not entry.value:
            return None, entry.revision or 0
        value: dict[str, Any] = json.loads(entry.value)
        return value, entry.revision or 0

    async def _write(
        self, key: str, value: dict[str, Any] | None, ttl: float, last: int | None
    ) -> int | None:
        """Write (or delete, with ``value`` None); with ``last``, only if the record is still
        at that revision. The new revision; None if the record was not at ``last``."""
        headers: dict[str, Any] = {api.Header.MSG_TTL: str(max(1, math.ceil(ttl)))}
        if last is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last)
        payload = b""
        if value is None:
            headers["KV-Operation"] = "DEL"
            headers[api.Header.MSG_TTL] = _MARKER_TTL
        else:
            payload = json.dumps(value, separators=(",", ":")).encode()
        try:
            ack = await self._conn.js.publish(
                self._prefix + bucket_key(key), payload, headers=headers
            )
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def _record(self, value: dict[str, Any] | None, now: float) -> Record | None:
        if value is None or float(value["expires_at"]) <= now:
            return None
        fingerprint = str(value["fingerprint"])
        lease = float(value["lease_expires_at"])
        outcome = value.get("outcome")
        if outcome is not None:
            return Record(fingerprint, load_outcome(outcome), lease)
        # Claims of earlier versions have neither: written (the safe side), never abandoned.
        owner = value.get("owner")
        alive = owner is None or await self._owner_alive(str(owner))
        return Record(
            fingerprint,
            None,
            lease,
            written=bool(value.get("written", True)),
            abandoned=not alive,
            own=owner == self._owner,
        )

    async def _get(self, key: str) -> Record | None:
        value, _ = await self._latest(key)
        return await self._record(value, time.time())

    async def _claim(
        self,
        key: str,
        fingerprint: str,
        lease_seconds: float,
        ttl_seconds: float,
        *,
        written: bool,
    ) -> Record | None:
        for _ in range(_CLAIM_ATTEMPTS):
            now = time.time()
            claim = {
                "fingerprint": fingerprint,
                "outcome": None,
                "lease_expires_at": now + lease_seconds,
                "expires_at": now + ttl_seconds,
                "owner": self._owner,
                "written": written,
            }
            revision = await self._write(key, claim, ttl_seconds, last=0)
            if revision is None:
                value, latest = await self._latest(key)
                existing = await self._record(value, now)
                if existing is not None and not (existing.abandoned and not existing.written):
                    return existing
                # Absent, deleted, expired, or abandoned before it was written: take it
                # over, unless another claim wins meanwhile.
                revision = await self._write(key, claim, ttl_seconds, last=latest)
            if revision is not None:
                if not written:
                    self._unwritten[key] = (claim, revision)
                return None
        # Seen when JetStream lost its quorum: reads answered, conditional writes refused.
        raise self._unavailable(f"request_id {key!r} keeps changing; cannot claim it")

    async def _mark_written(self, key: str) -> None:
        # The claim as this store wrote it: one compare-and-set on its revision, no read.
        # A take-over or a release since changed the revision, so the write fails.
        mine = self._unwritten.pop(key, None)
        if mine is None:  # not one of this store's unwritten claims: read what is there
            found, revision = await self._latest(key)
            if found is None or found.get("outcome") is not None:
                raise ClaimLost(key)
            mine = (found, revision)
        value, revision = mine
        if value.get("owner") != self._owner:
            raise ClaimLost(key)
        ttl = float(value["expires_at"]) - time.time()
        if await self._write(key, {**value, "written": True}, ttl, last=revision) is None:
            raise ClaimLost(key)

    async def _complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        self._unwritten.pop(key, None)
        now = time.time()
        record = {
            "fingerprint": fingerprint,
            "outcome": dump_outcome(outcome),
            "lease_expires_at": now,
            "expires_at": now + ttl_seconds,
        }
        await self._write(key, record, ttl_seconds, last=None)

    async def _release(self, key: str) -> None:
        self._unwritten.pop(key, None)
        value, revision = await self._latest(key)
        if value is not None and value.get("outcome") is None and value.get("owner") == self._owner:
            await self._write(key, None, 0, last=revision)  # lost a race: fine either way

    async def get(self, key: str) -> Record | None:
        """See IdempotencyStore.get."""
        return await self._guarded(lambda: self._get(key))

    async def claim(
        self,
        key: str,
        fingerprint: str,
        lease_seconds: float,
        ttl_seconds: float,
        *,
        written: bool = False,
    ) -> Record | None:
        """See IdempotencyStore.claim."""
        return await self._guarded(
            lambda: self._claim(key, fingerprint, lease_seconds, ttl_seconds, written=written)
        )

    async def mark_written(self, key: str) -> None:
        """See IdempotencyStore.mark_written."""
        await self._guarded(lambda: self._mark_written(key))

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """See IdempotencyStore.complete."""
        # Tried even while the last request failed: the outcome of a send that happened is
        # worth the wait (lost, a repeat answers SEND_OUTCOME_UNKNOWN).
        await self._guarded(
            lambda: self._complete(key, fingerprint, outcome, ttl_seconds), probe=True
        )

    def complete_soon(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> asyncio.Future[None]:
        """See IdempotencyStore.complete_soon: each publish is its own write on NATS."""
        return asyncio.ensure_future(self.complete(key, fingerprint, outcome, ttl_seconds))

    async def release(self, key: str) -> None:
        """See IdempotencyStore.release."""
        await self._guarded(lambda: self._release(key), probe=True)  # lets a retry send

    def unready_reason(self) -> str | None:
        """None while connected to NATS (the client reconnects on its own) and its last
        operation was answered."""
        if not self._conn.connected:
            return "idempotency store: not connected to NATS"
        if self._problem is not None:
            return f"idempotency store: {self._problem}"
        return None

    async def close(self) -> None:
        """Stop the heartbeat, remove it (no claim of ours is left), close the connection."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._conn.connected:
            with contextlib.suppress(Exception):
                await self._conn.js.publish(
                    self._prefix + _OWNER_PREFIX + self._owner,
                    b"",
                    headers={"KV-Operation": "DEL", api.Header.MSG_TTL: _MARKER_TTL},
                )
        await self._conn.close()
