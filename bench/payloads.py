"""The messages every benchmark sends: one button template, as protobuf and as Graph JSON.

The gRPC ceiling, igbutton and the HTTP ceiling all carry the same content, so the
comparison measures the path, not the message size.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from igbutton.v1 import button_template_pb2, send_service_pb2

ACCOUNT_ID = "17841400000000000"
ACCESS_TOKEN = "bench-access-token"  # noqa: S105 - a fake token for the local sandbox
RECIPIENT_ID = "1254459154682919"
APP_SECRET = "bench-secret"  # noqa: S105 - the fake app secret bench webhooks are signed with
GRAPH_VERSION = "v25.0"
TEXT = "What do you want to do next?"
URL = "https://www.instagram.com"
PAYLOAD = "postback_payload"


def send_request() -> send_service_pb2.SendButtonTemplateRequest:
    """The SendButtonTemplate request every gRPC caller sends."""
    return send_service_pb2.SendButtonTemplateRequest(
        account_id=ACCOUNT_ID,
        recipient_id=RECIPIENT_ID,
        template=button_template_pb2.ButtonTemplate(
            text=TEXT,
            buttons=[
                button_template_pb2.Button(
                    title="Visit Instagram", url=button_template_pb2.UrlAction(url=URL)
                ),
                button_template_pb2.Button(
                    title="postback button",
                    postback=button_template_pb2.PostbackAction(payload=PAYLOAD),
                ),
            ],
        ),
    )


def send_response() -> send_service_pb2.SendButtonTemplateResponse:
    """What the trivial gRPC servicer answers (the shape of a Graph success)."""
    return send_service_pb2.SendButtonTemplateResponse(
        recipient_id=RECIPIENT_ID, message_id="aWdfZAG1faWQZD_bench_message_id"
    )


def graph_body() -> bytes:
    """The Graph API JSON that igbutton sends for send_request() (the seed's shape)."""
    body = {
        "recipient": {"id": RECIPIENT_ID},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": TEXT,
                    "buttons": [
                        {"type": "web_url", "url": URL, "title": "Visit Instagram"},
                        {"type": "postback", "payload": PAYLOAD, "title": "postback button"},
                    ],
                },
            }
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def graph_path() -> str:
    """The Graph API path of a send from ACCOUNT_ID."""
    return f"/{GRAPH_VERSION}/{ACCOUNT_ID}/messages"


def webhook_body(mids: list[str], payload_prefix: str) -> bytes:
    """A messaging_postbacks delivery of len(mids) taps in one entry.

    Each payload is ``<prefix><time.time()>`` taken now, so a subscriber on the same machine
    can compute the end-to-end latency from the moment of the POST.
    """
    now = time.time()
    now_ms = int(now * 1000)
    payload = f"{payload_prefix}{now:.6f}"
    messaging: list[dict[str, Any]] = [
        {
            "sender": {"id": RECIPIENT_ID},
            "recipient": {"id": ACCOUNT_ID},
            "timestamp": now_ms,
            "postback": {"mid": mid, "title": "postback button", "payload": payload},
        }
        for mid in mids
    ]
    body = {
        "object": "instagram",
        "entry": [{"id": ACCOUNT_ID, "time": now_ms, "messaging": messaging}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    """The X-Hub-Signature-256 header value Meta would send for body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def sent_time(payload: str) -> float | None:
    """The time.time() embedded by webhook_body, or None for a payload not made by it."""
    _, sep, stamp = payload.rpartition("|")
    if not sep:
        return None
    try:
        return float(stamp)
    except ValueError:
        return None
