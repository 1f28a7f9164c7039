"""The messaging window as igbutton knows it: from the last message time the webhook
recorded (storage.windows) to "open until", "closed since" or "unknown".

Meta remains the authority (the person may have written through another app, or before
igbutton was subscribed to the webhook); igbutton only refuses a send, and only with
``send.messaging_window_check: enforce``, when it saw the person's last message and that
is older than the window.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from enum import Enum

import grpc

from igbutton.v1 import errors_pb2
from igbutton_server.errors import ApiError
from igbutton_server.storage.windows import WindowLedger

WINDOW_SECONDS = 24 * 3600
"""A send without a tag: within 24 hours of the person's last message."""
HUMAN_AGENT_WINDOW_SECONDS = 7 * 24 * 3600
"""With the HUMAN_AGENT tag: within 7 days."""


class WindowState(Enum):
    """Whether a send falls in the window."""

    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Window:
    """One person's window for one account."""

    last_message_ms: int | None
    """When igbutton last saw the person write, or None."""

    def closes_ms(self, human_agent: bool = False) -> int | None:
        """When the window closes (or closed) for a send with or without HUMAN_AGENT."""
        if self.last_message_ms is None:
            return None
        span = HUMAN_AGENT_WINDOW_SECONDS if human_agent else WINDOW_SECONDS
        return self.last_message_ms + span * 1000

    def state(self, now_ms: int, human_agent: bool = False) -> WindowState:
        """Its state at ``now_ms``."""
        closes = self.closes_ms(human_agent)
        if closes is None:
            return WindowState.UNKNOWN
        return WindowState.OPEN if now_ms < closes else WindowState.CLOSED


def now_ms() -> int:
    """Wall-clock ms since the epoch."""
    return int(time.time() * 1000)


class OutsideMessagingWindow(ApiError):
    """igbutton knows the window is closed: the send is refused before Meta is asked."""

    before_meta = True
    """Not kept as the outcome of a request_id (see send.outcome.is_final)."""

    def __init__(self, closed_at_ms: int) -> None:
        closed_at = datetime.datetime.fromtimestamp(closed_at_ms / 1000, tz=datetime.UTC)
        text = closed_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            errors_pb2.ERROR_REASON_OUTSIDE_MESSAGING_WINDOW,
            f"the messaging window closed at {text} (the person's last message seen by "
            "igbutton); not sent (send.messaging_window_check is enforce)",
            metadata={"window_closed_at": text},
        )


class MessagingWindows:
    """Reads windows from the ledger, and enforces them on sends when configured."""

    def __init__(self, ledger: WindowLedger, enforce: bool) -> None:
        self._ledger = ledger
        self.enforce = enforce

    async def window(self, account_id: str, person_id: str) -> Window:
        """The person's window for the account."""
        return Window(await self._ledger.last_message_ms(account_id, person_id))

    async def check_send(self, account_id: str, person_id: str, human_agent: bool) -> None:
        """Raise OutsideMessagingWindow if enforcing and the window is known closed."""
        if not self.enforce:
            return
        window = await self.window(account_id, person_id)
        closes = window.closes_ms(human_agent)
        if closes is not None and window.state(now_ms(), human_agent) is WindowState.CLOSED:
            raise OutsideMessagingWindow(closes)
