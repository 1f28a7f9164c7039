"""TLS, mutual TLS, caller tokens, and no token ever in a log or an error."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from igbutton.v1 import send_service_pb2, send_service_pb2_grpc
from igbutton_server.app import App
from igbutton_server.logs import JsonFormatter
from igbutton_server.sandbox import Fault
from tests.send.conftest import ACCOUNT, RECIPIENT, AppFactory, details, send_request, stub_for
from tests.send.pki import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return make_pki(folder)


def _secure_channel(app: App, pki: Pki, *, client_cert: bool) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{app.ports.grpc}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


async def test_tls(start_app: AppFactory, pki: Pki) -> None:
    app = await start_app(
        grpc={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}}
    )
    async with _secure_channel(app, pki, client_cert=False) as channel:
        reply = await send_service_pb2_grpc.SendServiceStub(channel).SendButtonTemplate(
            send_request(), timeout=10
        )
    assert reply.message_id
    async with stub_for(app) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await plaintext.SendButtonTemplate(send_request(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls(start_app: AppFactory, pki: Pki) -> None:
    app = await start_app(
        grpc={
            "tls": {
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
                "client_ca_file": str(pki.ca_cert),
            }
        }
    )
    async with _secure_channel(app, pki, client_cert=True) as channel:
        reply = await send_service_pb2_grpc.SendServiceStub(channel).SendButtonTemplate(
            send_request(), timeout=10
        )
    assert reply.message_id
    async with _secure_channel(app, pki, client_cert=False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send_service_pb2_grpc.SendServiceStub(channel).SendButtonTemplate(
                send_request(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app.sandbox is not None
    assert len(app.sandbox.received) == 1


BILLING_TOKEN = "billing-caller-token-5f3a9c"
OTHER_TOKEN = "other-caller-token-77e1d0b"
CALLERS = [
    {"name": "billing", "token": BILLING_TOKEN, "accounts": [ACCOUNT]},
    {"name": "other", "token": OTHER_TOKEN, "accounts": ["17840000000000099"]},
]


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_caller_tokens(start_app: AppFactory) -> None:
    app = await start_app(callers=CALLERS)
    async with stub_for(app) as stub:
        reply = await stub.SendButtonTemplate(
            send_request(), metadata=_bearer(BILLING_TOKEN), timeout=10
        )
        assert reply.message_id

        for metadata in [
            (),
            _bearer("not-a-configured-token-at-all"),
            (("authorization", BILLING_TOKEN),),
            (("authorization", f"Basic {BILLING_TOKEN}"),),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendButtonTemplate(send_request(), metadata=metadata, timeout=10)
            got = details(caught.value)
            assert (got.code, got.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CALLER_UNAUTHENTICATED",
            )

        # The default account, then the account by name: not this caller's.
        for request in (send_request(), send_request(account_id=ACCOUNT)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendButtonTemplate(request, metadata=_bearer(OTHER_TOKEN), timeout=10)
            got = details(caught.value)
            assert (got.code, got.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "ACCOUNT_NOT_ALLOWED",
            )

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ValidateButtonTemplate(
                send_service_pb2.ValidateButtonTemplateRequest(
                    recipient_id=RECIPIENT, template=send_request().template
                ),
                metadata=_bearer(OTHER_TOKEN),
                timeout=10,
            )
        assert details(caught.value).reason == "ACCOUNT_NOT_ALLOWED"

    assert app.sandbox is not None
    assert len(app.sandbox.received) == 1


async def test_health_stays_open_with_caller_tokens(start_app: AppFactory) -> None:
    app = await start_app(callers=CALLERS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="igbutton.v1.SendService"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


ACCESS_TOKEN = "IGAAT-distinctive-access-token-8d6f1c2e"


async def test_no_token_in_logs_or_errors(
    start_app: AppFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for token_in in ("header", "query"):
        app = await start_app(
            accounts=[{"id": ACCOUNT, "access_token": ACCESS_TOKEN}],
            callers=CALLERS,
            graph={
                "token_in": token_in,
                "backoff_initial_seconds": 0.01,
                "max_attempts": 2,
            },
            # Each its own store: the 190 below marks the account in it (reauthorization
            # required), which would stop the next App's sends before they reach Meta.
            storage={"sqlite_path": str(tmp_path / f"{token_in}.db")},
        )
        assert app.sandbox is not None
        app.sandbox.add_fault(Fault(kind="graph_error", code=2, is_transient=True))
        app.sandbox.add_fault(Fault(kind="drop"))
        app.sandbox.add_fault(Fault(kind="http_status", http_status=502))
        app.sandbox.add_fault(Fault(kind="graph_error", code=190, message=f"bad {ACCESS_TOKEN}"))
        calls = [
            (send_request(), _bearer(BILLING_TOKEN)),  # 2, then the retry dropped
            (send_request(), _bearer(BILLING_TOKEN)),  # 502
            (send_request(), _bearer(BILLING_TOKEN)),  # 190, token in Meta's message
            (send_request(), _bearer(BILLING_TOKEN)),  # reauthorization required, not sent
            (send_request(), _bearer(OTHER_TOKEN)),  # permission denied
            (send_request(recipient_id=""), _bearer(BILLING_TOKEN)),  # invalid
            (send_request(), _bearer(BILLING_TOKEN + "x")),  # unauthenticated
            (send_request(), ()),
        ]
        async with stub_for(app) as stub:
            for request, metadata in calls:
                try:
                    reply = await stub.SendButtonTemplate(request, metadata=metadata, timeout=10)
                    seen.append(str(reply))
                except grpc.aio.AioRpcError as error:
                    seen.append(repr(error))
                    seen.append(str(error.trailing_metadata()))
                    seen.append(str(details(error)))
        assert any(r.token_ok for r in app.sandbox.received)  # the token did reach "Meta"
        await app.stop()

    formatter = JsonFormatter()
    for record in caplog.records:
        seen.append(record.getMessage())
        seen.append(json.dumps(vars(record), default=str))
        seen.append(formatter.format(record))
    text = "\n".join(seen)
    assert "SEND_OUTCOME_UNKNOWN" in text  # the run did hit the error paths
    assert "ACCESS_TOKEN_INVALID" in text
    assert "REAUTHORIZATION_REQUIRED" in text
    assert "bad [redacted]" in text  # Meta echoing the token is redacted
    for secret in (ACCESS_TOKEN, BILLING_TOKEN, OTHER_TOKEN):
        assert secret not in text


def _database_bytes(folder: Path) -> bytes:
    """The SQLite store's files (database and write-ahead log), raw."""
    return b"".join(path.read_bytes() for path in sorted(folder.glob("igbutton.db*")))


