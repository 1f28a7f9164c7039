"""How a dead letter is reported, the same on every backend.

A postback set aside after its group's last delivery attempt is not lost: the engine keeps
it in the group's dead letters (``storage.groups``: listed, redriven, purged) and in the log
until retention. The metric says that it happened; the log line says which one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from igbutton_server import metrics

log = logging.getLogger(__name__)


def report(group: str, sequences: Iterable[int], reason: str) -> None:
    """Count each dead-lettered postback of ``group`` and log one line for each."""
    for sequence in sequences:
        metrics.DEAD_LETTERED.labels(group=group).inc()
        log.warning(
            "postback dead-lettered",
            extra={"group": group, "sequence": sequence, "reason": reason},
        )
