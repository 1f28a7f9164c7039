"""One connection to NATS JetStream, and the streams and bucket igbutton keeps there.

Every replica runs the same create-or-update at start, so the layout follows the
configuration (retention, TTL, replicas) without a separate migration step:

- the postback log, a stream on ``<prefix>.<account>.<mid>``; one subject per postback
  lets a single conditional publish (``Nats-Expected-Last-Subject-Sequence: 0``) store
  each postback once for as long as it is retained (see ``nats.postbacks``);
- the dead letters, a stream that captures JetStream's MAX_DELIVERIES advisories for the
  log's consumers and igbutton's own record of a nack on the last attempt (one message per
  dead-lettered delivery);
- the delivery ledger, a KV bucket holding each group's current delivery attempt per
  postback, so an ack id can be checked from any replica (see ``nats._groups``);
- the idempotency records, a KV bucket whose entries expire after the idempotency TTL.

nats-py reconnects a dropped connection on its own, but closes its client for good on any
protocol error from the server other than a stale connection (e.g. a line over the server's
limit). A NatsConnection then opens a new client and tells its store, which rebuilds what
lived on the old one; until then the store is not ready, and if that takes longer than
``revive_window`` it is not healthy either (so an orchestrator restarts the process).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import nats
from nats.aio.client import DEFAULT_FLUSH_TIMEOUT
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, ServerError, ServiceUnavailableError
from nats.js.kv import KeyValue

from igbutton_server.config import Settings
from igbutton_server.logs import RateLimitedLog
from igbutton_server.storage.postbacks import StorageUnavailable

log = logging.getLogger(__name__)
_errors_log = RateLimitedLog(log)
"""nats-py reports every failed reconnect attempt (one a second per connection while NATS
is down): bounded, so an outage does not flood the log."""

DUPLICATE_WINDOW_SECONDS = 120.0
"""How long JetStream remembers a ``Nats-Msg-Id``. Meta retries for up to 36 h; the
per-postback subject check, not this window, is what makes a late retry a duplicate.
The window only makes an immediate retry cheap (answered from memory)."""

CONNECT_WINDOW_SECONDS = 30.0
"""How long start-up keeps trying to reach NATS (it may still be starting beside us)."""

REVIVE_WINDOW_SECONDS = 30.0
"""How long a connection whose client closed may take to open a new one before its store
reports itself unhealthy (/healthz 503). It keeps trying after that."""

REVIVE_ATTEMPT_SECONDS = 5.0
"""How long one attempt to open a new client may take."""

WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""JetStream's "wrong last sequence" error codes (the second without the sequence, as a
clustered stream answers): a conditional publish found the subject already written."""

# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
# "No suitable peers for placement": a cluster that just started has not seen every peer.
_NO_PEERS_YET = 10005
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def subject_token(value: str) -> str:
    """A subject token standing for ``value``, injective and free of ``.``, ``*``, ``>``.

    Plain ids (digits, letters, ``_``, ``-``) stay as they are so subjects are readable
    in NATS tools; anything else is base64url-encoded behind a ``~`` that a plain id
    cannot start with.
    """
    if _SAFE_TOKEN.match(value):
        return value
    return "~" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class NatsLayout:
    """The names igbutton uses in JetStream, all derived from the settings."""

    stream: str
    """The postback log stream."""
    subject_prefix: str
    """Postbacks are published on ``<prefix>.<account>.<mid>``."""
    idempotency_bucket: str
    """The KV bucket of idempotency records."""

    @property
    def dead_letter_stream(self) -> str:
        """The stream capturing dead-letter advisories of the log's consumers."""
        return f"{self.stream}_DEAD_LETTERS"

    @property
    def delivery_bucket(self) -> str:
        """The KV bucket of the groups' current deliveries (the ack ledger)."""
        return f"{self.stream}_deliveries"

    def postback_subject(self, account_id: str, mid: str) -> str:
        """The subject of one postback."""
        return f"{self.subject_prefix}.{subject_token(account_id)}.{subject_token(mid)}"

    def redrive_subject(self, consumer: str, sequence: int | str = "*") -> str:
        """Where a redriven copy of postback ``sequence`` for one group's consumer is
        published: in the log, beside the postbacks (one token more, so no account
        filter and no broadcast reader matches it), and in that group's filter only."""
        return f"{self.subject_prefix}.redrive.{consumer}.{sequence}"

    def group_subjects(self, consumer: str, account_ids: frozenset[str]) -> list[str]:
        """The filter subjects of a group's durable consumer: its accounts' postbacks and
        the copies redriven to it."""
        return [*self.account_subjects(account_ids), self.redrive_subject(consumer)]

    def group_notice_subject(self, consumer: str) -> str:
        """Core NATS subject on which operations on a group reach its members on every
        replica: ``reset`` after a seek, ``deadline <seq>.<attempt>.<ms>`` lines after
        ModifyAckDeadline."""
        return f"_IGBUTTON.GROUP.{self.stream}.{consumer}"

    def account_subjects(self, account_ids: frozenset[str]) -> list[str]:
        """Subjects matching the postbacks of these accounts (all accounts when empty)."""
        if not account_ids:
            return [f"{self.subject_prefix}.*.*"]
        return [f"{self.subject_prefix}.{subject_token(a)}.*" for a in sorted(account_ids)]

    def dead_letter_subjects(self, consumer: str = "*") -> list[str]:
        """Subjects whose messages each mean "a delivery of this consumer was
        dead-lettered": JetStream's advisory when the last attempt's ack wait ran out,
        and igbutton's own record of a nack on the last attempt. Both have seven tokens
        ending in stream and consumer, so ``dead_letter_filter`` matches them at once."""
        return [self.max_deliveries_subject(consumer), self.nacked_dead_letter_subject(consumer)]

    def max_deliveries_subject(self, consumer: str = "*") -> str:
        """Where JetStream announces a delivery whose last attempt's ack wait ran out."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{consumer}"

    def nacked_dead_letter_subject(self, consumer: str) -> str:
        """Where igbutton records a nack on a delivery's last attempt."""
        return f"_IGBUTTON.EVENT.ADVISORY.CONSUMER.NACKED_LAST_ATTEMPT.{self.stream}.{consumer}"

    def acks_subject(self, consumer: str) -> str:
        """Core NATS subject on which every AckPostbacks call of a group names the
        deliveries it acks or nacks (``<stream seq>.<attempt>`` lines), applied or not, so
        the members that hold or held them, on any replica, hear that they are alive."""
        return f"_IGBUTTON.ACKS.{self.stream}.{consumer}"

    def dead_letter_filter(self, consumer: str) -> str:
        """A subject filter matching every dead-letter subject of one consumer."""
        return f"*.*.*.*.*.{self.stream}.{consumer}"

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsLayout:
        """The layout the settings describe."""
        nats_settings = settings.storage.nats
        return cls(
            stream=nats_settings.stream,
            subject_prefix=nats_settings.subject_prefix,
            idempotency_bucket=nats_settings.idempotency_bucket,
        )


