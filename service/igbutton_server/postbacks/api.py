"""PostbackService: the log as gRPC streams, broadcast or shared by a consumer group.

A stream sends its initial metadata once its start position is fixed (the subscription
exists), so a client that waits for it knows every later postback will reach it. A stream
only ever ends because the client cancels or the server stops; the latter ends it with
UNAVAILABLE / SHUTTING_DOWN so clients reconnect (after_sequence for broadcast, the same
group name for groups).

Group names are the caller's own: the store keys a group by the caller's scope and the
name (``group_key``), so two callers may each have a group "orders" and neither sees,
blocks or learns of the other's. In open mode (no callers configured) everyone shares one
scope, whose keys are the bare names groups had before scopes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from igbutton.v1 import postback_service_pb2, postback_service_pb2_grpc
from igbutton_server import metrics
from igbutton_server.auth import account_not_allowed, current_caller
from igbutton_server.config import PostbackSettings
from igbutton_server.errors import ShuttingDown
from igbutton_server.postbacks.requests import SubscribeSpec, check_ack_request, subscribe_spec
from igbutton_server.storage.postbacks import (
    Delivery,
    GroupMember,
    PostbackStore,
    StoredPostback,
    Subscription,
    caller_scope,
    group_key,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

CallerAccounts = Callable[[Context], frozenset[str] | None]
"""The accounts the calling service may read; None means all."""


def authenticated_caller_accounts(_: Context) -> frozenset[str] | None:
    """The accounts of the caller service.auth identified (all in open mode or for ``*``)."""
    caller = current_caller.get()
    if caller is None or "*" in caller.accounts:
        return None
    return frozenset(caller.accounts)


CallerScope = Callable[[Context], str | None]
"""The calling service's group scope; None is the shared scope of open mode."""


def authenticated_caller_scope(_: Context) -> str | None:
    """The group scope of the caller service.auth identified (None in open mode)."""
    caller = current_caller.get()
    return None if caller is None else caller_scope(caller.name)


def postback_message(postback: StoredPostback) -> postback_service_pb2.Postback:
    """The proto form of a stored postback."""
    message = postback_service_pb2.Postback(
        sequence=postback.sequence,
        account_id=postback.account_id,
        sender_id=postback.sender_id,
        mid=postback.mid,
        title=postback.title,
        payload=postback.payload,
        raw_json=postback.raw_json,
        standby=postback.standby,
        test=postback.test,
    )
    if postback.tap_time_ms:
        message.tap_time.FromMilliseconds(postback.tap_time_ms)
    message.receive_time.FromMilliseconds(postback.received_ms)
    return message


def _response(item: StoredPostback | Delivery) -> postback_service_pb2.SubscribePostbacksResponse:
    if isinstance(item, Delivery):
        return postback_service_pb2.SubscribePostbacksResponse(
            postback=postback_message(item.postback),
            ack_id=item.ack_id,
            delivery_attempt=item.attempt,
        )
    return postback_service_pb2.SubscribePostbacksResponse(postback=postback_message(item))


class PostbackApi(postback_service_pb2_grpc.PostbackServiceServicer):
    """The PostbackService servicer over a PostbackStore."""

    def __init__(
        self,
        store: PostbackStore,
        settings: PostbackSettings,
        caller_accounts: CallerAccounts = authenticated_caller_accounts,
        caller_scope: CallerScope = authenticated_caller_scope,
    ) -> None:
        self._store = store
        self._settings = settings
        self._caller_accounts = caller_accounts
        self._caller_scope = caller_scope
        self._open: set[Subscription | GroupMember] = set()
        self._closing = False

    async def shutdown(self) -> None:
        """End every open stream with UNAVAILABLE and refuse new ones."""
        self._closing = True
        for source in list(self._open):
            await source.close()

    async def _open_source(
        self, spec: SubscribeSpec, scope: str | None
    ) -> Subscription | GroupMember:
        if spec.options is None:
            return await self._store.subscribe(spec.filter, spec.start)
        return await self._store.join_group(
            group_key(scope, spec.group),
            spec.filter,
            spec.start,
            spec.options,
            max_groups=self._settings.max_groups_per_caller,
        )

    async def SubscribePostbacks(
        self,
        request: postback_service_pb2.SubscribePostbacksRequest,
        context: Context,
    ) -> AsyncIterator[postback_service_pb2.SubscribePostbacksResponse]:
        """Stream matching postbacks until the client cancels or the server stops."""
        if self._closing:
            raise ShuttingDown()
        spec = subscribe_spec(request, self._settings, self._caller_accounts(context))
        source = await self._open_source(spec, self._caller_scope(context))
        kind = "group" if spec.options is not None else "broadcast"
        self._open.add(source)
        metrics.SUBSCRIBERS.labels(kind=kind).inc()
        log.info(
            "postback subscription opened",
            extra={"group": spec.group or None, "start": spec.start.kind.value},
        )
        try:
            if self._closing:  # shutdown began while we were opening
                await source.close()
            await context.send_initial_metadata(())
            async for item in source:
                yield _response(item)
        finally:
            self._open.discard(source)
            metrics.SUBSCRIBERS.labels(kind=kind).dec()
            await source.close()
        # A source ends only when it or the store is closed: the server is stopping.
        raise ShuttingDown()

    async def _check_group_allowed(self, group: str, allowed: frozenset[str] | None) -> None:
        """A restricted caller may ack only in groups limited to its own accounts (its own
        groups are, unless its accounts were narrowed since the group was made)."""
        if allowed is None:
            return
        info = await self._store.group_info(group)
        if info is None:
            return  # every id will be reported unknown
        outside = sorted(info.filter.account_ids - allowed) or (
            [] if info.filter.account_ids else ["*"]
        )
        if outside:
            raise account_not_allowed(outside[0])

    async def AckPostbacks(
        self,
        request: postback_service_pb2.AckPostbacksRequest,
        context: Context,
    ) -> postback_service_pb2.AckPostbacksResponse:
        """Acknowledge or nack deliveries of a group."""
        check_ack_request(request)
        group = group_key(self._caller_scope(context), request.group)
        await self._check_group_allowed(group, self._caller_accounts(context))
        result = await self._store.ack(group, request.ack_ids, request.nack_ids)
        return postback_service_pb2.AckPostbacksResponse(
            applied_count=result.applied, unknown_ack_ids=result.unknown
        )
