"""Removes postbacks older than the retention period, idle consumer groups and old
messaging-window records, in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from igbutton_server.storage.postbacks import PostbackStore, StorageUnavailable, StoreClosed
from igbutton_server.storage.windows import WindowLedger

log = logging.getLogger(__name__)


class RetentionPruner:
    """Every ``interval`` seconds, prune postbacks received more than ``retention`` ago and
    delete groups idle for more than ``group_idle_retention`` (no member connected, nobody
    joined or acknowledged in them)."""

    def __init__(
        self,
        store: PostbackStore,
        retention: float,
        interval: float,
        group_idle_retention: float | None = None,
        windows: WindowLedger | None = None,
    ) -> None:
        self._store = store
        self._windows = windows
        self._retention = retention
        self._interval = interval
        self._group_idle_retention = group_idle_retention
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task (the first prune runs at once)."""
        self._task = asyncio.create_task(self._run(), name="postback-retention")

    async def prune_once(self) -> int:
        """Prune now; return how many postbacks were removed."""
        cutoff_ms = int((time.time() - self._retention) * 1000)
        removed = await self._store.prune(cutoff_ms)
        if removed:
            log.info("pruned postbacks past the retention", extra={"removed": removed})
        if self._windows is not None:
            forgotten = await self._windows.prune()
            if forgotten:
                log.info("pruned old messaging-window records", extra={"removed": forgotten})
        return removed

    async def sweep_groups_once(self) -> list[str]:
        """Delete the idle groups now; return their keys."""
        if self._group_idle_retention is None:
            return []
        idle_since_ms = int((time.time() - self._group_idle_retention) * 1000)
        deleted = await self._store.delete_idle_groups(idle_since_ms)
        if deleted:
            log.info("deleted idle consumer groups", extra={"groups": deleted})
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.prune_once()
                await self.sweep_groups_once()
            except StoreClosed:
                return
            except StorageUnavailable as exc:  # the store logged it and readiness shows it
                log.warning("pruning postbacks skipped: %s", exc)
            except Exception:  # keep pruning later; a failure here loses no data
                log.exception("pruning postbacks failed")
            await asyncio.sleep(self._interval)  # a schedule, not a synchronisation

    async def stop(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
