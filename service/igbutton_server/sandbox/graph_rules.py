"""What Meta's Graph API accepts in a button-template send, and how it says no.

The sandbox answers one error at a time, as Meta does, with Meta's error body shape
(instagram-platform.md): ``{"error": {"message", "type", "code", "error_subcode",
"error_user_title", "error_user_msg", "fbtrace_id", "is_transient"?}}``.
"""

from __future__ import annotations

import base64
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_TEXT_CHARS = 640
MAX_BUTTONS = 3
MAX_TITLE_CHARS = 20
MAX_PAYLOAD_CHARS = 1000
MAX_URL_CHARS = 8192
MIN_API_MAJOR_VERSION = 21
"""Meta retired v20.0 on 2026-09-24; v21.0 and newer are current."""

ERROR_TYPE = "IGApiException"
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")
_WHITESPACE = re.compile(r"\s")

# The keys Meta documents for each button type on Instagram. Anything else (Messenger's
# webview_height_ratio, messenger_extensions, ...) is rejected so a client bug shows up here.
_BUTTON_KEYS = {
    "web_url": frozenset({"type", "url", "title"}),
    "postback": frozenset({"type", "payload", "title"}),
}
_TOP_LEVEL_KEYS = frozenset({"recipient", "message", "messaging_type", "tag"})
_MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
_TAGS = frozenset({"HUMAN_AGENT"})

DEFAULT_MESSAGES: dict[int, str] = {
    1: "An unknown error occurred",
    2: "An unexpected error has occurred. Please retry your request later.",
    4: "Application request limit reached",
    10: "This message is sent outside of allowed window.",
    17: "User request limit reached",
    32: "Page request limit reached",
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    200: "Permissions error",
    341: "Application limit reached",
    368: "The action attempted has been deemed abusive or is otherwise disallowed",
    551: "This person isn't available right now.",
    613: "Calls to this api have exceeded the rate limit.",
    1200: "Temporary send message failure. Please try again later",
    80002: "There have been too many calls to this Instagram account.",
}


@dataclass(frozen=True)
class GraphError:
    """One Meta-shaped error answer."""

    code: int
    message: str
    http_status: int = 400
    subcode: int | None = None
    user_title: str = ""
    user_msg: str = ""
    is_transient: bool | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fbtrace_id: str = ""
    """Empty: a fresh one for each answer."""
    type: str = ERROR_TYPE

    def body(self) -> dict[str, Any]:
        """The JSON body Meta would answer, with a fresh ``fbtrace_id`` unless one is set.

        ``error_subcode`` is present only when there is one, as with Meta.
        """
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["error_user_title"] = self.user_title
        error["error_user_msg"] = self.user_msg
        error["fbtrace_id"] = self.fbtrace_id or new_fbtrace_id()
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        return {"error": error}


def graph_error(code: int, message: str = "", **kwargs: Any) -> GraphError:
    """A GraphError whose message carries Meta's ``(#code)`` prefix."""
    text = message or DEFAULT_MESSAGES.get(code, "Sandbox error")
    return GraphError(code=code, message=f"(#{code}) {text}", **kwargs)


def invalid(message: str) -> GraphError:
    """Code 100: an invalid or missing parameter."""
    return graph_error(100, message)


def bad_token(message: str = "") -> GraphError:
    """Code 190: the access token is missing, unparseable or not this account's."""
    return GraphError(
        code=190,
        message=message or DEFAULT_MESSAGES[190],
        user_title="Invalid access token",
    )


def new_fbtrace_id() -> str:
    """A random trace id shaped like Meta's (11 URL-safe characters)."""
    return secrets.token_urlsafe(9)[:11]


def new_message_id(account_id: str) -> str:
    """A random message id shaped like Instagram's (base64 of an ``ig_item`` key)."""
    # Unique, not secret: random's generator costs no system call per send, secrets' does.
    raw = f"ig_item:1:IGMessageData:{account_id}:{random.getrandbits(80)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def check_version(version: str) -> GraphError | None:
    """Reject malformed and retired Graph API versions."""
    match = _VERSION_RE.match(version)
    if match is None:
        return invalid(f"Unknown path components: /{version} is not a Graph API version")
    if int(match.group(1)) < MIN_API_MAJOR_VERSION:
        return invalid(
            f"Graph API version {version} is deprecated and no longer available; "
            f"use v{MIN_API_MAJOR_VERSION}.0 or newer"
        )
    return None


