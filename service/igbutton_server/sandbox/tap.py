"""A person tapping a postback button: the webhook Meta would send, signed and delivered."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

import aiohttp

SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_TIMEOUT_SECONDS = 20.0
"""Messenger documents that Meta waits 20 s for a webhook answer."""


@dataclass
class TapResult:
    """What a tap produced and how the webhook answered.

    ``webhook_status`` is the HTTP status, or 0 when the webhook could not be reached
    (then ``webhook_error`` says why).
    """

    mid: str
    payload: str
    title: str
    webhook_status: int
    webhook_error: str | None = None


def new_postback_mid() -> str:
    """A random postback mid shaped like Instagram's."""
    return "aWdfZAG1faXRlbToxOklHTWVzc2FnZAU" + secrets.token_urlsafe(24)


def postback_body(
    *,
    account_id: str,
    sender_id: str,
    mid: str,
    title: str,
    payload: str,
    now_ms: int | None = None,
) -> bytes:
    """The ``messaging_postbacks`` webhook body, serialised once (it is signed as bytes)."""
    stamp = now_ms if now_ms is not None else int(time.time() * 1000)
    document = {
        "object": "instagram",
        "entry": [
            {
                "id": account_id,
                "time": stamp,
                "messaging": [
                    {
                        "sender": {"id": sender_id},
                        "recipient": {"id": account_id},
                        "timestamp": stamp,
                        "postback": {"mid": mid, "title": title, "payload": payload},
                    }
                ],
            }
        ],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def dashboard_test_body(
    *,
    account_id: str = "0",
    sender_id: str = "12334",
    recipient_id: str = "23245",
    mid: str = "random_mid",
    title: str = "Test button",
    payload: str = "TEST_PAYLOAD",
    now_ms: int | None = None,
) -> bytes:
    """What the App Dashboard's Test button sends for ``messaging_postbacks``: the
    ``entry[].changes[]`` form (``{"field", "value"}``, the value shaped like a ``messaging``
    item, its timestamp a string) with made-up ids (entry id ``0``)."""
    stamp = now_ms if now_ms is not None else int(time.time() * 1000)
    document = {
        "object": "instagram",
        "entry": [
            {
                "id": account_id,
                "time": stamp,
                "changes": [
                    {
                        "field": "messaging_postbacks",
                        "value": {
                            "sender": {"id": sender_id},
                            "recipient": {"id": recipient_id},
                            "timestamp": str(stamp // 1000),
                            "postback": {"mid": mid, "title": title, "payload": payload},
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def sign(body: bytes, app_secret: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends: ``sha256=<hex HMAC of the raw body>``."""
    return "sha256=" + hmac.new(app_secret, body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    """The outcome of one webhook POST."""

    status: int
    error: str | None = None


async def post_webhook(
    session: aiohttp.ClientSession, url: str, body: bytes, signature: str | None
) -> Delivery:
    """POST a webhook body; connection failures are reported as status 0, never raised."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_SECONDS),
        ) as response:
            await response.read()
            return Delivery(status=response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Delivery(status=0, error=f"{type(exc).__name__}: {exc}")
