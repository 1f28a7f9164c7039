"""request_id records in a NATS KV bucket: the IdempotencyStore every replica shares.

A claim is a KV ``create`` (a publish with ``Nats-Expected-Last-Subject-Sequence``), which
the stream leader applies atomically: of two replicas racing on one request_id exactly one
creates the record and sends; the other gets the existing record back, and the send path
polls it until the outcome lands or the claim's lease runs out (``IdempotentSends``).
Each record carries its own expiry, so a record past its TTL counts as absent at once; the
per-message TTL (``Nats-TTL``) and the bucket's max age then remove it from NATS.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from typing import Any

from nats.js import api
from nats.js.errors import APIError, KeyNotFoundError
from nats.js.kv import KeyValue

from igbutton_server.config import Settings
from igbutton_server.send.outcome import Outcome, dump_outcome, load_outcome
from igbutton_server.storage.idempotency import Record
from igbutton_server.storage.nats._connection import WRONG_LAST_SEQUENCE, NatsConnection

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CLAIM_ATTEMPTS = 5
_MARKER_TTL = "60"


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
        conn.on_revived = self._on_revived

    async def _on_revived(self) -> None:
        """The client closed and a new one replaced it: read the bucket through that one."""
        self._bucket = self._conn.bucket(self._conn.layout.idempotency_bucket)

    @classmethod
    async def open(cls, settings: Settings) -> NatsIdempotencyStore:
        """Connect and create or update the bucket."""
        conn = await NatsConnection.open(settings)
        try:
            bucket = await conn.ensure_idempotency_layout()
        except BaseException:
            await conn.close()
            raise
        return cls(conn, bucket)

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
    ) -> bool:
        """Write (or delete, with ``value`` None); with ``last``, only if the record is still
        at that revision. False if it was not."""
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
            await self._conn.js.publish(self._prefix + bucket_key(key), payload, headers=headers)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    @staticmethod
    def _record(value: dict[str, Any] | None, now: float) -> Record | None:
        if value is None or float(value["expires_at"]) <= now:
            return None
        outcome = value.get("outcome")
        return Record(
            fingerprint=str(value["fingerprint"]),
            outcome=load_outcome(outcome) if outcome is not None else None,
            lease_expires_at=float(value["lease_expires_at"]),
        )

    async def get(self, key: str) -> Record | None:
        """See IdempotencyStore.get."""
        value, _ = await self._latest(key)
        return self._record(value, time.time())

    async def claim(
        self, key: str, fingerprint: str, lease_seconds: float, ttl_seconds: float
    ) -> Record | None:
        """See IdempotencyStore.claim."""
        for _ in range(_CLAIM_ATTEMPTS):
            now = time.time()
            claim = {
                "fingerprint": fingerprint,
                "outcome": None,
                "lease_expires_at": now + lease_seconds,
                "expires_at": now + ttl_seconds,
            }
            if await self._write(key, claim, ttl_seconds, last=0):
                return None
            value, revision = await self._latest(key)
            existing = self._record(value, now)
            if existing is not None:
                return existing
            # Absent, deleted or expired: take it over, unless another claim wins meanwhile.
            if await self._write(key, claim, ttl_seconds, last=revision):
                return None
        raise OSError(f"request_id {key!r} keeps changing; cannot claim it")

    async def complete(
        self, key: str, fingerprint: str, outcome: Outcome, ttl_seconds: float
    ) -> None:
        """See IdempotencyStore.complete."""
        now = time.time()
        record = {
            "fingerprint": fingerprint,
            "outcome": dump_outcome(outcome),
            "lease_expires_at": now,
            "expires_at": now + ttl_seconds,
        }
        await self._write(key, record, ttl_seconds, last=None)

    async def release(self, key: str) -> None:
        """See IdempotencyStore.release."""
        value, revision = await self._latest(key)
        if value is not None and value.get("outcome") is None:
            await self._write(key, None, 0, last=revision)  # lost a race: fine either way

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()
