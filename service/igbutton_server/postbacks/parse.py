"""Meta's webhook JSON to postbacks: what to keep, what to skip, what to reject.

A delivery is rejected (400, nothing stored) only when it is not a JSON object with an
``entry`` list: then nothing in it can be trusted. Inside a valid envelope every item is
judged alone: a postback becomes a NewPostback; anything else (messages, reads, reactions,
``changes`` from other webhook fields) is skipped and counted; a postback missing what
identifies it (mid, sender, account) is skipped as ``invalid_postback``, and one whose ids
or item are longer than the log takes (``MAX_ID_BYTES``, ``MAX_RAW_JSON_BYTES``) as
``oversized``, rather than failing the batch, because Meta would retry a failed batch for 36
hours and then drop its good items too.

Postbacks arrive in an entry's ``messaging`` array, or in its ``standby`` array while
another app holds the conversation (Meta's handover protocol); both are kept, a standby
one marked ``standby``. Two kinds of postback are skipped and counted although well formed:
``self_sent``, whose sender is the account itself (an echo of the business's own action,
not a person's tap), and ``unknown_account``, for an account that is not configured (when
the caller names its accounts): stored, it would reach every unfiltered subscriber.

An entry's ``changes`` array is the other envelope form. Two of its fields are recognised:
``messaging_postbacks``, which Meta sends this way only from the App Dashboard's Test button
(made-up ids): kept as a postback marked ``test``, whatever its account, its mid suffixed
with ``#test-<entry time>`` so that each press is one postback; and ``igbutton_self_test``,
igbutton's own check of its webhook (CheckAccount), whose nonce is collected and never
stored. Every other change is skipped and counted as ``changes``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from igbutton_server.storage.postbacks import MAX_ID_BYTES, MAX_RAW_JSON_BYTES, NewPostback

_MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the largest time a protobuf Timestamp holds."""

_ITEM_KINDS = (
    "message",
    "read",
    "reaction",
    "delivery",
    "referral",
    "optin",
    "message_edit",
    "policy_enforcement",
    "account_linking",
)
"""Known non-postback ``messaging`` items, named in the skipped counts; others are 'other'."""


class MalformedDelivery(ValueError):
    """The body is not a webhook delivery at all (not JSON, or no ``entry`` list)."""


SELF_TEST_FIELD = "igbutton_self_test"
"""The ``changes`` field of igbutton's webhook self-test (never a Meta field)."""
_MAX_NONCE_CHARS = 64


@dataclass
class ParsedDelivery:
    """The postbacks of one delivery and what was skipped, by kind."""

    postbacks: list[NewPostback] = field(default_factory=list)
    self_tests: list[str] = field(default_factory=list)
    """The nonces of igbutton self-test changes (never stored)."""
    skipped: Counter[str] = field(default_factory=Counter)
    unknown_accounts: set[str] = field(default_factory=set)
    """The accounts of the postbacks skipped as ``unknown_account``."""
    last_messages: dict[tuple[str, str], int] = field(default_factory=dict)
    """(account, IGSID) -> the latest time the person wrote to a kept account in this
    delivery (any item but receipts and echoes), for the messaging window; times only."""


def parse_delivery(body: bytes, accounts: Set[str] | None = None) -> ParsedDelivery:
    """Parse a webhook body, or raise MalformedDelivery.

    ``accounts`` are the IG IDs whose postbacks are kept; the others are skipped as
    ``unknown_account``. None keeps every account's.
    """
    parsed = ParsedDelivery()
    for entry in _entries(body):
        _parse_entry(entry, parsed, accounts)
    return parsed


def _entries(body: bytes) -> list[Any]:
    """The ``entry`` list of a webhook body, or raise MalformedDelivery."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MalformedDelivery("the body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedDelivery("the body is not a JSON object")
    entries = document.get("entry")
    if not isinstance(entries, list):
        raise MalformedDelivery("the body has no entry list")
    return entries


def _parse_entry(entry: object, parsed: ParsedDelivery, accounts: Set[str] | None) -> None:
    """Add one entry's postbacks to ``parsed`` and count what it skips."""
    if not isinstance(entry, dict):
        parsed.skipped["invalid_entry"] += 1
        return
    changes = entry.get("changes")
    if isinstance(changes, list):
        for change in changes:
            _parse_change(change, entry, parsed)
    messaging = entry.get("messaging", [])
    standby = entry.get("standby", [])
    if not isinstance(messaging, list) or not isinstance(standby, list):
        parsed.skipped["invalid_entry"] += 1
        return
    for items, in_standby in ((messaging, False), (standby, True)):
        for item in items:
            _parse_item(item, entry, parsed, accounts, standby=in_standby)


