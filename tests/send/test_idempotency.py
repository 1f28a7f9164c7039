"""request_id idempotency: one send per request_id, outcomes replayed, across restarts, on
every engine; and the IdempotencyStore contract every engine passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.sandbox import Fault, Sandbox
from igbutton_server.send.idempotency import fingerprint
from igbutton_server.send.outcome import SendResult, outcome_unknown
from igbutton_server.storage.backends import open_storage
from igbutton_server.storage.idempotency import IdempotencyStore
from igbutton_server.storage.sqlite.idempotency import SqliteIdempotencyStore
from tests.conftest import SettingsFactory, starting_apps
from tests.send.conftest import ACCOUNT, RECIPIENT, AppFactory, details, send_request, stub_for

RID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
async def start_app(engine_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps on the test's ``engine`` (the same SQLite file, or the same KV bucket, each
    time); every one is stopped at the end of the test."""
    async with starting_apps(engine_settings) as start:
        yield start


@pytest.fixture
async def app(start_app: AppFactory) -> App:
    """The default App, on the test's ``engine``."""
    return await start_app()


async def test_repeat_returns_the_first_result_without_sending(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    first = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    second = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert second == first
    assert len(sandbox.received) == 1


async def test_concurrent_duplicates_send_once(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=0.3))  # keep the first one in flight
    replies = await asyncio.gather(
        *(stub.SendButtonTemplate(send_request(request_id=RID), timeout=10) for _ in range(10))
    )
    assert len({r.message_id for r in replies}) == 1
    assert len(sandbox.received) == 1


