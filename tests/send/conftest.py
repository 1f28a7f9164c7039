"""Fixtures for the send path: a real App (with its sandbox) per test, and call helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from igbutton.v1 import (
    button_template_pb2,
    send_service_pb2,
    send_service_pb2_grpc,
)
from igbutton_server.app import SANDBOX_ACCOUNT_ID, App
from igbutton_server.sandbox import Sandbox
from tests.conftest import AppFactory, SettingsFactory, starting_apps

ACCOUNT = SANDBOX_ACCOUNT_ID
RECIPIENT = "1234567890123456"


def seed_template() -> button_template_pb2.ButtonTemplate:
    """The seed's example: one URL button and one postback button."""
    return button_template_pb2.ButtonTemplate(
        text="What do you want to do next?",
        buttons=[
            button_template_pb2.Button(
                title="Visit Instagram",
                url=button_template_pb2.UrlAction(url="https://www.instagram.com"),
            ),
            button_template_pb2.Button(
                title="postback button",
                postback=button_template_pb2.PostbackAction(payload="postback_payload"),
            ),
        ],
    )


SEED_BODY: dict[str, Any] = {
    "recipient": {"id": RECIPIENT},
    "message": {
        "attachment": {
            "type": "template",
            "payload": {
                "template_type": "button",
                "text": "What do you want to do next?",
                "buttons": [
                    {
                        "type": "web_url",
                        "url": "https://www.instagram.com",
                        "title": "Visit Instagram",
                    },
                    {"type": "postback", "payload": "postback_payload", "title": "postback button"},
                ],
            },
        }
    },
}


def send_request(**fields: Any) -> send_service_pb2.SendButtonTemplateRequest:
    """The seed's send, with fields overridden."""
    base: dict[str, Any] = {"recipient_id": RECIPIENT, "template": seed_template()}
    base.update(fields)
    return send_service_pb2.SendButtonTemplateRequest(**base)


@dataclass
class Details:
    """The AIP-193 details of a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay: float | None


def details(error: grpc.aio.AioRpcError) -> Details:
    """Unpack ErrorInfo, BadRequest and RetryInfo from a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry: float | None = None
    if raw is not None:
        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                detail.Unpack(bad)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                unpacked = error_details_pb2.RetryInfo()
                detail.Unpack(unpacked)
                retry = unpacked.retry_delay.seconds + unpacked.retry_delay.nanos / 1e9
    if info.reason:
        assert info.domain == "igbutton"
    return Details(
        code=error.code(),
        message=error.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        violations=[(v.field, v.description) for v in bad.field_violations],
        retry_delay=retry,
    )


@pytest.fixture
async def start_app(make_settings: SettingsFactory) -> AsyncIterator[AppFactory]:
    """Start Apps with setting overrides; every one is stopped at the end of the test."""
    async with starting_apps(make_settings) as start:
        yield start


@pytest.fixture
def sandbox(app: App) -> Sandbox:
    """The default App's sandbox."""
    assert app.sandbox is not None
    return app.sandbox


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> send_service_pb2_grpc.SendServiceStub:
    """A SendService stub on the default App."""
    return send_service_pb2_grpc.SendServiceStub(channel)


@contextlib.asynccontextmanager
async def stub_for(app: App) -> AsyncIterator[send_service_pb2_grpc.SendServiceStub]:
    """A SendService stub on an insecure channel to the App."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        yield send_service_pb2_grpc.SendServiceStub(channel)
