"""Turns a validated send into the Graph API request, exactly as Meta documents it.

The body follows the seed's example key for key (``recipient``, then ``message``); a
``HUMAN_AGENT`` tag adds ``messaging_type: MESSAGE_TAG`` and ``tag`` after them. Only
``web_url`` and ``postback`` buttons exist on Instagram, and no Messenger-only extras
(``webview_height_ratio`` and friends) are ever sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from igbutton.v1 import button_template_pb2
from igbutton_server.send.validation import ValidSend


@dataclass(frozen=True)
class GraphRequest:
    """One POST to the Graph API, without the access token."""

    account_id: str
    url: str
    body: dict[str, Any]
    body_json: str
    """The exact bytes (UTF-8) that are POSTed."""


def messages_url(base_url: str, api_version: str, account_id: str) -> str:
    """``{base}/{version}/{account}/messages``."""
    return f"{base_url.rstrip('/')}/{api_version}/{account_id}/messages"


def graph_body(send: ValidSend) -> dict[str, Any]:
    """The JSON object Meta expects for this send."""
    body: dict[str, Any] = {
        "recipient": {"id": send.recipient_id},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": send.template.text,
                    "buttons": [_button(b) for b in send.template.buttons],
                },
            }
        },
    }
    if send.human_agent:
        body["messaging_type"] = "MESSAGE_TAG"
        body["tag"] = "HUMAN_AGENT"
    return body


def _button(button: button_template_pb2.Button) -> dict[str, str]:
    if button.WhichOneof("action") == "url":
        return {"type": "web_url", "url": button.url.url, "title": button.title}
    return {"type": "postback", "payload": button.postback.payload, "title": button.title}


def to_graph_request(send: ValidSend, base_url: str, api_version: str) -> GraphRequest:
    """The full Graph request for a validated send."""
    body = graph_body(send)
    return GraphRequest(
        account_id=send.account.id,
        url=messages_url(base_url, api_version, send.account.id),
        body=body,
        # Compact and UTF-8 (not \\u escapes): the smallest faithful encoding of the text.
        body_json=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
    )
