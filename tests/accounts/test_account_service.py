"""AccountService over a real gRPC server, against the sandbox on loopback: account state,
caller auth, CheckAccount's findings and the webhook self-test, SubscribeAccount, and the
App Dashboard's test delivery reaching a subscriber flagged as a test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from igbutton.v1 import account_service_pb2 as pb
from igbutton.v1 import account_service_pb2_grpc, postback_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.sandbox import Fault, Sandbox
from tests.accounts.conftest import ACCOUNT, SEED_TOKEN, account_settings, eventually
from tests.conftest import SettingsFactory, starting_apps
from tests.postbacks.conftest import Stream
from tests.send.conftest import details, send_request

OTHER = "17841400000000099"
CALLER_TOKEN = "caller-token-of-service-a-0001"
ADMIN_TOKEN = "caller-token-of-service-b-0002"


@pytest.fixture
async def app(engine_settings: SettingsFactory, sandbox: Sandbox) -> AsyncIterator[App]:
    """An App on the test's engine sending to the test's sandbox; no refresh is due."""
    async with starting_apps(engine_settings) as start:
        yield await start(**account_settings(sandbox, refresh_margin_seconds=1))


@pytest.fixture
async def stub(app: App) -> AsyncIterator[account_service_pb2_grpc.AccountServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        yield account_service_pb2_grpc.AccountServiceStub(channel)


def findings(response: pb.CheckAccountResponse) -> dict[str, pb.Finding]:
    return {f.check: f for f in response.findings}


async def test_get_account_reports_username_and_subscription_read_at_start(
    engine_settings: SettingsFactory, sandbox: Sandbox
) -> None:
    sandbox.account_state(ACCOUNT).username = "shop.example"
    async with starting_apps(engine_settings) as start:
        app = await start(**account_settings(sandbox, refresh_margin_seconds=1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            fresh = account_service_pb2_grpc.AccountServiceStub(channel)

            async def named() -> bool:
                got = await fresh.GetAccount(pb.GetAccountRequest(account_id=ACCOUNT))
                return got.account.username == "shop.example"

            await eventually(named)
            account = (await fresh.GetAccount(pb.GetAccountRequest())).account
    assert account.id == ACCOUNT
    assert account.token_status == pb.TOKEN_STATUS_OK
    assert account.HasField("subscription_check_time")
    assert list(account.subscribed_fields) == []  # the sandbox account is not subscribed
    assert not account.HasField("token_expire_time")  # never refreshed: unknown
    assert not account.HasField("rate_limit_hold_expire_time")


async def test_a_190_shows_in_get_account(
    app: App, stub: account_service_pb2_grpc.AccountServiceStub, sandbox: Sandbox
) -> None:
    from igbutton.v1 import send_service_pb2_grpc

    # Meta echoing the token in its message: redacted wherever igbutton repeats it.
    sandbox.add_fault(Fault(kind="graph_error", code=190, message=f"bad token {SEED_TOKEN}"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        sender = send_service_pb2_grpc.SendServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sender.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=10)
    assert "bad token [redacted]" in (caught.value.details() or "")
    assert SEED_TOKEN not in str(caught.value.trailing_metadata())
    account = (await stub.GetAccount(pb.GetAccountRequest(account_id=ACCOUNT))).account
    assert account.token_status == pb.TOKEN_STATUS_REAUTHORIZATION_REQUIRED
    assert SEED_TOKEN not in str(account)
    listed = (await stub.ListAccounts(pb.ListAccountsRequest())).accounts
    assert [a.token_status for a in listed] == [pb.TOKEN_STATUS_REAUTHORIZATION_REQUIRED]
    check = findings(await stub.CheckAccount(pb.CheckAccountRequest(account_id=ACCOUNT)))
    assert check["token"].severity == pb.FINDING_SEVERITY_ERROR
    assert "log in again" in check["token"].action


async def test_get_account_shows_a_throttle_hold_and_usage_headers(
    app: App, stub: account_service_pb2_grpc.AccountServiceStub, sandbox: Sandbox
) -> None:
    from igbutton.v1 import send_service_pb2_grpc

    usage = '{"call_count":95,"total_cputime":10,"total_time":12}'
    # Meta's edge refusing with a 429 and a 5-minute Retry-After. (Not a business-use-case
    # header: tests/test_metrics.py sums that gauge over every series of the process.)
    sandbox.add_fault(
        Fault(
            kind="http_status",
            http_status=429,
            headers={"X-App-Usage": usage, "Retry-After": "300"},
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        sender = send_service_pb2_grpc.SendServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await sender.SendButtonTemplate(send_request(account_id=ACCOUNT), timeout=2)
    account = (await stub.GetAccount(pb.GetAccountRequest(account_id=ACCOUNT))).account
    assert account.HasField("rate_limit_hold_expire_time")
    held_for = account.rate_limit_hold_expire_time.ToMilliseconds() / 1000 - time.time()
    assert 200 < held_for <= 300
    assert "429" in account.rate_limit_hold_reason
    assert account.last_usage.app_usage == usage
    assert account.last_usage.HasField("receive_time")


async def test_check_finds_the_missing_subscription_and_subscribe_fixes_it(
    stub: account_service_pb2_grpc.AccountServiceStub, sandbox: Sandbox
) -> None:
    stored_before = REGISTRY.get_sample_value("igbutton_postbacks_stored_total") or 0.0
    self_tests_before = (
        REGISTRY.get_sample_value("igbutton_webhook_test_deliveries_total", {"kind": "self_test"})
        or 0.0
    )
    before = findings(await stub.CheckAccount(pb.CheckAccountRequest(account_id=ACCOUNT)))
    assert list(before) == [
        "token",
        "refresh",
        "subscription",
        "app_secret",
        "webhook_self_test",
    ]
    assert before["token"].severity == pb.FINDING_SEVERITY_OK
    assert before["subscription"].severity == pb.FINDING_SEVERITY_ERROR
    assert "messaging_postbacks" in before["subscription"].message
    assert "doctor --fix" in before["subscription"].action
    assert before["app_secret"].severity == pb.FINDING_SEVERITY_OK
    assert before["webhook_self_test"].severity == pb.FINDING_SEVERITY_OK, before[
        "webhook_self_test"
    ].message

    subscribed = await stub.SubscribeAccount(pb.SubscribeAccountRequest(account_id=ACCOUNT))
    assert list(subscribed.subscribed_fields) == ["messages", "messaging_postbacks"]
    assert sandbox.account_state(ACCOUNT).subscribed_fields == ["messages", "messaging_postbacks"]

    after = await stub.CheckAccount(pb.CheckAccountRequest(account_id=ACCOUNT))
    assert all(f.severity == pb.FINDING_SEVERITY_OK for f in after.findings), after
    assert list(after.account.subscribed_fields) == ["messages", "messaging_postbacks"]
    # Two self-tests went through the webhook, recognised, and nothing was stored.
    assert (
        REGISTRY.get_sample_value("igbutton_webhook_test_deliveries_total", {"kind": "self_test"})
        == self_tests_before + 2
    )
    assert (REGISTRY.get_sample_value("igbutton_postbacks_stored_total") or 0.0) == stored_before


async def test_subscribe_refuses_a_malformed_field(
    stub: account_service_pb2_grpc.AccountServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubscribeAccount(
            pb.SubscribeAccountRequest(account_id=ACCOUNT, fields=["messages", "Bad Field"])
        )
    error = details(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert error.violations[0][0] == "fields[1]"


async def test_unknown_account_is_invalid_argument(
    stub: account_service_pb2_grpc.AccountServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAccount(pb.GetAccountRequest(account_id="999"))
    assert details(caught.value).reason == "UNKNOWN_ACCOUNT"


async def test_a_caller_sees_only_its_accounts(
    make_settings: SettingsFactory, sandbox: Sandbox
) -> None:
    overrides: dict[str, Any] = account_settings(sandbox, refresh_margin_seconds=1)
    sandbox.tokens.add(OTHER, "IGAAother-account-token-000000000003")
    overrides["accounts"] = [
        *overrides["accounts"],
        {"id": OTHER, "access_token": "IGAAother-account-token-000000000003"},
    ]
    overrides["callers"] = [
        {"name": "service-a", "token": CALLER_TOKEN, "accounts": [ACCOUNT]},
        {"name": "service-b", "token": ADMIN_TOKEN, "accounts": ["*"]},
    ]
    async with starting_apps(make_settings) as start:
        app = await start(**overrides)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            stub = account_service_pb2_grpc.AccountServiceStub(channel)
            a = [("authorization", f"Bearer {CALLER_TOKEN}")]
            b = [("authorization", f"Bearer {ADMIN_TOKEN}")]
            listed = await stub.ListAccounts(pb.ListAccountsRequest(), metadata=a)
            assert [x.id for x in listed.accounts] == [ACCOUNT]
            listed = await stub.ListAccounts(pb.ListAccountsRequest(), metadata=b)
            assert [x.id for x in listed.accounts] == [ACCOUNT, OTHER]
            for call in (stub.GetAccount, stub.CheckAccount, stub.SubscribeAccount):
                request: Any = {
                    stub.GetAccount: pb.GetAccountRequest,
                    stub.CheckAccount: pb.CheckAccountRequest,
                    stub.SubscribeAccount: pb.SubscribeAccountRequest,
                }[call](account_id=OTHER)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(request, metadata=a)
                error = details(caught.value)
                assert (error.code, error.reason) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "ACCOUNT_NOT_ALLOWED",
                )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListAccounts(pb.ListAccountsRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sandbox.account_state(OTHER).subscribed_fields == []  # never subscribed


async def test_a_dashboard_test_delivery_reaches_a_subscriber_flagged_as_a_test(
    app: App, sandbox: Sandbox
) -> None:
    sandbox.set_webhook(
        f"http://127.0.0.1:{app.ports.webhook}/webhook", app.settings.webhook.secrets()[0]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        postbacks = postback_service_pb2_grpc.PostbackServiceStub(channel)
        stream = await Stream.open(postbacks)
        try:
            assert await sandbox.send_test_delivery(payload="PRESSED_TEST") == 200
            got = (await stream.next()).postback
            assert got.test is True
            assert got.payload == "PRESSED_TEST"
            assert got.account_id == "23245"  # the made-up recipient, kept
            assert got.mid.startswith("random_mid#test-")
            # Each press is its own postback (Meta's sample mid is the same every time).
            await sandbox.send_test_delivery(payload="SECOND_PRESS")
            second = (await stream.next()).postback
            assert second.test is True
            assert second.payload == "SECOND_PRESS"
        finally:
            await stream.cancel()