async def test_without_request_id_every_call_sends(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    await stub.SendButtonTemplate(send_request(), timeout=10)
    await stub.SendButtonTemplate(send_request(), timeout=10)
    assert len(sandbox.received) == 2


async def test_reuse_with_a_different_request_is_rejected(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(send_request(request_id=RID, recipient_id="999"), timeout=10)
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert got.metadata["requestId"] == RID
    assert len(sandbox.received) == 1


async def test_concurrent_reuse_with_a_different_request_is_rejected(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=0.3))
    results = await asyncio.gather(
        stub.SendButtonTemplate(send_request(request_id=RID), timeout=10),
        stub.SendButtonTemplate(send_request(request_id=RID, recipient_id="999"), timeout=10),
        return_exceptions=True,
    )
    # Whichever arrives first sends; the other is rejected.
    ok = [r for r in results if isinstance(r, send_service_pb2.SendButtonTemplateResponse)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1
    assert [details(f).reason for f in failed] == ["REQUEST_ID_REUSED"]
    assert len(sandbox.received) == 1


async def test_idempotency_survives_a_restart(start_app: AppFactory) -> None:
    first_app = await start_app()
    async with stub_for(first_app) as stub:
        first = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    await first_app.stop()

    second_app = await start_app()  # same SQLite file or KV bucket (the test's engine)
    async with stub_for(second_app) as stub:
        second = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert second == first
    assert second_app.sandbox is not None
    assert second_app.sandbox.received == []


async def test_final_failure_is_replayed(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    sandbox.add_fault(Fault(kind="graph_error", code=551))
    errors = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        errors.append(details(caught.value))
    assert errors[0] == errors[1]
    assert errors[0].reason == "RECIPIENT_UNAVAILABLE"
    assert errors[0].metadata["graphCode"] == "551"
    assert len(sandbox.received) == 1


async def test_retryable_failure_is_not_kept(start_app: AppFactory) -> None:
    app = await start_app(graph={"max_attempts": 1})
    assert app.sandbox is not None
    app.sandbox.add_fault(Fault(kind="graph_error", code=2))
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert details(caught.value).code == grpc.StatusCode.UNAVAILABLE
        reply = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert reply.message_id
    assert len(app.sandbox.received) == 2


async def test_retry_the_deadline_cannot_hold_is_not_started(start_app: AppFactory) -> None:
    """Each attempt takes 0.6 s of a 1 s deadline and Meta did not act: a second attempt
    would be cut off after it was written and burn the request_id as SEND_OUTCOME_UNKNOWN.
    igbutton answers the transient error instead, and the request_id stays usable."""
    app = await start_app()
    assert app.sandbox is not None
    app.sandbox.add_fault(
        Fault(kind="graph_error", code=2, is_transient=True, delay_seconds=0.6, count=4)
    )
    async with stub_for(app) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=1.0)
        got = details(caught.value)
        assert (got.code, got.reason) == (grpc.StatusCode.UNAVAILABLE, "GRAPH_UNAVAILABLE")
        assert got.metadata["graphCode"] == "2"
        assert len(app.sandbox.received) == 1  # the second attempt was never started

        app.sandbox.clear_faults()  # Meta is healthy again
        reply = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert reply.message_id
    assert len(app.sandbox.received) == 2
    assert [r.message_id for r in app.sandbox.received if r.accepted] == [reply.message_id]


async def test_unknown_outcome_is_kept_so_a_retry_never_sends_twice(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    sandbox.add_fault(Fault(kind="drop"))
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert details(caught.value).reason == "SEND_OUTCOME_UNKNOWN"
    assert len(sandbox.received) == 1


async def test_call_cancelled_after_the_request_was_written_is_kept_unknown(
    stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    sandbox.add_fault(Fault(kind="slow", delay_seconds=30))
    call = stub.SendButtonTemplate(send_request(request_id=RID), timeout=20)
    for _ in range(500):
        if sandbox.received:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(200):  # the server notices the cancellation asynchronously
        try:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        except grpc.aio.AioRpcError as error:
            if details(error).reason == "SEND_OUTCOME_UNKNOWN":
                break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the cancelled send was not kept as unknown")
    assert len(sandbox.received) == 1


async def test_send_abandoned_by_a_crashed_process_is_unknown(
    app: App, stub: send_service_pb2_grpc.SendServiceStub, sandbox: Sandbox
) -> None:
    """A claim marked written whose lease expired (its process died mid-send) may have sent.
    (One never marked written is released and sent: see the dead owner's tests.)"""
    preview = await stub.ValidateButtonTemplate(
        send_service_pb2.ValidateButtonTemplateRequest(
            recipient_id=RECIPIENT, template=send_request().template
        ),
        timeout=10,
    )
    assert app.send is not None
    claimed = await app.send.store.claim(
        RID, fingerprint(ACCOUNT, preview.body_json), lease_seconds=-1, ttl_seconds=3600
    )
    assert claimed is None
    await app.send.store.mark_written(RID)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
    assert details(caught.value).reason == "SEND_OUTCOME_UNKNOWN"
    assert sandbox.received == []


# --- The store interface, behaviour any backend must show. ---


@pytest.fixture
async def store(
    engine_settings: SettingsFactory, tmp_path: Path
) -> AsyncIterator[IdempotencyStore]:
    """The IdempotencyStore of each engine (SQLite in a folder it creates)."""
    settings = engine_settings(storage={"sqlite_path": str(tmp_path / "sub" / "dir" / "idem.db")})
    storage = await open_storage(settings)
    try:
        yield storage.idempotency
    finally:
        await storage.close()


async def test_store_claim_complete_get(store: IdempotencyStore) -> None:
    assert await store.get("k") is None
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60) is None
    pending = await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60)
    assert pending is not None
    assert pending.outcome is None
    assert pending.fingerprint == "fp"
    await store.complete("k", "fp", SendResult("r", "m"), ttl_seconds=60)
    done = await store.get("k")
    assert done is not None
    assert done.outcome == SendResult("r", "m")


async def test_store_keeps_errors(store: IdempotencyStore) -> None:
    error = outcome_unknown("lost")
    await store.complete("k", "fp", error, ttl_seconds=60)
    record = await store.get("k")
    assert record is not None
    assert record.outcome == error


async def test_store_release_forgets_only_pending_claims(store: IdempotencyStore) -> None:
    await store.claim("pending", "fp", lease_seconds=30, ttl_seconds=60)
    await store.release("pending")
    assert await store.get("pending") is None
    await store.complete("done", "fp", SendResult("r", "m"), ttl_seconds=60)
    await store.release("done")
    assert await store.get("done") is not None


async def test_store_a_released_claim_can_be_claimed_again(store: IdempotencyStore) -> None:
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60) is None
    await store.release("k")
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60) is None
    again = await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60)
    assert again is not None
    assert again.outcome is None


async def test_store_expired_records_count_as_absent(store: IdempotencyStore) -> None:
    await store.complete("k", "fp", SendResult("r", "m"), ttl_seconds=0)
    assert await store.get("k") is None
    assert await store.claim("k", "other", lease_seconds=30, ttl_seconds=60) is None


async def test_store_an_expired_claim_can_be_taken_over(store: IdempotencyStore) -> None:
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=0) is None
    assert await store.claim("k", "fp2", lease_seconds=30, ttl_seconds=60) is None
    record = await store.get("k")
    assert record is not None
    assert record.fingerprint == "fp2"


