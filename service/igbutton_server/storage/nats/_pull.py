"""Pull requests to one JetStream consumer, answered on a private inbox.

nats-py's ``fetch`` waits for a whole batch (or its timeout) before returning anything,
which would hold back a postback that is already here. This keeps requests outstanding
and hands each message over as it arrives, the way the Go client's ``Consume`` does:
the owner asks for as many messages as it has room for, reads them from ``messages`` when
``on_event`` fires, and asks again. Requests expire after a few seconds and carry idle
heartbeats, so a request lost with a NATS node (or a reconnect) is noticed and replaced.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from igbutton_server.storage.nats._codec import AckReply

log = logging.getLogger(__name__)

REQUEST_EXPIRES_SECONDS = 5.0
"""How long one pull request waits on the server for messages."""
HEARTBEAT_SECONDS = 1.0
"""Idle heartbeat the server sends while a request waits."""
SILENCE_SECONDS = 3 * HEARTBEAT_SECONDS
"""No word from the server for this long means the outstanding requests were lost."""

_STATUS = "Status"
_PENDING_MESSAGES = "Nats-Pending-Messages"


class PullInbox:
    """Outstanding pull requests for one consumer and the messages they brought.

    Not safe to share between owners: one cursor or group member owns one inbox.
    """

    def __init__(
        self, client: NatsClient, stream: str, consumer: str, on_event: Callable[[], None]
    ) -> None:
        self._client = client
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_event = on_event
        self._sub: NatsSubscription | None = None
        self._inbox = ""
        self.messages: deque[Msg] = deque()
        """Messages received and not yet taken by the owner."""
        self.outstanding = 0
        """Messages asked for and not yet received."""
        self.gone = False
        """The consumer no longer exists (deleted, or never created)."""
        self.exhausted = False
        """The last request ended without bringing a message: nothing is waiting."""
        self._last_heard = time.monotonic()

    async def open(self) -> None:
        """Subscribe the private inbox."""
        self._inbox = self._client.new_inbox()
        self._sub = await self._client.subscribe(self._inbox, cb=self._on_message)

    async def pull(self, batch: int, wait: bool = True) -> None:
        """Ask for up to ``batch`` more messages: those available now (``wait=False``),
        or, waiting up to a few seconds, the next ones to arrive."""
        if batch <= 0 or self._sub is None:
            return
        if self.outstanding == 0:
            self._last_heard = time.monotonic()
        request: dict[str, object] = {"batch": batch}
        if wait:
            request["expires"] = int(REQUEST_EXPIRES_SECONDS * 1e9)
            request["idle_heartbeat"] = int(HEARTBEAT_SECONDS * 1e9)
        else:
            request["no_wait"] = True
        self.exhausted = True  # until a message arrives
        self.outstanding += batch
        await self._client.publish(
            self._next_subject, json.dumps(request).encode(), reply=self._inbox
        )

    async def withdraw(self) -> None:
        """Withdraw the outstanding requests: answers go to a fresh inbox, and the server
        drops a waiting request whose reply subject lost its interest. Messages already in
        flight to the old inbox are lost (JetStream redelivers them after their AckWait)."""
        if self._sub is None:
            return
        old = self._sub
        await self.open()
        self.outstanding = 0
        self.exhausted = True
        try:
            await old.unsubscribe()
        except Exception:  # the connection may be closing already
            log.debug("unsubscribe failed", exc_info=True)

    def take_next(self, consumer_seq: int) -> tuple[Msg, AckReply] | None:
        """The next received message if it is the one after ``consumer_seq``, else None.

        None when nothing is waiting, or on a gap (a message lost on its way, shown by the
        sequence of the one after it): then the inbox is marked gone, and its owner
        recreates the consumer right after the last stream sequence it handed out.
        """
        if not self.messages:
            return None
        msg = self.messages.popleft()
        reply = AckReply.parse(msg.reply or "")
        if reply is None or reply.consumer_seq != consumer_seq + 1:
            log.info("gap in %s; recreating the consumer", self._next_subject)
            self.gone = True
            return None
        return msg, reply

    def check_alive(self) -> None:
        """Forget outstanding requests if the server has been silent for too long."""
        if self.outstanding and time.monotonic() - self._last_heard > SILENCE_SECONDS:
            log.info("pull requests to %s went unanswered; asking again", self._next_subject)
            self.outstanding = 0

    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if not status:
            self.outstanding = max(self.outstanding - 1, 0)
            self.exhausted = False
            self.messages.append(msg)
        elif status == "100":
            return  # idle heartbeat (or flow control, unused with pull)
        elif status in ("404", "408", "409"):
            # The request ended (expired, or the server gave up on it); the header says how
            # much of it went unfilled.
            pending = headers.get(_PENDING_MESSAGES)
            unfilled = int(pending) if pending and pending.isdigit() else self.outstanding
            self.outstanding = max(self.outstanding - unfilled, 0)
            description = headers.get("Description", "")
            if "Consumer Deleted" in description:
                self.gone = True
        elif status == "503":
            # No responders: the consumer (or JetStream) is not there right now.
            self.outstanding = 0
            self.gone = True
        else:
            log.warning("unexpected pull status %s from %s", status, self._next_subject)
            self.outstanding = 0
        self._on_event()

    async def close(self) -> None:
        """Stop listening; messages still in flight to this inbox are dropped."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing already
                log.debug("unsubscribe failed", exc_info=True)
