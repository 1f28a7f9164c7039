"""The JetStream layout: created at start, updated when the settings change."""

from __future__ import annotations

from collections.abc import Iterable

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from igbutton_server.storage.nats._connection import (
    DUPLICATE_WINDOW_SECONDS,
    NatsConnection,
    NatsLayout,
    parse_header_lines,
    redact_url,
    subject_token,
)
from tests.conftest import SettingsFactory
from tests.nats_servers import NatsServer, free_port
from tests.storage.nats_fixtures import nats_test_settings, removing_layout


async def test_open_creates_the_log_dead_letters_and_bucket(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> None:
    settings = nats_test_settings(
        make_settings,
        [nats_server.url],
        postbacks={"retention_seconds": 3600},
        idempotency={"ttl_seconds": 600},
    )
    async with removing_layout(settings) as layout:
        conn = await NatsConnection.open(settings)
        try:
            ledger = await conn.ensure_postback_layout()
            idempotency = await conn.ensure_idempotency_layout()
            log_info = await conn.js.stream_info(layout.stream)
            # Postbacks, and copies of dead letters redriven to one group (storage.groups).
            assert log_info.config.subjects == [
                f"{layout.subject_prefix}.*.*",
                f"{layout.subject_prefix}.redrive.*.*",
            ]
            assert log_info.config.max_age == 3600
            assert log_info.config.duplicate_window == DUPLICATE_WINDOW_SECONDS
            assert log_info.config.num_replicas == 1
            dead = await conn.js.stream_info(layout.dead_letter_stream)
            assert dead.config.subjects == layout.dead_letter_subjects()
            status = await idempotency.status()
            assert status.ttl == 600
            assert status.history == 1
            assert (await ledger.status()).ttl == 3600
        finally:
            await conn.close()


async def test_a_second_start_updates_retention_and_ttl(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> None:
    first = nats_test_settings(make_settings, [nats_server.url])
    async with removing_layout(first) as layout:
        conn = await NatsConnection.open(first)
        await conn.ensure_postback_layout()
        await conn.ensure_idempotency_layout()
        await conn.close()
        changed = first.model_copy(
            update={
                "postbacks": first.postbacks.model_copy(update={"retention_seconds": 7200}),
                "idempotency": first.idempotency.model_copy(update={"ttl_seconds": 120}),
            }
        )
        conn = await NatsConnection.open(changed)
        try:
            await conn.ensure_postback_layout()
            idempotency = await conn.ensure_idempotency_layout()
            assert (await conn.js.stream_info(layout.stream)).config.max_age == 7200
            assert (await idempotency.status()).ttl == 120
        finally:
            await conn.close()


async def test_unreachable_nats_fails_start_without_leaking_credentials(
    make_settings: SettingsFactory,
) -> None:
    url = f"nats://igbutton:hunter2-secret@127.0.0.1:{free_port()}"
    settings = make_settings(storage={"backend": "nats", "nats": {"servers": [url]}})
    with pytest.raises(OSError, match="cannot reach NATS") as caught:
        await NatsConnection.open(settings, connect_window=0.5)
    assert "hunter2" not in str(caught.value)


def test_subject_tokens_are_injective_and_safe() -> None:
    values = ["17841400000000000", "a.b", "a*b", "a>b", "~x", "m_1-2", "a b", "aWdfZAG=="]
    tokens = [subject_token(v) for v in values]
    assert len(set(tokens)) == len(values)
    for token in tokens:
        assert token
        assert not set(token) & set(".*> \t")
    assert subject_token("17841400000000000") == "17841400000000000"


def test_layout_subjects() -> None:
    layout = NatsLayout(stream="S", subject_prefix="p.q", idempotency_bucket="b")
    assert layout.postback_subject("1", "m.1") == f"p.q.1.{subject_token('m.1')}"
    assert layout.delivery_bucket == "S_deliveries"
    filt = layout.dead_letter_filter("g_x").split(".")
    for subject in layout.dead_letter_subjects("g_x"):
        tokens = subject.split(".")
        assert len(tokens) == len(filt)
        assert all(f in ("*", t) for f, t in zip(filt, tokens, strict=True))
    assert layout.account_subjects(frozenset()) == ["p.q.*.*"]
    assert layout.account_subjects(frozenset({"2", "1"})) == ["p.q.1.*", "p.q.2.*"]


def test_redact_url() -> None:
    assert redact_url("nats://u:p@h:4222") == "nats://h:4222"
    assert redact_url("tls://h:4222") == "tls://h:4222"


HEADER_BLOCKS = [
    (
        b"Nats-Msg-Id: 1784:m_abc\r\nNats-Expected-Last-Subject-Sequence: 0\r\n"
        b"Nats-Expected-Stream: IGBUTTON_POSTBACKS\r\n\r\n"
    ),
    b"Name:Value\r\nName2:\tValue2  \r\nEmpty:\r\n:no-name\r\nno colon\r\n\r\n",
    b"Bad Name: 1\r\nTab\tName: 2\r\nUnit\x1fSep: 3\r\nFile\x1cSep: 4\r\n  Padded  : 5\r\n",
    b"Caf\xc3\xa9: 1\r\nUtf8: caf\xc3\xa9\r\nBroken: \xff\xfe\r\nDup: a\r\nDup: b\r\n",
    b"Colon: a:b:c\r\nDEL\x7f: 6\r\nCtrl\x01: 7\r\nVert\x0bTab: 8\r\n\r\n\r\n",
    b"",
]


@pytest.mark.parametrize("raw", HEADER_BLOCKS)
def test_the_header_parser_reads_headers_as_nats_py_does(raw: bytes) -> None:
    assert parse_header_lines(raw) == NatsClient._parse_header_lines(raw)


async def test_the_client_reads_headers_with_the_faster_parser(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> None:
    settings = nats_test_settings(make_settings, [nats_server.url])
    async with removing_layout(settings):
        conn = await NatsConnection.open(settings)
        try:
            assert type(conn.client)._parse_header_lines is parse_header_lines
            sub = await conn.client.subscribe("igbutton.test.headers")
            headers = {"Nats-Msg-Id": "a:b", "Igbutton-Redrive-Of": "12", "Empty": ""}
            await conn.client.publish("igbutton.test.headers", b"x", headers=headers)
            msg = await sub.next_msg(timeout=5)
            assert msg.headers == headers
        finally:
            await conn.close()


async def test_a_flush_returns_once_the_server_has_seen_what_was_sent_before(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> None:
    # nats-py wrote the PING ahead of commands still in its write buffer: an UNSUB just
    # before a flush reached the server after the PONG left it (a closed group member's
    # pull request outlived its close).
    settings = nats_test_settings(make_settings, [nats_server.url])
    async with removing_layout(settings):
        conn = await NatsConnection.open(settings)
        other = await nats.connect(nats_server.url)
        try:
            client = conn.client
            sub = await client.subscribe("igbutton.test.flush")
            await client.flush()
            transport = client._transport
            assert transport is not None
            wire: list[bytes] = []
            write, writelines = transport.write, transport.writelines

            def record(data: bytes | bytearray | memoryview) -> None:
                wire.append(bytes(data))
                write(data)

            def record_lines(lines: Iterable[bytes | bytearray | memoryview]) -> None:
                lines = list(lines)
                wire.extend(bytes(line) for line in lines)
                writelines(lines)

            transport.write = record  # type: ignore[method-assign]
            transport.writelines = record_lines  # type: ignore[method-assign]
            try:
                await sub.unsubscribe()
                await client.flush()
            finally:
                del transport.write, transport.writelines
            sent = b"".join(wire)
            assert sent.index(b"UNSUB") < sent.index(b"PING"), sent
            with pytest.raises(nats.errors.NoRespondersError):  # the interest is gone
                await other.request("igbutton.test.flush", b"", timeout=5)
        finally:
            await other.close()
            await conn.close()
