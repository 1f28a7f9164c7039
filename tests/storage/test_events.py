"""wait_event keeps a cancellation that coincides with the event being set (Python 3.11's
wait_for loses it, which left the NATS shared tail's reader running after it was stopped
and hung the next subscribe)."""

from __future__ import annotations

import asyncio

import pytest

from igbutton_server.storage._events import wait_event


async def test_a_cancel_at_the_moment_the_event_is_set_stops_the_waiter() -> None:
    event = asyncio.Event()
    waiting = asyncio.Event()
    rounds = 0

    async def reader_loop() -> None:
        nonlocal rounds
        while True:  # like the stores' reader loops: only a cancellation ends it
            waiting.set()
            await wait_event(event, 30)
            event.clear()
            rounds += 1

    task = asyncio.create_task(reader_loop())
    await asyncio.wait_for(waiting.wait(), 5)
    event.set()  # the waiter's wake-up and its cancellation land in the same loop turn
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert rounds == 0


async def test_it_reports_a_set_event_and_a_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True
