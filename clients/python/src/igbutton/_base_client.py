"""What :class:`igbutton.Client` and :class:`igbutton.AsyncClient` share: the set-up (channel,
call metadata, deadlines, retry and reconnect policies, stubs) and the decision after a failed
attempt. Each client keeps its calls, which block in one and are awaited in the other."""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

import grpc

from igbutton import _channel
from igbutton._channel import DEFAULT_TARGET, ChannelOptions, Tls
from igbutton._retry import DEFAULT_RECONNECT, DEFAULT_RETRY, Attempts, ReconnectPolicy, RetryPolicy
from igbutton.errors import from_rpc_error

log = logging.getLogger("igbutton")

ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)

DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call (with its retries) may take unless the client or call says otherwise."""


class BaseClient(abc.ABC, Generic[ChannelT]):
    """The set-up both clients share; the arguments are documented on each client."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: Tls | bool | None = None,
        channel: ChannelT | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        reconnect: ReconnectPolicy = DEFAULT_RECONNECT,
        metadata: Sequence[tuple[str, str]] = (),
        options: ChannelOptions = (),
    ) -> None:
        resolved = _channel.resolve_tls(tls)
        self._owns_channel = channel is None
        self._channel: ChannelT = (
            self._open_channel(target, resolved, token, options) if channel is None else channel
        )
        # A channel given by the caller carries its own credentials: the token goes in the
        # metadata then, whatever ``tls`` says.
        self._metadata = _channel.call_metadata(
            token, None if channel is not None else resolved, tuple(metadata)
        )
        self._timeout = timeout
        self._retry = retry
        self._reconnect = reconnect
        self._open_stubs(self._channel)

    @staticmethod
    @abc.abstractmethod
    def _open_channel(
        target: str, tls: Tls | None, token: str | None, options: ChannelOptions
    ) -> ChannelT:
        """The channel this client makes when it is not given one."""

    @abc.abstractmethod
    def _open_stubs(self, channel: ChannelT) -> None:
        """Set ``_send`` and ``_postbacks``, typed for this client's channel."""

    @property
    def channel(self) -> ChannelT:
        """The underlying channel, for health checks and other services."""
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata this client sends on every call (on plaintext, the caller token), for
        calls to other services on :attr:`channel`."""
        return tuple(self._metadata)

    def _attempts(self, timeout: float | None) -> Attempts:
        """The retry bookkeeping of one unary call; ``timeout`` None means the client's."""
        return Attempts(self._retry, timeout if timeout is not None else self._timeout)

    @staticmethod
    def _retry_delay(
        attempts: Attempts, err: grpc.RpcError, *, safe: bool, request_id: str | None
    ) -> float:
        """After a failed attempt: seconds to wait before the next, or raise the typed error."""
        error = from_rpc_error(err, request_id=request_id)
        delay = attempts.next_delay(error.code, safe_to_repeat=safe, server_hint=error.retry_after)
        if delay is None:
            raise error from err
        log.info("retrying in %.2fs after %s", delay, error.describe())
        return delay
