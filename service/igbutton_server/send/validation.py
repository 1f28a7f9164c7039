"""Checks a send request against every documented limit before anything reaches Meta.

All violations of one request are collected and raised together as one
:class:`~service.errors.InvalidRequest`, each at its proto field path
(``template.buttons[2].title``), so a caller fixes everything in one round trip. Only the
first :data:`BUTTONS_MAX` buttons are checked: a request with more has that one violation
for the count, however many buttons it carries (a 2 MB request holds a million empty ones).

A text or title must have a visible character: one that is not :func:`invisible`.
"""

from __future__ import annotations

import string
import unicodedata
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from igbutton.v1 import button_template_pb2, errors_pb2, send_service_pb2
from igbutton_server.config import Account, Settings
from igbutton_server.errors import ApiError, FieldViolation, InvalidRequest

# The limits of proto/igbutton/v1/*.proto, in Unicode code points (a Python str's length).
TEXT_MAX = 640
BUTTONS_MIN = 1
BUTTONS_MAX = 3
TITLE_MAX = 20
PAYLOAD_MAX = 1000
URL_MAX = 2048
RECIPIENT_MAX = 64
REQUEST_ID_MAX = 36

_PRINTABLE_ASCII = frozenset(string.ascii_letters + string.digits + string.punctuation)
_URL_FORBIDDEN = frozenset(' \t\r\n\x0b\x0c\x00"<>\\^`{|}')

# Controls, format characters (zero-width space and joiners, word joiner, BOM, bidi marks,
# soft hyphen), separators (spaces, line and paragraph separators), combining marks (which
# draw nothing without a base letter, variation selectors among them), unassigned and
# surrogate code points.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that fonts draw as blank: the Hangul fillers and the blank braille
# pattern, favourites for "empty" names and messages.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")

SendRequest = (
    send_service_pb2.SendButtonTemplateRequest | send_service_pb2.ValidateButtonTemplateRequest
)


@dataclass(frozen=True)
class ValidSend:
    """A request that passed validation, with its account resolved."""

    account: Account
    recipient_id: str
    template: button_template_pb2.ButtonTemplate
    human_agent: bool
    request_id: str
    """Empty when the caller gave none (no idempotency)."""


# Built once: MessageTag.values() builds a new list on every call.
_KNOWN_TAGS = frozenset(button_template_pb2.MessageTag.values())


def validate_send(request: SendRequest, settings: Settings) -> ValidSend:
    """Return the validated send, or raise InvalidRequest listing every violation."""
    violations: list[FieldViolation] = []
    account = _check_account(request.account_id, settings.accounts, violations)
    _check_recipient(request.recipient_id, violations)
    if not request.HasField("template"):
        violations.append(FieldViolation("template", "required"))
    else:
        _check_template(request.template, violations)
    request_id = ""
    if isinstance(request, send_service_pb2.SendButtonTemplateRequest):
        request_id = request.request_id
        _check_request_id(request_id, violations)
    human_agent = request.tag == button_template_pb2.MESSAGE_TAG_HUMAN_AGENT
    if request.tag not in _KNOWN_TAGS:
        violations.append(FieldViolation("tag", f"unknown message tag {request.tag}"))
    if violations:
        if all(v.field == "account_id" for v in violations):
            raise _unknown_account(violations)
        raise InvalidRequest(violations)
    assert account is not None  # a missing account is a violation above
    return ValidSend(
        account=account,
        recipient_id=request.recipient_id,
        template=request.template,
        human_agent=human_agent,
        request_id=request_id,
    )


def validate_window_request(
    account_id: str, recipient_id: str, settings: Settings
) -> tuple[Account, str]:
    """The account and recipient of a GetMessagingWindow request, checked as a send's."""
    violations: list[FieldViolation] = []
    account = _check_account(account_id, settings.accounts, violations)
    _check_recipient(recipient_id, violations)
    if violations:
        if all(v.field == "account_id" for v in violations):
            raise _unknown_account(violations)
        raise InvalidRequest(violations)
    assert account is not None
    return account, recipient_id


def _unknown_account(violations: list[FieldViolation]) -> ApiError:
    # The request itself is fine; only the account is not one igbutton can send from.
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_UNKNOWN_ACCOUNT,
        f"account_id: {violations[0].description}",
        violations=violations,
    )


def _check_account(
    account_id: str, accounts: Sequence[Account], violations: list[FieldViolation]
) -> Account | None:
    if not account_id:
        if len(accounts) == 1:
            return accounts[0]
        if not accounts:
            violations.append(FieldViolation("account_id", "no Instagram account is configured"))
        else:
            violations.append(
                FieldViolation("account_id", "required: several Instagram accounts are configured")
            )
        return None
    found = next((a for a in accounts if a.id == account_id), None)
    if found is None:
        violations.append(
            FieldViolation("account_id", f"unknown Instagram account {account_id[:64]!r}")
        )
    return found