class NatsConnection:
    """A JetStream client for one store (the postback log, or the idempotency records).

    Build with :meth:`open`, then ensure the layout the store needs. Each store owns its
    connection, so closing one never cuts the other off. ``client`` and ``js`` are replaced
    when the client closes on its own (see the module's docstring): read them from here
    each time, never keep them.
    """

    def __init__(self, client: NatsClient, settings: Settings) -> None:
        self.client = client
        self.js: JetStreamContext = client.jetstream()
        self.layout = NatsLayout.from_settings(settings)
        self.settings = settings
        self.closing = False
        """Set by the store that owns the connection when it starts closing: the cursors and
        group members reading through it end, and leave their server-side clean-up (their
        ephemeral consumers, unhanded deliveries) to JetStream's own timers."""
        self.revive_window = REVIVE_WINDOW_SECONDS
        """See REVIVE_WINDOW_SECONDS."""
        self.revivals = 0
        """How many times a closed client was replaced by a new one."""
        self.on_lost: Callable[[], None] = _nothing
        """Called at once when the client closes on its own."""
        self.on_revived: Callable[[], Awaitable[None]] = _nothing_async
        """Awaited when a new client replaced it, before the connection counts as usable."""
        self._lost_at: float | None = None
        self._reviving: asyncio.Task[None] | None = None
        self._shut = False

    @classmethod
    async def open(
        cls, settings: Settings, connect_window: float = CONNECT_WINDOW_SECONDS
    ) -> NatsConnection:
        """Connect, retrying for ``connect_window`` seconds."""
        current: list[NatsConnection] = []

        async def closed(client: NatsClient) -> None:
            if current:
                current[0].note_client_closed(client)

        conn = cls(await _connect(settings, connect_window, closed), settings)
        current.append(conn)
        return conn

    def note_client_closed(self, client: NatsClient) -> None:
        """Called when a client of this connection closed: if it was the current one and
        not closed by us, open a new one."""
        if self._shut or self.closing or client is not self.client or self._lost_at is not None:
            return
        log.error("the NATS client closed (%s); opening a new one", client.last_error)
        self._lost_at = time.monotonic()
        self.on_lost()
        self._reviving = asyncio.create_task(self._revive(), name="nats-revive")

    async def _revive(self) -> None:
        delay = 0.5
        while not (self._shut or self.closing):

            async def closed(client: NatsClient) -> None:
                self.note_client_closed(client)

            try:
                client = await _connect(self.settings, REVIVE_ATTEMPT_SECONDS, closed)
            except OSError as exc:
                log.warning("cannot open a new NATS client yet: %s", exc)
                await asyncio.sleep(delay)  # a backoff between attempts
                delay = min(delay * 2, REVIVE_ATTEMPT_SECONDS)
                continue
            if self._shut or self.closing:
                await client.close()
                return
            self.client, self.js = client, client.jetstream()
            try:
                await self.on_revived()
            except Exception:  # the store is rebuilt as far as it goes; its parts retry
                log.exception("rebuilding the store on the new NATS client failed")
            self.revivals += 1
            self._lost_at = None
            log.warning("a new NATS client replaced the closed one")
            return

    @property
    def lost(self) -> bool:
        """Whether the client closed on its own and no new one is in use yet."""
        return self._lost_at is not None

    def unhealthy_reason(self) -> str | None:
        """None unless the client closed and no new one could be opened within
        ``revive_window`` seconds (a disconnect the client is repairing is not counted)."""
        if self._lost_at is None:
            return None
        lost_for = time.monotonic() - self._lost_at
        if lost_for <= self.revive_window:
            return None
        return f"the NATS client closed {lost_for:.0f} s ago and no new one could be opened"

    async def ensure_postback_layout(self) -> KeyValue:
        """Create or update the log, dead-letter stream and delivery ledger; return the
        ledger bucket (read from its leader, see ``bucket``)."""
        await ensure_postback_layout(self.js, self.layout, self.settings)
        return self._bucket(self.layout.delivery_bucket, direct=False)

    async def ensure_idempotency_layout(self) -> KeyValue:
        """Create or update the idempotency bucket and return it."""
        ttl = float(self.settings.idempotency.ttl_seconds)
        await _create_or_update(
            self.js,
            _kv_stream_config(
                self.layout.idempotency_bucket,
                "igbutton idempotency records (request_id -> first result)",
                ttl,
                self.settings.storage.nats.replicas,
            ),
        )
        return self._bucket(self.layout.idempotency_bucket)

    def bucket(self, name: str, *, direct: bool = True) -> KeyValue:
        """A KV bucket that exists, on the current client. A ``direct`` read may be
        answered by any replica of the bucket, one that has not yet applied a write
        already acknowledged (JetStream does not promise read-after-write for direct
        gets); otherwise every read goes to the bucket's leader."""
        return self._bucket(name, direct=direct)

    def _bucket(self, name: str, *, direct: bool = True) -> KeyValue:
        # Built directly: js.key_value() first asks for the stream's info, which a cluster
        # may not answer yet right after creating it.
        return KeyValue(
            name=name, stream=f"KV_{name}", pre=f"$KV.{name}.", js=self.js, direct=direct
        )

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now (it reconnects on its own)."""
        return bool(self.client.is_connected) and self._lost_at is None

    @contextlib.contextmanager
    def answering(self, store: str) -> Iterator[None]:
        """Raise NATS not answering as StorageUnavailable naming ``store`` (a gRPC call
        answers UNAVAILABLE / STORAGE_UNAVAILABLE, which clients retry, not INTERNAL): at
        once while disconnected, since a request would wait in the client's buffer for
        nats-py's 5 s timeout; and a request that timed out, found no responders (a leader
        being elected after a node went away) or lost its connection. JetStream refusing a
        request as wrong (a 4xx) is a bug, and stays as it is."""
        if not self.connected:
            raise StorageUnavailable(f"{store} unavailable: not connected to NATS")
        try:
            yield
        except APIError as exc:
            if (exc.code or 0) < 500:
                raise
            raise StorageUnavailable(
                f"{store} unavailable: JetStream answered {exc.description!r}"
            ) from exc
        except (nats.errors.Error, ConnectionError) as exc:
            raise StorageUnavailable(f"{store} unavailable: NATS did not answer ({exc!r})") from exc

    async def close(self) -> None:
        """Flush what is buffered and close the connection."""
        self._shut = True
        reviving, self._reviving = self._reviving, None
        if reviving is not None:
            reviving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reviving
        if self.client.is_closed:
            return
        try:
            await self.client.drain()
        except Exception as exc:  # noqa: BLE001 - a broken connection still has to be closed
            log.warning("NATS drain failed (%r); closing", exc)
            try:
                await self.client.close()
            except Exception as closing:  # noqa: BLE001 - closed as far as it goes; shutting down
                # While reconnecting (NATS down) nats-py's close raises on the lost socket.
                log.warning("closing the NATS client failed: %r", closing)


async def ensure_postback_layout(
    js: JetStreamContext, layout: NatsLayout, settings: Settings
) -> None:
    """Create or update the streams and bucket the postback log needs."""
    replicas = settings.storage.nats.replicas
    retention = float(settings.postbacks.retention_seconds)
    await _create_or_update(
        js,
        api.StreamConfig(
            name=layout.stream,
            description="igbutton postback log",
            # Postbacks, and copies of dead letters redriven to one group.
            subjects=[f"{layout.subject_prefix}.*.*", layout.redrive_subject("*")],
            retention=api.RetentionPolicy.LIMITS,
            max_age=retention,
            # The log's identity check: see nats_postbacks. Kept short on purpose.
            duplicate_window=min(DUPLICATE_WINDOW_SECONDS, retention),
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            discard=api.DiscardPolicy.OLD,
            allow_direct=True,
            deny_delete=True,
        ),
    )
    await _create_or_update(
        js,
        api.StreamConfig(
            name=layout.dead_letter_stream,
            description="igbutton dead letters: JetStream advisories of the postback groups",
            subjects=layout.dead_letter_subjects(),
            retention=api.RetentionPolicy.LIMITS,
            max_age=retention,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            allow_direct=True,
        ),
    )
    await _create_or_update(
        js,
        _kv_stream_config(
            layout.delivery_bucket,
            "igbutton delivery ledger: each group's current attempt per postback",
            retention,
            replicas,
        ),
    )


async def open_kv_bucket(
    settings: Settings, name: str, description: str, ttl: float
) -> NatsConnection:
    """Connect and create or update the KV bucket ``name`` (the tokens, rate-limit and
    messaging-window stores each keep one); the connection is closed if that fails."""
    conn = await NatsConnection.open(settings)
    try:
        await _create_or_update(
            conn.js, _kv_stream_config(name, description, ttl, settings.storage.nats.replicas)
        )
    except BaseException:
        await conn.close()
        raise
    return conn


def _kv_stream_config(bucket: str, description: str, ttl: float, replicas: int) -> api.StreamConfig:
    # The same stream nats-py's create_key_value builds, so js.key_value() accepts it;
    # built here because create_key_value cannot update an existing bucket.
    return api.StreamConfig(
        name=f"KV_{bucket}",
        description=description,
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=min(DUPLICATE_WINDOW_SECONDS, ttl),
        max_age=ttl,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=replicas,
        storage=api.StorageType.FILE,
    )


async def _create_or_update(js: JetStreamContext, config: api.StreamConfig) -> None:
    # A cluster that just started (or lost its meta leader) answers 503 or not at all for
    # a few seconds; replicas starting together race to create the same stream.
    deadline = asyncio.get_running_loop().time() + CONNECT_WINDOW_SECONDS
    delay = 0.2
    while True:
        try:
            try:
                await js.add_stream(config)
                return
            except BadRequestError as exc:
                if exc.err_code == _NO_PEERS_YET:
                    raise ServiceUnavailableError(description=exc.description) from exc
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
            log.info("updating NATS stream %s to the configured settings", config.name)
            await js.update_stream(config)
            return
        except (ServiceUnavailableError, ServerError, nats.errors.TimeoutError) as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            log.info("JetStream not ready for stream %s (%s); retrying", config.name, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


_HEADER_NAME_SPACE = re.compile(rb"[\t\n\x0b\x0c\r\x1c-\x1f ]")
"""The bytes an ASCII header name may not hold: those ``str.isspace`` is true for."""


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's ``Client._parse_header_lines`` (2.16), the same result in about 40 % of the
    time: it checks each header name for whitespace character by character in a generator,
    9 µs of every message JetStream delivers with igbutton's three stored headers
    (``Nats-Msg-Id``, ``Nats-Expected-*``), the largest single cost of reading the log in
    this process. A name with whitespace or non-ASCII bytes is skipped, values are decoded
    with ``errors="replace"``, exactly as there (``tests/storage/test_nats_connection``
    compares the two)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        if not name.isascii() or _HEADER_NAME_SPACE.search(name) is not None:
            continue
        out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


class _Client(NatsClient):
    """nats-py's client with a faster header parser (see parse_header_lines), and a
    ``flush`` that waits for what was sent before it."""

    _parse_header_lines = staticmethod(parse_header_lines)

    async def flush(self, timeout: int = DEFAULT_FLUSH_TIMEOUT) -> None:  # noqa: ASYNC109 - nats-py's
        """Return once the server has processed every command sent before the call.

        nats-py writes the PING straight to the socket, ahead of commands still waiting in
        the client's write buffer for its flusher task (an UNSUB, say), so its PONG alone
        could come back before the server saw them: a closed group member's pull request
        then outlived its close and JetStream gave a postback's attempt to an inbox nobody
        read. Those commands are handed to the socket first, so the PING follows them.
        """
        if self.is_connected:
            await asyncio.wait_for(self._flush_pending(force_flush=True), timeout)
        await super().flush(timeout)


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for logs and errors."""
    return re.sub(r"//[^/@]*@", "//", url)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    nats_settings = settings.storage.nats
    wants_tls = any(s.startswith("tls://") for s in nats_settings.servers)
    if nats_settings.tls_ca_file is None and not wants_tls:
        return None
    context = ssl.create_default_context()
    if nats_settings.tls_ca_file is not None:
        context.load_verify_locations(cafile=str(nats_settings.tls_ca_file))
    return context


def _nothing() -> None:
    pass


async def _nothing_async() -> None:
    pass


async def _connect(
    settings: Settings, window: float, on_closed: Callable[[NatsClient], Awaitable[None]]
) -> NatsClient:
    nats_settings = settings.storage.nats

    async def on_error(exc: Exception) -> None:
        _errors_log.log(logging.WARNING, "connection_error", "NATS connection error: %s", exc)

    async def on_disconnected() -> None:
        if not (client.is_draining or client.is_closed):  # not our own close
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        log.info("reconnected to NATS")

    async def on_closed_cb() -> None:
        await on_closed(client)

    # With unlimited reconnects nats-py also retries the first connect forever; the
    # window bounds it so a wrong URL stops the start with a clear message.
    client: NatsClient = _Client()
    try:
        await asyncio.wait_for(
            client.connect(
                servers=nats_settings.servers,
                name="igbutton",
                user_credentials=(
                    str(nats_settings.creds_file) if nats_settings.creds_file else None
                ),
                tls=_tls_context(settings),
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed_cb,
            ),
            timeout=window,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await client.close()
        where = ", ".join(redact_url(s) for s in nats_settings.servers)
        raise OSError(f"cannot reach NATS at {where}") from exc
    return client
