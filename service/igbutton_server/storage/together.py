"""Writes that one request makes side by side, for an engine that can commit them as one.

A webhook delivery's postbacks and the messaging windows it opens are both stored before its
200, from two tasks (on NATS their round trips overlap). On SQLite both go to the file's one
writer, and a delivery costs one commit (one fsync) only if both are in its batch; but the
writer takes what is queued when it wakes, and the event loop can be late to queue the
second write (another thread held the GIL, a busy loop). Inside :func:`writes_together`, an
engine that batches commits knows how many writes to wait a moment for: SQLite's writer
holds its batch until they are all queued (a bound later, it commits what it has). Engines
that commit each write on its own ignore it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(eq=False)
class Together:
    """``count`` writes meant for one commit; ``seen`` is the engine's tally of them."""

    count: int
    seen: int = 0


_CURRENT: ContextVar[Together | None] = ContextVar("igbutton_writes_together", default=None)


@contextlib.contextmanager
def writes_together(count: int) -> Iterator[None]:
    """The next ``count`` writes made in this context, and in tasks created in it (each copies
    the context), belong to one commit. Each store method is one write."""
    token = _CURRENT.set(Together(count))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Together | None:
    """The writes that the one being made now belongs with, if any."""
    return _CURRENT.get()
