"""The per-account token bucket: through the server, and its arithmetic on a fake clock."""

from __future__ import annotations

import grpc
import pytest

from igbutton_server.errors import RateLimited
from igbutton_server.send.ratelimit import AccountRateLimiter
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
