"""The per-account token bucket: through the server, its arithmetic on a fake clock, and
the bucket and holds that replicas share through NATS."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from igbutton_server.errors import RateLimited
from igbutton_server.send.ratelimit import AccountRateLimiter, SharedRateLimiter
from igbutton_server.storage.nats.ratelimit import NatsRateLedger
from tests.conftest import SettingsFactory, unique_nats_storage
from tests.nats_servers import NatsServer
from tests.send.conftest import AppFactory, details, send_request, stub_for

SLOW_LIMIT = {"per_account_per_second": 5, "burst": 1}


async def test_second_call_with_short_deadline_is_rate_limited(start_app: AppFactory) -> None:
    # One send per 2 s: a 1 s deadline cannot fit the wait, and leaves the server ample
    # time to say so even on a loaded machine.
    app = await start_app(rate_limit={"per_account_per_second": 0.5, "burst": 1})
    assert app.sandbox is not None
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendButtonTemplate(send_request(), timeout=1)
    got = details(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert got.retry_delay is not None
    assert 0 < got.retry_delay <= 2
    assert len(app.sandbox.received) == 1


async def test_second_call_with_longer_deadline_waits_and_passes(start_app: AppFactory) -> None:
    app = await start_app(rate_limit=SLOW_LIMIT)
    assert app.sandbox is not None
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(), timeout=10)
        await stub.SendButtonTemplate(send_request(), timeout=5)
    first, second = app.sandbox.received
    assert second.received_at - first.received_at >= 0.15  # 1/5 s apart, less clock slack


async def test_accounts_have_separate_buckets(start_app: AppFactory) -> None:
    app = await start_app(
        rate_limit=SLOW_LIMIT,
        accounts=[
            {"id": "111", "access_token": "token-of-account-111"},
            {"id": "222", "access_token": "token-of-account-222"},
        ],
    )
    async with stub_for(app) as stub:
        await stub.SendButtonTemplate(send_request(account_id="111"), timeout=10)
        await stub.SendButtonTemplate(send_request(account_id="222"), timeout=0.1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_per_interval() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(10, burst=3, clock=clock)
    waits = [limiter.reserve("a", deadline=clock.now + 10) for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2])


def test_wait_beyond_the_deadline_is_refused_and_takes_nothing() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(2, burst=1, clock=clock)
    assert limiter.reserve("a", deadline=clock.now) == 0
    with pytest.raises(RateLimited) as caught:
        limiter.reserve("a", deadline=clock.now + 0.1)
    assert caught.value.retry_after == pytest.approx(0.5)
    # The refused caller took no slot: the next one still waits only 0.5 s.
    assert limiter.reserve("a", deadline=clock.now + 1) == pytest.approx(0.5)


def test_tokens_refill_over_time() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(10, burst=2, clock=clock)
    limiter.reserve("a", clock.now)
    limiter.reserve("a", clock.now)
    clock.now += 0.2  # two tokens back
    assert limiter.reserve("a", clock.now) == 0
    assert limiter.reserve("a", clock.now) == 0


def test_hold_stops_every_caller_of_the_account() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(100, burst=100, clock=clock)
    limiter.hold("a", 60)
    with pytest.raises(RateLimited) as caught:
        limiter.reserve("a", clock.now + 5)
    assert caught.value.retry_after == pytest.approx(60)
    assert "throttled by Meta" in caught.value.message
    assert limiter.reserve("b", clock.now) == 0  # other accounts are not held
    assert limiter.held_for("a") == pytest.approx(60)
    clock.now += 60
    assert limiter.reserve("a", clock.now) == 0
    assert limiter.held_for("a") == 0


def test_per_account_rate_overrides_the_default() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(100, burst=1, rates={"slow": 1}, clock=clock)
    limiter.reserve("slow", clock.now)
    assert limiter.reserve("slow", clock.now + 5) == pytest.approx(1.0)
    limiter.reserve("fast", clock.now)
    assert limiter.reserve("fast", clock.now + 5) == pytest.approx(0.01)


def test_take_now_takes_only_a_free_slot_and_give_back_returns_it() -> None:
    clock = FakeClock()
    limiter = AccountRateLimiter(10, burst=2, clock=clock)
    assert limiter.take_now("a")
    assert limiter.take_now("a")
    assert not limiter.take_now("a")  # the next slot is 0.1 s away: nothing is taken
    assert limiter.reserve("a", clock.now + 1) == pytest.approx(0.1)
    limiter.give_back("a")  # the reserved one is the next again
    assert limiter.reserve("a", clock.now + 1) == pytest.approx(0.1)
    clock.now += 1
    limiter.hold("a", 5)
    assert not limiter.take_now("a")


# The shared limiter (NATS backend): real ledgers on the session's nats-server, one per
# "replica", on one fake wall clock.


@pytest.fixture
async def ledgers(
    make_settings: SettingsFactory, nats_server: NatsServer
) -> AsyncIterator[Callable[[], Awaitable[NatsRateLedger]]]:
    """Open ledgers on a bucket of this test's own; closed and the bucket removed after."""
    bucket = f"test_ratelimit_{uuid.uuid4().hex[:12]}"
    settings = make_settings(
        storage=unique_nats_storage([nats_server.url]), rate_limit={"nats_bucket": bucket}
    )
    opened: list[NatsRateLedger] = []

    async def open_one() -> NatsRateLedger:
        ledger = await NatsRateLedger.open(settings)
        opened.append(ledger)
        return ledger

    try:
        yield open_one
    finally:
        for ledger in opened:
            await ledger.close()
        client = await nats.connect([nats_server.url])
        try:
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(f"KV_{bucket}")
        finally:
            await client.close()