async def test_store_any_request_id_is_a_valid_key(store: IdempotencyStore) -> None:
    request_ids = ("plain-ID_1", "with.dot", "sp ace", "ünïcode", "a/b", "=x")
    for request_id in request_ids:
        assert await store.claim(request_id, "fp", lease_seconds=30, ttl_seconds=60) is None
    for request_id in request_ids:
        record = await store.get(request_id)
        assert record is not None, request_id


async def test_sqlite_store_uses_wal_and_its_own_table(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "igbutton.db"
    sqlite = SqliteIdempotencyStore(path)
    sqlite.open()
    await sqlite.complete("k", "fp", SendResult("r", "m"), ttl_seconds=60)
    await sqlite.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert tables == {"idempotency"}


async def test_store_a_dead_owners_claim_never_written_is_taken_over(
    engine_settings: SettingsFactory,
) -> None:
    """A claim whose process is gone (here: closed, as after a crash and restart) and whose
    request was never marked written is claimed again at once; one marked written is
    reported abandoned (the caller answers SEND_OUTCOME_UNKNOWN without waiting)."""
    first = await open_storage(engine_settings())
    try:
        assert (
            await first.idempotency.claim("held", "fp", lease_seconds=300, ttl_seconds=600) is None
        )
        assert (
            await first.idempotency.claim("sent", "fp", lease_seconds=300, ttl_seconds=600) is None
        )
        await first.idempotency.mark_written("sent")
        # Claimed as written in one step (its send had its rate-limit slot at once).
        assert (
            await first.idempotency.claim(
                "at-once", "fp", lease_seconds=300, ttl_seconds=600, written=True
            )
            is None
        )
    finally:
        await first.close()
    second = await open_storage(engine_settings())
    try:
        assert (
            await second.idempotency.claim("held", "fp", lease_seconds=300, ttl_seconds=600) is None
        )
        for key in ("sent", "at-once"):
            sent = await second.idempotency.claim(key, "fp", lease_seconds=300, ttl_seconds=600)
            assert sent is not None, key
            assert (sent.outcome, sent.written, sent.abandoned) == (None, True, True), key
        own = await second.idempotency.get("held")
        assert own is not None
        assert (own.written, own.abandoned) == (False, False)
    finally:
        await second.close()


async def test_store_a_claim_made_written_needs_no_mark(store: IdempotencyStore) -> None:
    assert await store.claim("k", "fp", lease_seconds=30, ttl_seconds=60, written=True) is None
    record = await store.get("k")
    assert record is not None
    assert (record.outcome, record.written, record.abandoned) == (None, True, False)
    await store.release("k")  # its send failed before writing: the claim goes
    assert await store.get("k") is None


async def test_concurrent_idempotent_sends_share_commits(make_settings: SettingsFactory) -> None:
    """N concurrent sends with request_ids commit fewer than N SQLite transactions (each one
    fsync): every claim is one durable write (the slot was free, so no mark_written), and
    concurrent claims and outcomes share the writer's transactions."""
    sends = 50
    async with starting_apps(make_settings) as start:
        app = await start()
        assert app.send is not None
        store = app.send.store
        assert isinstance(store, SqliteIdempotencyStore)
        async with stub_for(app) as stub:
            await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)  # warm
            await app.send.sends.flush()
            before, jobs = store.commits, store.jobs
            replies = await asyncio.gather(
                *(
                    stub.SendButtonTemplate(
                        send_request(request_id=f"00000000-0000-4000-8000-{n:012d}"), timeout=30
                    )
                    for n in range(sends)
                )
            )
            await app.send.sends.flush()  # outcomes are stored after the answers
            committed, writes = store.commits - before, store.jobs - jobs
    assert len({r.message_id for r in replies}) == sends
    assert writes == 2 * sends  # a claim (already marked written) and an outcome per send
    assert 0 < committed < sends


async def test_a_repeat_does_not_use_up_a_rate_limit_slot(start_app: AppFactory) -> None:
    """A repeat takes the free slot before its claim finds the record, and gives it back:
    the next new send still goes at once (one slot per 2 s, burst 2)."""
    app = await start_app(rate_limit={"per_account_per_second": 0.5, "burst": 2})
    assert app.sandbox is not None
    async with stub_for(app) as stub:
        first = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert app.send is not None
        await app.send.sends.flush()  # the repeat reads the stored record, not memory
        again = await stub.SendButtonTemplate(send_request(request_id=RID), timeout=10)
        assert again == first
        # A 1 s deadline cannot hold a 2 s wait: this passes only if the repeat left the
        # burst's second slot free.
        other = "123e4567-e89b-12d3-a456-426614174001"
        await stub.SendButtonTemplate(send_request(request_id=other), timeout=1)
    assert len(app.sandbox.received) == 2
