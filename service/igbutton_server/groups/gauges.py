"""Keeps the per-group gauges current: the backlog, unacknowledged count and the age of the
oldest unacknowledged postback change while nobody calls GetGroup, so the groups are read
on a schedule (``postbacks.group_metrics_interval_seconds``) and each read sets them
(``metrics.observe_group``, called by the stores' ``list_groups``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from igbutton_server.storage.groups import GroupOperations
from igbutton_server.storage.postbacks import StoreClosed

log = logging.getLogger(__name__)


class GroupGauges:
    """A background task reading every group's details at an interval."""

    def __init__(self, groups: GroupOperations, interval: float) -> None:
        self._groups = groups
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading (no task when the interval is 0)."""
        if self._interval > 0:
            self._task = asyncio.create_task(self._run(), name="group-gauges")

    async def _run(self) -> None:
        while True:
            try:
                await self._groups.list_groups()
            except StoreClosed:
                return
            except Exception:  # the gauges wait for the next round; nothing is lost
                log.warning("could not read the groups for their gauges", exc_info=True)
            await asyncio.sleep(self._interval)  # a schedule, not a synchronisation

    async def stop(self) -> None:
        """Stop the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
