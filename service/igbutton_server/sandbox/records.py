"""What the sandbox remembers: every send it received and the messages it accepted."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any


class UnknownMessageError(LookupError):
    """No accepted send with this message id was recorded."""


# slots, and the body parsed again from raw_body on demand: the log holds up to 100,000
# sends, and keeping each parsed JSON tree alive made the garbage collector walk them all
# (about a sixth of the sandbox's CPU per send under load, docs/performance.md).
@dataclass(slots=True)
class RecordedSend:
    """One send that reached the sandbox, accepted or not, with the token redacted."""

    account_id: str
    """The account from the path (``me`` resolved when possible)."""
    path: str
    """The request path, such as ``/v25.0/17841400000000000/messages``."""
    query: dict[str, str]
    """Query parameters; an ``access_token`` value is replaced by ``<redacted>``."""
    auth_header_present: bool
    token_ok: bool
    raw_body: bytes
    accepted: bool
    message_id: str | None
    recipient_id: str | None
    received_at: float
    status: int
    """The HTTP status answered; 0 while in flight or when the connection was dropped."""
    token_generation: int | None = None
    """Which of the account's tokens the send carried: 0 the seeded one, n the one the n-th
    refresh issued; None for a token the sandbox never issued. (The token itself is never
    recorded.)"""

    @property
    def body(self) -> Any:
        """The parsed JSON body, or None when it was not JSON."""
        return parse_body(self.raw_body)


def parse_body(raw: bytes) -> Any:
    """The request body as JSON, or None when it is empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class StoredMessage:
    """An accepted button template, kept so that its buttons can be tapped."""

    account_id: str
    recipient_id: str
    buttons: tuple[dict[str, str], ...]


class SendLog:
    """Recorded sends in arrival order plus accepted messages by id, bounded in size."""

    def __init__(self, max_records: int) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._max_records = max_records
        self.received: deque[RecordedSend] = deque()
        self._messages: dict[str, StoredMessage] = {}

    def record(self, send: RecordedSend) -> None:
        """Append a send; beyond the bound the oldest sends and their messages are forgotten."""
        self.received.append(send)
        # popleft, not del list[:n]: a full log would move every record on each send.
        while len(self.received) > self._max_records:
            old = self.received.popleft()
            if old.message_id is not None:
                self._messages.pop(old.message_id, None)

    def accept(self, send: RecordedSend, message_id: str, message: StoredMessage) -> None:
        """Mark a recorded send accepted under ``message_id`` and keep its message."""
        send.accepted = True
        send.message_id = message_id
        self._messages[message_id] = message

    def message(self, message_id: str) -> StoredMessage:
        """The accepted message with this id, or UnknownMessageError."""
        stored = self._messages.get(message_id)
        if stored is None:
            raise UnknownMessageError(f"no accepted message with id {message_id!r}")
        return stored

    def clear(self) -> None:
        """Forget everything."""
        self.received.clear()
        self._messages.clear()
