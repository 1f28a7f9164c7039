"""The messaging window's record on NATS (storage.windows): a KV bucket every replica
shares, ``<stream>_windows``, key ``<account>.<person>``, value the last message time.

A newer time replaces an older one with a compare-and-set (the revision read), so two
replicas recording the same person at once keep the later time, and a late delivery
never moves a window back.

Within one process a person has at most one compare-and-set in flight: notes that arrive
meanwhile raise the time it writes next and wait for it, instead of each reading and
writing the key and failing on each other's revisions (a person tapping fast, or a burst
of deliveries, cost a KV get and an update per delivery and a retry per conflict; on one
person at 500 deliveries/s that was 18 % of the event loop). The time last written per
person is remembered (up to ``_REMEMBERED``), so an older or equal note costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from nats.js.errors import (
    APIError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from igbutton_server.config import Settings
from igbutton_server.storage.nats._connection import (
    NatsConnection,
    open_kv_bucket,
)
from igbutton_server.storage.nats.idempotency import bucket_key
from igbutton_server.storage.windows import RECORD_TTL_SECONDS, Person

_CAS_ATTEMPTS = 20
_REMEMBERED = 10_000
"""People whose last written time this process remembers; beyond, the oldest is forgotten
(its next note reads the bucket again)."""


@dataclass
class _Writing:
    """The compare-and-set in flight for one person, and the latest time asked of it."""

    wanted: int
    done: asyncio.Future[bool]
    """True once ``wanted`` (as it was last) is written; False: the writer gave up without
    an error of its own (cancelled), so a waiter writes for itself."""


def bucket_name(settings: Settings) -> str:
    """The bucket of the window records, named after the postback stream as its others."""
    return f"{settings.storage.nats.stream}_windows"


def _key(account_id: str, person_id: str) -> str:
    return f"{bucket_key(account_id)}.{bucket_key(person_id)}"


class NatsWindowLedger:
    """WindowLedger on a JetStream KV bucket. Build with :meth:`open`."""

    def __init__(self, conn: NatsConnection, name: str) -> None:
        self._conn = conn
        self._name = name
        self._writing: dict[str, _Writing] = {}
        self._written: dict[str, int] = {}
        """Key -> the latest time this process wrote (or found) there, oldest first."""

    @classmethod
    async def open(cls, settings: Settings) -> NatsWindowLedger:
        """Connect and create or update the bucket."""
        name = bucket_name(settings)
        conn = await open_kv_bucket(
            settings,
            name,
            "igbutton messaging windows: each person's last message time per account",
            float(RECORD_TTL_SECONDS),
        )
        return cls(conn, name)

    async def note(self, seen: Mapping[Person, int]) -> None:
        """See WindowLedger.note."""
        await asyncio.gather(*(self._note_one(p, ms) for p, ms in seen.items()))

    async def _note_one(self, person: Person, ms: int) -> None:
        key = _key(*person)
        while ms > self._written.get(key, -1):
            writing = self._writing.get(key)
            if writing is not None:  # another note of this person is being written
                writing.wanted = max(writing.wanted, ms)
                if await asyncio.shield(writing.done):
                    return
                continue  # its writer was cancelled: write ourselves
            writing = _Writing(ms, asyncio.get_running_loop().create_future())
            self._writing[key] = writing
            try:
                while True:
                    target = writing.wanted
                    self._remember(key, await self._compare_and_set(key, target))
                    if writing.wanted <= target:  # nobody asked for later meanwhile
                        break
                writing.done.set_result(True)
            except Exception as exc:
                writing.done.set_exception(exc)
                writing.done.exception()  # retrieved: there may be no waiter to see it
                raise
            finally:
                del self._writing[key]
                if not writing.done.done():
                    writing.done.set_result(False)  # cancelled: each waiter writes itself
            return

    def _remember(self, key: str, ms: int) -> None:
        self._written.pop(key, None)
        self._written[key] = ms
        if len(self._written) > _REMEMBERED:
            del self._written[next(iter(self._written))]

    async def _compare_and_set(self, key: str, ms: int) -> int:
        """Write ``ms`` unless the bucket holds a later time; the time it holds after."""
        value = str(ms).encode()
        for _ in range(_CAS_ATTEMPTS):
            bucket = self._conn.bucket(self._name)  # on the current client (see NatsConnection)
            try:
                entry = await bucket.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                entry = None
            try:
                if entry is None or entry.value is None or entry.revision is None:
                    await bucket.create(key, value)
                elif int(entry.value) >= ms:
                    return int(entry.value)
                else:
                    await bucket.update(key, value, last=entry.revision)
                return ms
            except KeyWrongLastSequenceError:
                continue  # another replica wrote meanwhile: compare again
            except APIError as exc:
                if exc.err_code != 10071:  # wrong last sequence, as create reports it
                    raise
        raise OSError(f"the messaging window of {key} kept changing; not recorded")

    async def last_message_ms(self, account_id: str, person_id: str) -> int | None:
        """See WindowLedger.last_message_ms. Read from the stream's leader, not a direct
        get that a follower may answer a moment behind: a window a webhook just opened on
        another replica must not read as closed."""
        subject = f"$KV.{self._name}.{_key(account_id, person_id)}"
        try:
            with self._conn.answering(f"NATS messaging-window bucket {self._name}"):
                msg = await self._conn.js.get_last_msg(f"KV_{self._name}", subject)
        except NotFoundError:
            return None
        data = msg.data or b""
        if not data.isdigit():
            return None
        # The bucket's max age counts from the write; a record is forgotten from the time
        # it holds, as on every engine.
        oldest = int(time.time() * 1000) - RECORD_TTL_SECONDS * 1000
        return int(data) if int(data) >= oldest else None

    async def prune(self) -> int:
        """See WindowLedger.prune: the bucket's max age expires records on its own."""
        return 0

    async def close(self) -> None:
        """See WindowLedger.close."""
        await self._conn.close()
