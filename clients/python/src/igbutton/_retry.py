"""When and how long to wait before repeating a call (AIP-194).

Only UNAVAILABLE is retried, and only on calls that are safe to repeat: a send only with a
request_id (the client always sets one), a validation, an acknowledgement. DEADLINE_EXCEEDED is
never retried: the caller's deadline is spent, and a send may have gone out.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """How a client repeats calls that failed with UNAVAILABLE.

    The delay before retry *n* (from 0) is a random value up to
    ``min(max_backoff, initial_backoff * multiplier**n)`` (full jitter), or the server's
    RetryInfo delay when that is longer. Retries stop at ``max_attempts`` (counting the first
    call) or when the next attempt would start after the call's deadline.
    """

    max_attempts: int = 5
    """Attempts per call, counting the first; 1 turns retries off."""
    initial_backoff: float = 0.1
    """Upper bound of the first delay, in seconds."""
    max_backoff: float = 5.0
    """Upper bound of any delay, in seconds."""
    multiplier: float = 2.0
    """Growth of the bound per attempt."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def delay(self, retry: int, server_hint: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        delay = random.uniform(0, bound)  # noqa: S311 - jitter, not cryptography
        if server_hint is not None:
            delay = max(delay, server_hint)
        return delay


DEFAULT_RETRY = RetryPolicy()
"""The clients' default retry policy."""

NO_RETRY = RetryPolicy(max_attempts=1)
"""A policy that never retries."""


def is_retryable(code: grpc.StatusCode, *, safe_to_repeat: bool) -> bool:
    """AIP-194: retry only UNAVAILABLE, and only for a call that is safe to repeat."""
    return safe_to_repeat and code is grpc.StatusCode.UNAVAILABLE


class Attempts:
    """Bookkeeping for one logical call: attempts made and the overall deadline."""

    def __init__(self, policy: RetryPolicy, timeout: float | None) -> None:
        self._policy = policy
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.made = 0

    def remaining(self) -> float | None:
        """Seconds left for the next attempt (at least a sliver, so the call can fail cleanly)."""
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.001)

    def next_delay(
        self, code: grpc.StatusCode, *, safe_to_repeat: bool, server_hint: float | None
    ) -> float | None:
        """After a failed attempt: how long to wait before the next, or None to give up."""
        self.made += 1
        if not is_retryable(code, safe_to_repeat=safe_to_repeat):
            return None
        if self.made >= self._policy.max_attempts:
            return None
        delay = self._policy.delay(self.made - 1, server_hint)
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        return delay


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a subscription reconnects after UNAVAILABLE (server restart, lost connection) or a
    CANCELLED from the server (no room for the call, as in a burst of reconnects).

    Delays grow like :class:`RetryPolicy`'s and start over once an event arrives.
    """

    initial_backoff: float = 0.2
    """Upper bound of the first delay, in seconds."""
    max_backoff: float = 10.0
    """Upper bound of any delay, in seconds."""
    multiplier: float = 2.0
    """Growth of the bound per failed attempt."""
    max_attempts: int | None = None
    """Consecutive failed reconnects before giving up (raising UnavailableError); None: never."""

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 or more)."""
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failures - 1))
        return random.uniform(bound / 2, bound)  # noqa: S311 - jitter, not cryptography

    def gives_up(self, failures: int) -> bool:
        """Whether to stop after ``failures`` consecutive failed attempts."""
        return self.max_attempts is not None and failures > self.max_attempts


DEFAULT_RECONNECT = ReconnectPolicy()
"""The clients' default reconnect policy: forever, with delays up to 10 s."""