def _parse_change(change: object, entry: dict[str, Any], parsed: ParsedDelivery) -> None:
    """A ``changes`` item: a dashboard test postback, a self-test, or skipped."""
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        parsed.skipped["changes"] += 1
        return
    kind, value = change.get("field"), change["value"]
    if kind == SELF_TEST_FIELD:
        nonce = value.get("nonce")
        if isinstance(nonce, str) and 0 < len(nonce) <= _MAX_NONCE_CHARS:
            parsed.self_tests.append(nonce)
        else:
            parsed.skipped["changes"] += 1
        return
    if kind != "messaging_postbacks" or "postback" not in value:
        parsed.skipped["changes"] += 1
        return
    postback = _postback(value, entry, standby=False, test=True)
    if isinstance(postback, str):
        parsed.skipped[postback] += 1
    else:
        parsed.postbacks.append(postback)


_NOT_FROM_THE_PERSON = frozenset({"read", "delivery", "policy_enforcement", "invalid_item"})
"""Items that do not open the messaging window: receipts, and Meta's own notices."""


def _note_message(
    item: object,
    kind: str,
    entry: dict[str, Any],
    parsed: ParsedDelivery,
    accounts: Set[str] | None,
) -> None:
    """Note when the person behind an item wrote to the account (the window opens)."""
    if kind in _NOT_FROM_THE_PERSON or not isinstance(item, dict):
        return
    message = item.get("message")
    if isinstance(message, dict) and message.get("is_echo"):
        return  # the business's own message: does not open the window
    sender = _get_id(item.get("sender"))
    entry_id = _id(entry.get("id"))
    account = _get_id(item.get("recipient")) or entry_id
    at = _time_ms(item.get("timestamp"))
    if sender is None or account is None or not at or sender in (account, entry_id):
        return
    if accounts is not None and account not in accounts:
        return
    if any(len(i.encode()) > MAX_ID_BYTES for i in (sender, account)):
        return
    key = (account, sender)
    parsed.last_messages[key] = max(parsed.last_messages.get(key, 0), at)


def _parse_item(
    item: object,
    entry: dict[str, Any],
    parsed: ParsedDelivery,
    accounts: Set[str] | None,
    *,
    standby: bool,
) -> None:
    kind = _kind(item)
    _note_message(item, kind, entry, parsed, accounts)
    if kind != "postback":
        parsed.skipped[kind] += 1
        return
    assert isinstance(item, dict)  # _kind said so
    postback = _postback(item, entry, standby=standby)
    if isinstance(postback, str):
        parsed.skipped[postback] += 1
    elif accounts is not None and postback.account_id not in accounts:
        parsed.skipped["unknown_account"] += 1
        parsed.unknown_accounts.add(postback.account_id)
    else:
        parsed.postbacks.append(postback)


def _kind(item: object) -> str:
    if not isinstance(item, dict):
        return "invalid_item"
    if "postback" in item:
        return "postback"
    return next((k for k in _ITEM_KINDS if k in item), "other")


def _text(value: object) -> str | None:
    """A string field as Meta sends it; ids may arrive as numbers. None if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")  # lone surrogates from \\ud800 escapes cannot be stored
    except UnicodeEncodeError:
        return None
    return value


def _id(value: object) -> str | None:
    text = _text(value)
    return text or None


def _time_ms(*candidates: object) -> int:
    for value in candidates:
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if 0 <= value <= _MAX_TIME_MS:
            return int(value)
    return 0


def _get_id(obj: object) -> str | None:
    return _id(obj.get("id")) if isinstance(obj, dict) else None


def _raw_json(item: dict[str, Any]) -> str:
    raw = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate somewhere: keep it as an escape
        raw = json.dumps(item, ensure_ascii=True, separators=(",", ":"))
    return raw


def _postback(
    item: dict[str, Any], entry: dict[str, Any], *, standby: bool, test: bool = False
) -> NewPostback | str:
    """The postback of a ``messaging`` or ``standby`` item, or the kind it is skipped as."""
    body = item["postback"]
    if not isinstance(body, dict):
        return "invalid_postback"
    mid = _id(body.get("mid"))
    sender = _get_id(item.get("sender"))
    # The account is the recipient of the tap; entry.id names it too.
    entry_id = _id(entry.get("id"))
    account = _get_id(item.get("recipient")) or entry_id
    title = _text(body.get("title", ""))
    payload = _text(body.get("payload", ""))
    if mid is None or sender is None or account is None or title is None or payload is None:
        return "invalid_postback"
    if test:
        # Meta's sample mid is the same on every press; the entry time is not.
        mid = f"{mid}#test-{_time_ms(entry.get('time'))}"
    if any(len(i.encode()) > MAX_ID_BYTES for i in (mid, sender, account)):
        return "oversized"
    if sender in (account, entry_id):
        return "self_sent"  # the account's own action echoed, not a person's tap
    try:
        raw = _raw_json(item)
    except (ValueError, RecursionError):
        return "invalid_postback"
    if len(raw.encode()) > MAX_RAW_JSON_BYTES:
        return "oversized"  # title and payload are part of it, so bounded too
    return NewPostback(
        account_id=account,
        sender_id=sender,
        mid=mid,
        title=title,
        payload=payload,
        tap_time_ms=_time_ms(item.get("timestamp"), entry.get("time")),
        raw_json=raw,
        standby=standby,
        test=test,
    )