def _check_recipient(recipient_id: str, violations: list[FieldViolation]) -> None:
    if not recipient_id:
        violations.append(FieldViolation("recipient_id", "required"))
    elif len(recipient_id) > RECIPIENT_MAX:
        violations.append(FieldViolation("recipient_id", f"at most {RECIPIENT_MAX} characters"))
    elif not recipient_id.isprintable() or recipient_id != recipient_id.strip():
        violations.append(
            FieldViolation("recipient_id", "must be an IGSID without spaces or control characters")
        )


def _check_request_id(request_id: str, violations: list[FieldViolation]) -> None:
    if not request_id:
        return
    if len(request_id) > REQUEST_ID_MAX:
        violations.append(
            FieldViolation("request_id", f"at most {REQUEST_ID_MAX} characters (a UUID)")
        )
    elif not set(request_id) <= _PRINTABLE_ASCII:
        violations.append(
            FieldViolation("request_id", "printable ASCII only, without spaces (a UUID)")
        )


def _check_template(
    template: button_template_pb2.ButtonTemplate, violations: list[FieldViolation]
) -> None:
    _check_text(template.text, "template.text", TEXT_MAX, violations)
    count = len(template.buttons)
    if count < BUTTONS_MIN:
        violations.append(FieldViolation("template.buttons", "at least 1 button is required"))
    elif count > BUTTONS_MAX:
        violations.append(
            FieldViolation("template.buttons", f"at most {BUTTONS_MAX} buttons, got {count}")
        )
    # Never more than BUTTONS_MAX: the count's violation says enough about the rest.
    for index, button in enumerate(template.buttons[:BUTTONS_MAX]):
        _check_button(button, f"template.buttons[{index}]", violations)


def _check_button(
    button: button_template_pb2.Button, path: str, violations: list[FieldViolation]
) -> None:
    _check_text(button.title, f"{path}.title", TITLE_MAX, violations)
    action = button.WhichOneof("action")
    if action is None:
        violations.append(FieldViolation(f"{path}.action", "one of url or postback is required"))
    elif action == "url":
        problem = url_problem(button.url.url)
        if problem is not None:
            violations.append(FieldViolation(f"{path}.url.url", problem))
    else:
        payload = button.postback.payload
        if not payload:
            violations.append(FieldViolation(f"{path}.postback.payload", "required"))
        elif len(payload) > PAYLOAD_MAX:
            violations.append(
                FieldViolation(
                    f"{path}.postback.payload",
                    f"at most {PAYLOAD_MAX} characters, got {len(payload)}",
                )
            )


def _check_text(value: str, path: str, limit: int, violations: list[FieldViolation]) -> None:
    if not value:
        violations.append(FieldViolation(path, "required"))
    elif len(value) > limit:
        violations.append(FieldViolation(path, f"at most {limit} characters, got {len(value)}"))
    elif all(invisible(char) for char in value):
        # Meta rejects a blank text or title; invisible characters alone render as nothing.
        violations.append(
            FieldViolation(
                path, "must have a visible character, not only spaces or zero-width characters"
            )
        )


def invisible(char: str) -> bool:
    """Whether the character shows nothing on its own.

    Unicode categories Cc, Cf, Cn, Cs, Z* and Mn/Me (controls, format characters such as
    U+200B and U+FEFF, unassigned code points, separators, combining marks), and the blank
    glyphs U+115F, U+1160, U+3164, U+FFA0 (Hangul fillers) and U+2800 (blank braille).
    """
    return char in _BLANK_GLYPHS or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def url_problem(url: str) -> str | None:
    """Why this is not an acceptable button URL, or None if it is."""
    if not url:
        return "required"
    if len(url) > URL_MAX:
        return f"at most {URL_MAX} characters, got {len(url)}"
    if not url.isprintable() or not _URL_FORBIDDEN.isdisjoint(url):
        return "must not contain spaces, control characters or unescaped delimiters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "must be a valid absolute http or https URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an absolute http or https URL"
    if not parts.hostname:
        return "must have a host"
    if "@" in parts.netloc:
        # https://good.com@evil.com opens evil.com: user information only serves to mislead.
        return "must not contain user information (user:password@ before the host)"
    return None


def resolve_account(account_id: str, accounts: Sequence[Account]) -> Account:
    """The configured account ``account_id`` names (the only one when empty and exactly one
    is configured), or the UNKNOWN_ACCOUNT error SendButtonTemplate gives."""
    violations: list[FieldViolation] = []
    found = _check_account(account_id, accounts, violations)
    if found is None:
        raise _unknown_account(violations)
    return found
