"""SendService: the gRPC face of the send path.

Each call goes validate → check the caller's account → translate → (idempotency) →
rate limit + Graph client, inside the caller's deadline. Failures are raised; the RPC
middleware turns them into statuses (igbutton_server.rpc_middleware). A cancelled call
cancels the HTTP request it started.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from igbutton.v1 import errors_pb2, send_service_pb2, send_service_pb2_grpc
from igbutton_server import auth, metrics
from igbutton_server.accounts.tokens import AccountTokens
from igbutton_server.config import Settings
from igbutton_server.errors import ApiError
from igbutton_server.send.graph_client import GraphClient
from igbutton_server.send.idempotency import IdempotentSends, fingerprint
from igbutton_server.send.outcome import SendResult, SendTracker
from igbutton_server.send.translate import GraphRequest, to_graph_request
from igbutton_server.send.validation import (
    SendRequest,
    ValidSend,
    validate_send,
    validate_window_request,
)
from igbutton_server.send.window import MessagingWindows, WindowState, now_ms

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

# Part of the caller's time kept back so igbutton's own answer (with its ErrorInfo)
# reaches the caller before the caller's deadline fires.
_ANSWER_MARGIN_SECONDS = 0.1
_ANSWER_MARGIN_FRACTION = 0.1

_TOKEN_INVALID = errors_pb2.ErrorReason.ERROR_REASON_ACCESS_TOKEN_INVALID
_WINDOW_STATES = {
    WindowState.OPEN: send_service_pb2.MESSAGING_WINDOW_STATE_OPEN,
    WindowState.CLOSED: send_service_pb2.MESSAGING_WINDOW_STATE_CLOSED,
    WindowState.UNKNOWN: send_service_pb2.MESSAGING_WINDOW_STATE_UNKNOWN,
}

_SENT = metrics.SENDS.labels("sent")
_REPLAYED = metrics.SENDS.labels("replayed")
_FAILED = metrics.SENDS.labels("failed")


class SendServiceServicer(send_service_pb2_grpc.SendServiceServicer):
    """SendButtonTemplate and its dry run ValidateButtonTemplate."""

    def __init__(
        self,
        settings: Settings,
        graph: GraphClient,
        sends: IdempotentSends,
        windows: MessagingWindows | None = None,
    ) -> None:
        self._settings = settings
        self._graph = graph
        self._sends = sends
        self.tokens: AccountTokens | None = None
        """Each account's current token; None: the configured tokens, as they were read."""
        self._windows = windows

    async def SendButtonTemplate(
        self, request: send_service_pb2.SendButtonTemplateRequest, context: Context
    ) -> send_service_pb2.SendButtonTemplateResponse:
        """Send one button template message."""
        return await self.send_button_template(request, self._timeout(context))

    async def send_button_template(
        self, request: send_service_pb2.SendButtonTemplateRequest, time_left: float
    ) -> send_service_pb2.SendButtonTemplateResponse:
        """What SendButtonTemplate does, within ``time_left`` seconds, for the caller in
        ``auth.current_caller``: the one send path, which the web console uses too. Raises
        ApiError for expected failures."""
        try:
            valid, graph_request = self._prepare(request)
            result, replayed = await self._send(valid, graph_request, time_left)
        except Exception as error:
            _FAILED.inc()
            # Only expected failures are logged here: the middleware logs a bug, with its trace.
            if isinstance(error, ApiError):
                log.info(
                    "send failed",
                    extra={
                        "reason": errors_pb2.ErrorReason.Name(error.reason),
                        "grpc_code": error.code.name,
                        "error": str(error),
                    },
                )
            raise
        (_REPLAYED if replayed else _SENT).inc()
        # DEBUG, not INFO: a line per success cost 8 % of the event loop under load (py-spy,
        # docs/performance.md), and metrics and traces already count and follow successes.
        log.debug(
            "replayed" if replayed else "sent",
            extra={"account_id": valid.account.id, "message_id": result.message_id},
        )
        return send_service_pb2.SendButtonTemplateResponse(
            recipient_id=result.recipient_id, message_id=result.message_id
        )

    async def ValidateButtonTemplate(
        self, request: send_service_pb2.ValidateButtonTemplateRequest, _context: Context
    ) -> send_service_pb2.ValidateButtonTemplateResponse:
        """Validate without sending; return the Graph request that would be made."""
        return self.validate_button_template(request)

    def validate_button_template(
        self, request: send_service_pb2.ValidateButtonTemplateRequest
    ) -> send_service_pb2.ValidateButtonTemplateResponse:
        """What ValidateButtonTemplate does (the web console's preview asks it too): raises
        InvalidRequest with every violation, or returns the Graph request."""
        _, graph_request = self._prepare(request)
        return send_service_pb2.ValidateButtonTemplateResponse(
            method="POST", url=graph_request.url, body_json=graph_request.body_json
        )

    async def GetMessagingWindow(
        self, request: send_service_pb2.GetMessagingWindowRequest, _context: Context
    ) -> send_service_pb2.GetMessagingWindowResponse:
        """The person's messaging window as igbutton knows it."""
        if request.account_id and not auth.caller_may_use(request.account_id):
            raise auth.account_not_allowed(request.account_id)
        account, recipient = validate_window_request(
            request.account_id, request.recipient_id, self._settings
        )
        if not auth.caller_may_use(account.id):
            raise auth.account_not_allowed(account.id)
        answer = send_service_pb2.GetMessagingWindowResponse(
            state=send_service_pb2.MESSAGING_WINDOW_STATE_UNKNOWN,
            human_agent_state=send_service_pb2.MESSAGING_WINDOW_STATE_UNKNOWN,
        )
        if self._windows is None:
            return answer
        window = await self._windows.window(account.id, recipient)
        if window.last_message_ms is None:
            return answer
        now = now_ms()
        answer.last_message_time.FromMilliseconds(window.last_message_ms)
        answer.state = _WINDOW_STATES[window.state(now)]
        answer.close_time.FromMilliseconds(window.closes_ms() or 0)
        answer.human_agent_state = _WINDOW_STATES[window.state(now, human_agent=True)]
        answer.human_agent_close_time.FromMilliseconds(window.closes_ms(human_agent=True) or 0)
        return answer

    def _prepare(self, request: SendRequest) -> tuple[ValidSend, GraphRequest]:
        # Permission first for a named account, so a caller learns nothing about
        # accounts it may not use; then every violation at once.
        if request.account_id and not auth.caller_may_use(request.account_id):
            raise auth.account_not_allowed(request.account_id)
        valid = validate_send(request, self._settings)
        if not auth.caller_may_use(valid.account.id):
            raise auth.account_not_allowed(valid.account.id)
        graph = self._settings.graph
        return valid, to_graph_request(valid, graph.base_url, graph.api_version)

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._settings.graph.default_timeout_seconds
        margin = min(_ANSWER_MARGIN_SECONDS, remaining * _ANSWER_MARGIN_FRACTION)
        return max(remaining - margin, 0.0)

    async def _send(
        self, valid: ValidSend, request: GraphRequest, time_left: float
    ) -> tuple[SendResult, bool]:
        """The result, and whether it is a replay of an earlier call's."""
        deadline = time.monotonic() + time_left
        tokens = self.tokens
        account_id = valid.account.id
        if tokens is not None:
            tokens.require_usable(account_id)
        token = valid.account.token() if tokens is None else tokens.token(account_id)
        sent = False

        async def send(tracker: SendTracker) -> SendResult:
            nonlocal sent
            # Here, not before: a repeat of a request_id replays its first result.
            if self._windows is not None:
                await self._windows.check_send(
                    valid.account.id, valid.recipient_id, valid.human_agent
                )
            sent = True
            try:
                return await self._graph.send(request, token, deadline, tracker)
            except ApiError as error:
                if tokens is not None and error.reason == _TOKEN_INVALID:
                    await tokens.rejected(account_id, token)
                raise

        if not valid.request_id:
            return await send(SendTracker()), False
        fp = fingerprint(valid.account.id, request.body_json)
        slot = _AccountSlot(self._graph, valid.account.id)
        result = await self._sends.run(valid.request_id, fp, time_left, send, slot)
        return result, not sent


class _AccountSlot:
    """The send's rate-limit slot in the Graph client's limiter (IdempotentSends' SendSlot)."""

    __slots__ = ("_account_id", "_graph")

    def __init__(self, graph: GraphClient, account_id: str) -> None:
        self._graph = graph
        self._account_id = account_id

    def take_now(self) -> bool:
        return self._graph.take_slot_now(self._account_id)

    def give_back(self) -> None:
        self._graph.give_back_slot(self._account_id)
