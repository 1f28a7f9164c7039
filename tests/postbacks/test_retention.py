"""Retention: postbacks older than the retention period are pruned in the background."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from igbutton_server.postbacks.retention import RetentionPruner
from igbutton_server.storage.postbacks import Filter, GroupOptions, Start
from igbutton_server.storage.sqlite.postbacks import SqlitePostbackStore
from tests.conftest import on_engines
from tests.postbacks.conftest import AppFactory, eventually, store_of
from tests.postbacks.test_store_contract import new, next_of


def _backdate(path: Path, mids: list[str], seconds: float) -> None:
    """Make postbacks look received ``seconds`` ago (as if stored back then)."""
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "UPDATE postbacks SET received_ms = ? WHERE mid = ?",
            [(int((time.time() - seconds) * 1000), mid) for mid in mids],
        )
    conn.close()


async def test_prune_once_removes_only_expired_postbacks_and_their_deliveries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    store = await SqlitePostbackStore.open(path)
    try:
        member = await store.join_group("g", Filter(), Start.latest(), GroupOptions(30, 10, 5))
        await store.append([new(1), new(2), new(3)])
        await next_of(member)  # m1 is pending in the group
        _backdate(path, ["m1", "m2"], seconds=3600)
        pruner = RetentionPruner(store, retention=600, interval=60)
        assert await pruner.prune_once() == 2
        sub = await store.subscribe(Filter(), Start.earliest())
        assert (await next_of(sub)).mid == "m3"
        info = await store.group_info("g")
        assert info is not None
        assert info.unacked == 1  # m3 (claimed with m1); m1's delivery went with it
    finally:
        await store.close()


@on_engines("sqlite")  # it writes old postbacks into the SQLite file itself
async def test_the_app_prunes_in_the_background(start_app: AppFactory, tmp_path: Path) -> None:
    path = tmp_path / "igbutton.db"
    store = await SqlitePostbackStore.open(path)
    await store.append([new(1), new(2)])
    await store.close()
    _backdate(path, ["m1"], seconds=2 * 86400)

    app = await start_app(postbacks={"retention_seconds": 86400})

    async def only_m2_left() -> bool:
        sub = await store_of(app).subscribe(Filter(), Start.earliest())
        first = await next_of(sub)
        await sub.close()
        return first.mid == "m2"

    await eventually(only_m2_left)