async def test_replicas_take_slots_from_one_shared_bucket(
    ledgers: Callable[[], Awaitable[NatsRateLedger]],
) -> None:
    clock = FakeClock()
    one = SharedRateLimiter(await ledgers(), 10, burst=1, clock=clock)
    two = SharedRateLimiter(await ledgers(), 10, burst=1, clock=clock)
    assert one.lease_size("a") == 1
    await one.acquire("a", time.monotonic() + 5)
    # The slot at "now" went to the first replica: the second one's next is 0.1 s later.
    with pytest.raises(RateLimited) as caught:
        await two.acquire("a", time.monotonic() + 0.05)
    assert caught.value.retry_after == pytest.approx(0.1)
    assert "send rate limit" in caught.value.message
    clock.now += 0.1
    await two.acquire("a", time.monotonic() + 5)
    with pytest.raises(RateLimited):
        await one.acquire("a", time.monotonic() + 0.05)
    await two.acquire("b", time.monotonic() + 5)  # another account, another bucket


async def test_a_lease_takes_a_tenth_of_the_rate_and_others_come_after_it(
    ledgers: Callable[[], Awaitable[NatsRateLedger]],
) -> None:
    clock = FakeClock()
    one = SharedRateLimiter(await ledgers(), 100, burst=1, clock=clock)
    two = SharedRateLimiter(await ledgers(), 100, burst=1, clock=clock)
    assert one.lease_size("a") == 10
    await one.acquire("a", time.monotonic() + 5)  # leases ten slots, 0.01 s apart
    with pytest.raises(RateLimited) as caught:
        await two.acquire("a", time.monotonic() + 0.05)
    assert caught.value.retry_after == pytest.approx(0.1)


async def test_a_hold_reaches_every_replica(
    ledgers: Callable[[], Awaitable[NatsRateLedger]],
) -> None:
    clock = FakeClock()
    one = SharedRateLimiter(await ledgers(), 100, burst=100, clock=clock)
    two = SharedRateLimiter(await ledgers(), 100, burst=100, clock=clock)
    await two.acquire("a", time.monotonic() + 5)  # holds leased tokens
    one.hold("a", 60)
    deadline = time.monotonic() + 10
    while two.held_for("a") == 0:  # the watch delivers it; bounded polling
        assert time.monotonic() < deadline, "the hold never reached the other replica"
        await asyncio.sleep(0.01)
    with pytest.raises(RateLimited) as caught:
        await two.acquire("a", time.monotonic() + 5)
    assert "throttled by Meta" in caught.value.message
    assert caught.value.retry_after == pytest.approx(60)
    # A replica started later is held too (the hold is stored with the bucket).
    late = SharedRateLimiter(await ledgers(), 100, burst=100, clock=clock)
    with pytest.raises(RateLimited) as caught:
        await late.acquire("a", time.monotonic() + 5)
    assert "throttled by Meta" in caught.value.message
    await two.acquire("b", time.monotonic() + 5)  # other accounts are not held
    clock.now += 60
    await two.acquire("a", time.monotonic() + 5)
    await one.close()


async def test_take_now_uses_leased_tokens_without_a_round_trip(
    ledgers: Callable[[], Awaitable[NatsRateLedger]],
) -> None:
    clock = FakeClock()
    limiter = SharedRateLimiter(await ledgers(), 100, burst=10, clock=clock)
    assert not limiter.take_now("a")  # nothing leased yet: no round trip from take_now
    await limiter.acquire("a", time.monotonic() + 5)  # leases ten, the burst: all due now
    taken = [limiter.take_now("a") for _ in range(10)]
    assert taken == [True] * 9 + [False]
    limiter.give_back("a")
    assert limiter.take_now("a")
    assert not limiter.take_now("a")
