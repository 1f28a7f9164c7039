"""The asyncio client for both igbutton services.

async with AsyncClient("127.0.0.1:50051") as client:
    sent = await client.send_button_template(
        "1234567890", "Pick one", [UrlButton("Visit", "https://example.com"),
                                   PostbackButton("Yes", "ANSWER_YES")])
    async for postback in client.subscribe(payload_prefix="ANSWER_"):
        print(postback.payload)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self, TypeVar

import grpc

from igbutton import _channel, _requests
from igbutton._base_client import DEFAULT_TIMEOUT, BaseClient
from igbutton._requests import StartSpec, SubscribeOptions
from igbutton._subscription import (
    AsyncSubscription,
    OnDisconnect,
    SubscribeRequest,
    SubscribeResponse,
)
from igbutton.buttons import Button, ButtonTemplate
from igbutton.errors import IgButtonError
from igbutton.group_models import (
    DeadLetter,
    DeadLetterPage,
    Group,
    MessagingWindow,
    deadline,
    group_name,
    seek_request,
)
from igbutton.models import AckResult, Postback, SendResult, ValidationResult
from igbutton.v1 import (
    group_service_pb2,
    group_service_pb2_grpc,
    postback_service_pb2_grpc,
    send_service_pb2,
    send_service_pb2_grpc,
)

# DEFAULT_TIMEOUT stays importable from here, where it was first defined.
__all__ = ["DEFAULT_TIMEOUT", "AsyncClient"]

log = logging.getLogger("igbutton")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncClient(BaseClient[grpc.aio.Channel]):
    """An asyncio client for SendService and PostbackService.

    ``target`` is ``host:port``. ``token`` is the caller's bearer token. ``tls`` is ``True``
    (system roots), a :class:`Tls` (own CA, mutual TLS) or ``None`` (plaintext, for local use).
    ``channel`` replaces all of these with a channel you built. ``timeout`` is the default
    deadline, in seconds, for unary calls including their retries (``None``: no deadline).
    Create the client inside the running event loop, and close it (``async with``).
    """

    _open_channel = staticmethod(_channel.aio_channel)

    def _open_stubs(self, channel: grpc.aio.Channel) -> None:
        self._send = send_service_pb2_grpc.SendServiceStub(channel)
        self._postbacks = postback_service_pb2_grpc.PostbackServiceStub(channel)
        self._groups = group_service_pb2_grpc.GroupServiceStub(channel)

    async def close(self) -> None:
        """Close the channel (if this client created it); open calls are cancelled."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send_button_template(
        self,
        recipient_id: str,
        text_or_template: str | ButtonTemplate,
        buttons: Iterable[Button] = (),
        *,
        account_id: str | None = None,
        request_id: str | None = None,
        tag: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as in grpc.aio
    ) -> SendResult:
        """Send a button template to ``recipient_id`` (an IGSID).

        Give the text and the buttons, or a :class:`ButtonTemplate`. A ``request_id`` (UUID)
        makes the send idempotent; one is generated when not given, so UNAVAILABLE is retried
        safely. The result carries the request_id used, as does any :class:`IgButtonError`.
        ``tag="human_agent"`` allows a human reply outside the 24-hour window.
        """
        rid = request_id or _requests.new_request_id()
        request = _requests.send_request(
            recipient_id, text_or_template, buttons, account_id=account_id, request_id=rid, tag=tag
        )
        response = await self._unary(
            self._send.SendButtonTemplate, request, timeout, safe=True, request_id=rid
        )
        return SendResult.from_proto(response, rid)

    async def validate_button_template(
        self,
        recipient_id: str,
        text_or_template: str | ButtonTemplate,
        buttons: Iterable[Button] = (),
        *,
        account_id: str | None = None,
        tag: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as in grpc.aio
    ) -> ValidationResult:
        """Check a send without sending: raises :class:`InvalidRequestError` listing every
        violation, or returns the exact Graph API request igbutton would make."""
        request = _requests.validate_request(
            recipient_id, text_or_template, buttons, account_id=account_id, tag=tag
        )
        response = await self._unary(self._send.ValidateButtonTemplate, request, timeout, safe=True)
        return ValidationResult.from_proto(response)

    def subscribe(
        self,
        *,
        account_ids: Iterable[str] = (),
        payload_prefix: str = "",
        start: StartSpec = None,
        after_sequence: int | None = None,
        group: str | None = None,
        ack_deadline: float | timedelta | None = None,
        max_unacked: int | None = None,
        on_disconnect: OnDisconnect | None = None,
    ) -> AsyncSubscription:
        """Stream postbacks: ``async for postback in client.subscribe(...)``.

        Filters: ``account_ids`` (IG IDs) and ``payload_prefix``. Start: ``start`` is
        ``"latest"`` (default), ``"earliest"`` or a timezone-aware datetime; or
        ``after_sequence`` resumes after a sequence you saw. With ``group`` the members of the
        group share the postbacks and each must be acknowledged (:meth:`ack`, or use
        :meth:`consume`). The iterator reconnects after UNAVAILABLE (or a CANCELLED from the
        server) and resumes without a gap or a duplicate; ``on_disconnect(error, delay)`` is
        told each time.
        """
        options = SubscribeOptions(
            account_ids=tuple(account_ids),
            payload_prefix=payload_prefix,
            start=start,
            after_sequence=after_sequence,
            group=group,
            ack_deadline=ack_deadline,
            max_unacked=max_unacked,
        )

        def open_stream(
            request: SubscribeRequest,
        ) -> grpc.aio.UnaryStreamCall[SubscribeRequest, SubscribeResponse]:
            return self._postbacks.SubscribePostbacks(request, metadata=self._metadata)

        return AsyncSubscription(open_stream, options, self._reconnect, on_disconnect)

    async def ack(
        self,
        group: str,
        ack_ids: Iterable[str] = (),
        nack_ids: Iterable[str] = (),
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as in grpc.aio
    ) -> AckResult:
        """Acknowledge postbacks delivered to ``group`` (done with), or nack them (deliver
        again at once)."""
        request = _requests.ack_request(group, ack_ids, nack_ids)
        response = await self._unary(self._postbacks.AckPostbacks, request, timeout, safe=True)
        return AckResult.from_proto(response)

    async def consume(
        self,
        group: str,
        handler: Callable[[Postback], Awaitable[object] | object],
        *,
        account_ids: Iterable[str] = (),
        payload_prefix: str = "",
        start: StartSpec = None,
        ack_deadline: float | timedelta | None = None,
        max_unacked: int | None = None,
        max_messages: int | None = None,
    ) -> int:
        """Join ``group`` and run ``handler`` (sync or async) on each postback, one at a time:
        acknowledge it when the handler returns, nack it (deliver again) when it raises.

        Runs until cancelled, or until ``max_messages`` postbacks were handled; returns how
        many were handled. Delivery is at least once, so the handler should be idempotent
        (``postback.mid`` is unique per tap).
        """
        handled = 0
        async with self.subscribe(
            account_ids=account_ids,
            payload_prefix=payload_prefix,
            start=start,
            group=group,
            ack_deadline=ack_deadline,
            max_unacked=max_unacked,
        ) as subscription:
            async for postback in subscription:
                ok = await _run_handler(handler, postback)
                await self._settle(group, postback, ok)
                handled += 1
                if max_messages is not None and handled >= max_messages:
                    break
        return handled

    # --- GroupService (needs an admin caller when callers are configured) ---

    async def list_groups(self, *, timeout: float | None = None) -> list[Group]:  # noqa: ASYNC109 - a gRPC deadline
        """Every group the caller may see, ordered by name (all pages)."""
        groups: list[Group] = []
        token = ""
        while True:
            request = group_service_pb2.ListGroupsRequest(page_size=1000, page_token=token)
            page = await self._unary(self._groups.ListGroups, request, timeout, safe=True)
            groups.extend(Group.from_proto(g) for g in page.groups)
            token = page.next_page_token
            if not token:
                return groups

    async def get_group(self, name: str, *, timeout: float | None = None) -> Group:  # noqa: ASYNC109 - a gRPC deadline
        """One group; ``name`` is its resource name, or the group's name in open mode."""
        request = group_service_pb2.GetGroupRequest(name=group_name(name))
        reply = await self._unary(self._groups.GetGroup, request, timeout, safe=True)
        return Group.from_proto(reply.group)

    async def delete_group(
        self,
        name: str,
        *,
        force: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline
    ) -> None:
        """Delete a group; refused (FAILED_PRECONDITION) with members connected unless
        ``force``."""
        request = group_service_pb2.DeleteGroupRequest(name=group_name(name), force=force)
        await self._unary(self._groups.DeleteGroup, request, timeout, safe=True)

    async def seek_group(
        self,
        name: str,
        *,
        after_sequence: int | None = None,
        since: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline,
    ) -> None:
        """Deliver again everything after ``after_sequence``, or received at or after
        ``since`` (timezone-aware)."""
        request = seek_request(name, after_sequence, since)
        await self._unary(self._groups.SeekGroup, request, timeout, safe=True)

    async def list_dead_letters(
        self,
        name: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline,
    ) -> DeadLetterPage:
        """One page of a group's dead letters, in sequence order."""
        request = group_service_pb2.ListDeadLettersRequest(
            parent=group_name(name), page_size=page_size, page_token=page_token
        )
        page = await self._unary(self._groups.ListDeadLetters, request, timeout, safe=True)
        letters = tuple(DeadLetter.from_proto(d) for d in page.dead_letters)
        return DeadLetterPage(letters, page.next_page_token)

    async def redrive_dead_letters(
        self,
        name: str,
        sequences: Iterable[int] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline,
    ) -> int:
        """Deliver these dead letters (None: all) again from attempt 1; how many were."""
        request = group_service_pb2.RedriveDeadLettersRequest(
            name=group_name(name), sequences=list(sequences or ()), all=sequences is None
        )
        reply = await self._unary(self._groups.RedriveDeadLetters, request, timeout, safe=True)
        return reply.redriven_count

    async def purge_dead_letters(self, name: str, *, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a gRPC deadline
        """Remove every dead letter of a group; how many there were."""
        request = group_service_pb2.PurgeDeadLettersRequest(name=group_name(name))
        reply = await self._unary(self._groups.PurgeDeadLetters, request, timeout, safe=True)
        return reply.purged_count

    async def modify_ack_deadline(
        self,
        name: str,
        ack_ids: Iterable[str],
        seconds: float,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline,
    ) -> AckResult:
        """Give held deliveries a new deadline ``seconds`` from now (0: nack them)."""
        request = group_service_pb2.ModifyAckDeadlineRequest(
            name=group_name(name), ack_ids=list(ack_ids), ack_deadline=deadline(seconds)
        )
        reply = await self._unary(self._groups.ModifyAckDeadline, request, timeout, safe=True)
        return AckResult(reply.applied_count, tuple(reply.unknown_ack_ids))

    async def get_messaging_window(
        self,
        recipient_id: str,
        *,
        account_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline
    ) -> MessagingWindow:
        """Whether a send to ``recipient_id`` is possible now, as igbutton knows it."""
        request = send_service_pb2.GetMessagingWindowRequest(
            account_id=account_id or "", recipient_id=recipient_id
        )
        reply = await self._unary(self._send.GetMessagingWindow, request, timeout, safe=True)
        return MessagingWindow.from_proto(reply)

    async def _settle(self, group: str, postback: Postback, ok: bool) -> None:
        ids = [postback.ack_id]
        try:
            await self.ack(group, ids if ok else (), () if ok else ids)
        except IgButtonError as err:
            # The postback comes again after its ack deadline: at-least-once still holds.
            log.warning("could not settle postback %s: %s", postback.sequence, err.describe())

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,  # noqa: ASYNC109 - a gRPC deadline, as in grpc.aio
        *,
        safe: bool,
        request_id: str | None = None,
    ) -> Resp:
        attempts = self._attempts(timeout)
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                delay = self._retry_delay(attempts, err, safe=safe, request_id=request_id)
                await asyncio.sleep(delay)


async def _run_handler(
    handler: Callable[[Postback], Awaitable[object] | object], p: Postback
) -> bool:
    try:
        result = handler(p)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("postback handler failed for sequence %s; nacking it", p.sequence)
        return False
    return True