@dataclass(frozen=True)
class AcceptedTemplate:
    """The parts of a valid send the sandbox keeps so a button can be tapped later."""

    recipient_id: str
    text: str
    buttons: tuple[dict[str, str], ...]


def _is_nonempty_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _check_text(name: str, value: object, limit: int) -> GraphError | None:
    if not isinstance(value, str) or value == "":
        return invalid(f"The parameter {name} is required and must be a non-empty string")
    if len(value) > limit:  # code points, not bytes: 640 emoji are fine
        return invalid(f"{name} must be at most {limit} characters (got {len(value)})")
    return None


def _check_url(name: str, value: object) -> GraphError | None:
    if not isinstance(value, str) or value == "":
        return invalid(f"The parameter {name} is required for a web_url button")
    if len(value) > MAX_URL_CHARS:
        return invalid(f"{name} must be at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        return invalid(f"{name} is not a valid URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return invalid(f"{name} must be an absolute http(s) URL with a host")
    if _WHITESPACE.search(value):
        return invalid(f"{name} must not contain whitespace")
    return None


def _check_button(index: int, button: object) -> GraphError | None:
    where = f"message.attachment.payload.buttons[{index}]"
    if not isinstance(button, dict):
        return invalid(f"{where} must be an object")
    kind = button.get("type")
    if kind not in _BUTTON_KEYS:
        return invalid(f"{where}.type must be web_url or postback on Instagram (got {kind!r})")
    if not button.keys() <= _BUTTON_KEYS[kind]:
        unknown = sorted(set(button) - _BUTTON_KEYS[kind])
        return invalid(f"{where} has parameters not supported on Instagram: {', '.join(unknown)}")
    problem = _check_text(f"{where}.title", button.get("title"), MAX_TITLE_CHARS)
    if problem is not None:
        return problem
    if kind == "web_url":
        return _check_url(f"{where}.url", button.get("url"))
    return _check_text(f"{where}.payload", button.get("payload"), MAX_PAYLOAD_CHARS)


def _check_envelope(body: dict[str, Any]) -> GraphError | None:
    if not body.keys() <= _TOP_LEVEL_KEYS:
        unknown = sorted(set(body) - _TOP_LEVEL_KEYS)
        return invalid(f"Unsupported parameters: {', '.join(unknown)}")
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not _is_nonempty_str(recipient.get("id")):
        return invalid("The parameter recipient.id is required")
    if "messaging_type" in body and body["messaging_type"] not in _MESSAGING_TYPES:
        return invalid(f"messaging_type must be one of {', '.join(sorted(_MESSAGING_TYPES))}")
    if "tag" in body and body["tag"] not in _TAGS:
        return invalid("tag must be HUMAN_AGENT on Instagram")
    return None


def _template_payload(body: dict[str, Any]) -> dict[str, Any] | GraphError:
    message = body.get("message")
    if not isinstance(message, dict):
        return invalid("The parameter message is required")
    if set(message) != {"attachment"}:
        return invalid("message must hold exactly one attachment for a button template")
    attachment = message["attachment"]
    if not isinstance(attachment, dict) or attachment.get("type") != "template":
        return invalid("message.attachment.type must be template")
    if set(attachment) != {"type", "payload"}:
        return invalid("message.attachment must have exactly type and payload")
    payload = attachment["payload"]
    if not isinstance(payload, dict) or payload.get("template_type") != "button":
        return invalid("message.attachment.payload.template_type must be button")
    unknown = sorted(set(payload) - {"template_type", "text", "buttons"})
    if unknown:
        return invalid(f"Unsupported template parameters: {', '.join(unknown)}")
    return payload


def validate_send(body: object) -> AcceptedTemplate | GraphError:
    """Check a parsed send body as Meta would; the first violation wins."""
    if not isinstance(body, dict):
        return invalid("The request body must be a JSON object")
    problem = _check_envelope(body)
    if problem is not None:
        return problem
    payload = _template_payload(body)
    if isinstance(payload, GraphError):
        return payload
    problem = _check_text("message.attachment.payload.text", payload.get("text"), MAX_TEXT_CHARS)
    if problem is not None:
        return problem
    buttons = payload.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        count = len(buttons) if isinstance(buttons, list) else 0
        return invalid(
            f"message.attachment.payload.buttons must hold 1 to {MAX_BUTTONS} buttons (got {count})"
        )
    for index, button in enumerate(buttons):
        problem = _check_button(index, button)
        if problem is not None:
            return problem
    return AcceptedTemplate(
        recipient_id=body["recipient"]["id"],
        text=payload["text"],
        buttons=tuple(dict(b) for b in buttons),
    )
