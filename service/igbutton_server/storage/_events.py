"""Waiting for an event with a timeout, without losing a cancellation.

On Python 3.11 ``asyncio.wait_for`` returns normally when the awaited future completes in
the same loop iteration as the waiting task is cancelled: the cancellation is lost. A
reader loop that is cancelled just as a new postback wakes it then runs on, and whoever
awaits its end (a store closing, a shared reader stopping) waits forever. ``asyncio.timeout``
(3.11+) keeps the cancellation, so every wait with a timeout in the stores goes through here.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass (None: no limit); return
    whether it is set. A cancellation of the caller always propagates."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again while it runs on.

    A task iterating a library's watcher (nats-py's KV watch waits with ``asyncio.wait_for``)
    can swallow one cancellation on Python 3.11 and carry on; awaiting it once then waits
    forever (seen: a rate-limit ledger's close hung a test's teardown for 120 s).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
