"""Failures the sandbox can be told to produce, consumed one per incoming send.

Tests use them to model what Meta does on a bad day: a Graph error code, an HTTP 5xx
from a proxy, an answer that comes late, or a connection dropped after the request was
read (so the client cannot know whether Meta acted).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from igbutton_server.sandbox.graph_rules import ERROR_TYPE, GraphError, graph_error

FaultKind = Literal["graph_error", "http_status", "slow", "drop"]


@dataclass
class Fault:
    """One injected failure, applied to the next ``count`` matching sends.

    - ``graph_error``: answer ``http_status`` with Meta's error JSON (``code``,
      ``subcode``, ``message``, ``is_transient``, and ``fbtrace_id`` and ``error_type``
      when set) and ``headers``, after ``delay_seconds``.
    - ``http_status``: answer ``http_status`` with a non-JSON (HTML) body and ``headers``,
      after ``delay_seconds``.
    - ``slow``: wait ``delay_seconds`` after reading the request, then process it normally
      (Meta acted, but answered late).
    - ``drop``: close the connection after reading the request, without answering.
    """

    kind: FaultKind
    count: int = 1
    account_id: str | None = None
    """Only sends from this account; None matches any account."""
    code: int = 0
    subcode: int | None = None
    http_status: int = 400
    message: str = ""
    delay_seconds: float = 0.0
    """How long to wait before answering (``slow``, ``graph_error``, ``http_status``)."""
    headers: dict[str, str] = field(default_factory=dict)
    is_transient: bool | None = None
    fbtrace_id: str = ""
    """Empty: a fresh one, as Meta sends."""
    error_type: str = ""
    """Empty: the sandbox's usual ``IGApiException``."""

    def __post_init__(self) -> None:
        if self.kind not in ("graph_error", "http_status", "slow", "drop"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if not 100 <= self.http_status <= 599:
            raise ValueError("http_status must be an HTTP status (100-599)")
        if self.delay_seconds < 0:
            raise ValueError("delay_seconds must not be negative")

    def graph_error(self) -> GraphError:
        """The Meta error this fault answers with (kind ``graph_error``)."""
        return replace(
            graph_error(self.code, self.message),
            http_status=self.http_status,
            subcode=self.subcode,
            is_transient=self.is_transient,
            headers=dict(self.headers),
            fbtrace_id=self.fbtrace_id,
            type=self.error_type or ERROR_TYPE,
        )


class FaultQueue:
    """Faults in FIFO order; each send takes one use of the first fault that matches it."""

    def __init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._remaining: dict[int, int] = {}

    def add(self, fault: Fault) -> None:
        """Queue a fault behind those already queued."""
        self._faults.append(fault)
        self._remaining[id(fault)] = fault.count

    def clear(self) -> None:
        """Forget every queued fault."""
        self._faults.clear()
        self._remaining.clear()

    def __len__(self) -> int:
        return len(self._faults)

    def pending(self) -> list[tuple[Fault, int]]:
        """Queued faults in order, each with how many more sends it will affect."""
        return [(fault, self._remaining[id(fault)]) for fault in self._faults]

    def take(self, account_id: str) -> Fault | None:
        """The fault for a send from ``account_id``, using up one of its ``count``."""
        for fault in self._faults:
            if fault.account_id is None or fault.account_id == account_id:
                left = self._remaining[id(fault)] - 1
                if left == 0:
                    self._faults.remove(fault)
                    del self._remaining[id(fault)]
                else:
                    self._remaining[id(fault)] = left
                return fault
        return None
