"""The blocking client: the same API as :class:`igbutton.AsyncClient`, without asyncio.

with Client("127.0.0.1:50051") as client:
    sent = client.send_button_template(
        "1234567890", template("Pick one", PostbackButton("Yes", "ANSWER_YES")))
    for postback in client.subscribe(payload_prefix="ANSWER_"):
        print(postback.payload)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self, TypeVar

import grpc

from igbutton import _channel, _requests
from igbutton._base_client import BaseClient
from igbutton._requests import StartSpec, SubscribeOptions
from igbutton._subscription import OnDisconnect, SubscribeRequest, Subscription, SyncStream
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

log = logging.getLogger("igbutton")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Client(BaseClient[grpc.Channel]):
    """A blocking client for SendService and PostbackService.

    ``target`` is ``host:port``. ``token`` is the caller's bearer token. ``tls`` is ``True``
    (system roots), a :class:`Tls` (own CA, mutual TLS) or ``None`` (plaintext, for local use).
    ``channel`` replaces all of these with a channel you built. ``timeout`` is the default
    deadline, in seconds, for unary calls including their retries (``None``: no deadline).
    Close the client when done (``with Client(...) as client``).
    """

    _open_channel = staticmethod(_channel.sync_channel)

    def _open_stubs(self, channel: grpc.Channel) -> None:
        self._send = send_service_pb2_grpc.SendServiceStub(channel)
        self._postbacks = postback_service_pb2_grpc.PostbackServiceStub(channel)
        self._groups = group_service_pb2_grpc.GroupServiceStub(channel)

    def close(self) -> None:
        """Close the channel (if this client created it); open calls are cancelled."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send_button_template(
        self,
        recipient_id: str,
        text_or_template: str | ButtonTemplate,
        buttons: Iterable[Button] = (),
        *,
        account_id: str | None = None,
        request_id: str | None = None,
        tag: str | None = None,
        timeout: float | None = None,
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
        response = self._unary(
            self._send.SendButtonTemplate, request, timeout, safe=True, request_id=rid
        )
        return SendResult.from_proto(response, rid)

    def validate_button_template(
        self,
        recipient_id: str,
        text_or_template: str | ButtonTemplate,
        buttons: Iterable[Button] = (),
        *,
        account_id: str | None = None,
        tag: str | None = None,
        timeout: float | None = None,
    ) -> ValidationResult:
        """Check a send without sending: raises :class:`InvalidRequestError` listing every
        violation, or returns the exact Graph API request igbutton would make."""
        request = _requests.validate_request(
            recipient_id, text_or_template, buttons, account_id=account_id, tag=tag
        )
        response = self._unary(self._send.ValidateButtonTemplate, request, timeout, safe=True)
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
    ) -> Subscription:
        """Stream postbacks: ``for postback in client.subscribe(...)``.

        The arguments are those of :meth:`igbutton.AsyncClient.subscribe`. The iterator
        reconnects after UNAVAILABLE (or a CANCELLED from the server) and resumes without a
        gap or a duplicate; call ``close()`` on it (from any thread) to stop.
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

        def open_stream(request: SubscribeRequest) -> SyncStream:
            return self._postbacks.SubscribePostbacks(request, metadata=self._metadata)

        return Subscription(open_stream, options, self._reconnect, on_disconnect)

    def ack(
        self,
        group: str,
        ack_ids: Iterable[str] = (),
        nack_ids: Iterable[str] = (),
        *,
        timeout: float | None = None,
    ) -> AckResult:
        """Acknowledge postbacks delivered to ``group`` (done with), or nack them (deliver
        again at once)."""
        request = _requests.ack_request(group, ack_ids, nack_ids)
        response = self._unary(self._postbacks.AckPostbacks, request, timeout, safe=True)
        return AckResult.from_proto(response)

    def consume(
        self,
        group: str,
        handler: Callable[[Postback], object],
        *,
        account_ids: Iterable[str] = (),
        payload_prefix: str = "",
        start: StartSpec = None,
        ack_deadline: float | timedelta | None = None,
        max_unacked: int | None = None,
        max_messages: int | None = None,
    ) -> int:
        """Join ``group`` and run ``handler`` on each postback, one at a time: acknowledge it
        when the handler returns, nack it (deliver again) when it raises.

        Runs until ``max_messages`` postbacks were handled (or forever); returns how many
        were handled. Delivery is at least once, so the handler should be idempotent.
        """
        handled = 0
        with self.subscribe(
            account_ids=account_ids,
            payload_prefix=payload_prefix,
            start=start,
            group=group,
            ack_deadline=ack_deadline,
            max_unacked=max_unacked,
        ) as subscription:
            for postback in subscription:
                try:
                    handler(postback)
                except Exception:
                    log.exception("postback handler failed for sequence %s", postback.sequence)
                    self._settle(group, postback, ok=False)
                else:
                    self._settle(group, postback, ok=True)
                handled += 1
                if max_messages is not None and handled >= max_messages:
                    break
        return handled

    # --- GroupService (needs an admin caller when callers are configured) ---

    def list_groups(self, *, timeout: float | None = None) -> list[Group]:
        """Every group the caller may see, ordered by name (all pages)."""
        groups: list[Group] = []
        token = ""
        while True:
            request = group_service_pb2.ListGroupsRequest(page_size=1000, page_token=token)
            page = self._unary(self._groups.ListGroups, request, timeout, safe=True)
            groups.extend(Group.from_proto(g) for g in page.groups)
            token = page.next_page_token
            if not token:
                return groups

    def get_group(self, name: str, *, timeout: float | None = None) -> Group:
        """One group; ``name`` is its resource name, or the group's name in open mode."""
        request = group_service_pb2.GetGroupRequest(name=group_name(name))
        return Group.from_proto(
            self._unary(self._groups.GetGroup, request, timeout, safe=True).group
        )

    def delete_group(self, name: str, *, force: bool = False, timeout: float | None = None) -> None:
        """Delete a group; refused (FAILED_PRECONDITION) with members connected unless
        ``force``."""
        request = group_service_pb2.DeleteGroupRequest(name=group_name(name), force=force)
        self._unary(self._groups.DeleteGroup, request, timeout, safe=True)

    def seek_group(
        self,
        name: str,
        *,
        after_sequence: int | None = None,
        since: datetime | None = None,
        timeout: float | None = None,
    ) -> None:
        """Deliver again everything after ``after_sequence``, or received at or after
        ``since`` (timezone-aware)."""
        request = seek_request(name, after_sequence, since)
        self._unary(self._groups.SeekGroup, request, timeout, safe=True)

    def list_dead_letters(
        self,
        name: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> DeadLetterPage:
        """One page of a group's dead letters, in sequence order."""
        request = group_service_pb2.ListDeadLettersRequest(
            parent=group_name(name), page_size=page_size, page_token=page_token
        )
        page = self._unary(self._groups.ListDeadLetters, request, timeout, safe=True)
        letters = tuple(DeadLetter.from_proto(d) for d in page.dead_letters)
        return DeadLetterPage(letters, page.next_page_token)

    def redrive_dead_letters(
        self,
        name: str,
        sequences: Iterable[int] | None = None,
        *,
        timeout: float | None = None,
    ) -> int:
        """Deliver these dead letters (None: all) again from attempt 1; how many were."""
        request = group_service_pb2.RedriveDeadLettersRequest(
            name=group_name(name), sequences=list(sequences or ()), all=sequences is None
        )
        reply = self._unary(self._groups.RedriveDeadLetters, request, timeout, safe=True)
        return reply.redriven_count

    def purge_dead_letters(self, name: str, *, timeout: float | None = None) -> int:
        """Remove every dead letter of a group; how many there were."""
        request = group_service_pb2.PurgeDeadLettersRequest(name=group_name(name))
        return self._unary(self._groups.PurgeDeadLetters, request, timeout, safe=True).purged_count

    def modify_ack_deadline(
        self,
        name: str,
        ack_ids: Iterable[str],
        seconds: float,
        *,
        timeout: float | None = None,
    ) -> AckResult:
        """Give held deliveries a new deadline ``seconds`` from now (0: nack them)."""
        request = group_service_pb2.ModifyAckDeadlineRequest(
            name=group_name(name), ack_ids=list(ack_ids), ack_deadline=deadline(seconds)
        )
        reply = self._unary(self._groups.ModifyAckDeadline, request, timeout, safe=True)
        return AckResult(reply.applied_count, tuple(reply.unknown_ack_ids))

    def get_messaging_window(
        self, recipient_id: str, *, account_id: str | None = None, timeout: float | None = None
    ) -> MessagingWindow:
        """Whether a send to ``recipient_id`` is possible now, as igbutton knows it."""
        request = send_service_pb2.GetMessagingWindowRequest(
            account_id=account_id or "", recipient_id=recipient_id
        )
        reply = self._unary(self._send.GetMessagingWindow, request, timeout, safe=True)
        return MessagingWindow.from_proto(reply)

    def _settle(self, group: str, postback: Postback, *, ok: bool) -> None:
        ids = [postback.ack_id]
        try:
            self.ack(group, ids if ok else (), () if ok else ids)
        except IgButtonError as err:
            # The postback comes again after its ack deadline: at-least-once still holds.
            log.warning("could not settle postback %s: %s", postback.sequence, err.describe())

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None,
        *,
        safe: bool,
        request_id: str | None = None,
    ) -> Resp:
        attempts = self._attempts(timeout)
        while True:
            try:
                response: Resp = method(
                    request, timeout=attempts.remaining(), metadata=self._metadata
                )
                return response
            except grpc.RpcError as err:
                delay = self._retry_delay(attempts, err, safe=safe, request_id=request_id)
                time.sleep(delay)