async def test_graph_error_fields_are_redacted_and_bounded_for_the_caller_and_the_store(
    start_app: AppFactory, tmp_path: Path
) -> None:
    app = await start_app(accounts=[{"id": ACCOUNT, "access_token": ACCESS_TOKEN}])
    assert app.sandbox is not None
    # Meta echoing the token in every field it sends, with a 200 KB trace id.
    app.sandbox.add_fault(
        Fault(
            kind="graph_error",
            code=100,
            message=f"bad token {ACCESS_TOKEN}",
            fbtrace_id=f"A{ACCESS_TOKEN}" + "x" * 200_000,
            error_type=f"OAuthException ({ACCESS_TOKEN})",
        )
    )
    request = send_request(request_id="5f0c1a1e-redacted-and-bounded")
    seen = []
    async with stub_for(app) as stub:
        for _ in range(2):  # the second is the stored outcome, replayed
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendButtonTemplate(request, timeout=10)
            seen.append(details(caught.value))
            assert app.send is not None
            await app.send.sends.flush()  # outcomes are stored after the answer
    assert len(app.sandbox.received) == 1
    assert seen[0] == seen[1]
    got = seen[1]
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "GRAPH_INVALID_PARAMETER")
    assert got.metadata["fbtraceId"].startswith("A[redacted]xxx")
    assert got.metadata["fbtraceId"].endswith("…[truncated]")
    assert len(got.metadata["fbtraceId"]) == 256
    assert got.metadata["graphType"] == "OAuthException ([redacted])"
    assert got.message == "Graph API error 100: (#100) bad token [redacted]"
    assert ACCESS_TOKEN not in repr(got)
    stored = _database_bytes(tmp_path)
    assert b"A[redacted]xxx" in stored  # the outcome is in the file...
    assert ACCESS_TOKEN.encode() not in stored  # ...without the token
    assert b"x" * 300 not in stored


async def test_reflection_stays_open_with_caller_tokens(start_app: AppFactory) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    app = await start_app(callers=CALLERS)

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names = {
            service.name
            async for reply in stub.ServerReflectionInfo(one_request(), timeout=5)
            for service in reply.list_services_response.service
        }
    assert "igbutton.v1.SendService" in names
