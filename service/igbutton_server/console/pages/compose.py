"""Compose & preview: a template as the person will see it, checked as igbutton checks it.

The browser sends the request (the JSON of ``SendButtonTemplateRequest``, as grpcurl
takes it) on every change; the answer holds every violation of ``ValidateButtonTemplate``
(the very function the RPC runs, so the rules live in ``send/validation.py`` alone), the
exact Graph request, and the same send as ``igbutton send``, grpcurl, Python, Go and
TypeScript. In sandbox mode the Send button sends it through ``SendButtonTemplate``'s own
path (validation, idempotency, rate limit, Graph client) to the sandbox.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from igbutton.v1 import send_service_pb2
from igbutton_server import auth
from igbutton_server.console.pages import SESSION_KEY, ConsoleContext, Page, Route
from igbutton_server.console.snippets import Connection, all_snippets
from igbutton_server.errors import ApiError, api_error, reason_name
from igbutton_server.send import validation

_MAX_REQUEST_BYTES = 64 * 1024
EXAMPLE_RECIPIENT = "1254477777772919"


def _as_caller(request: web.Request) -> None:
    """Run the send path as the logged-in caller, so its account permissions apply."""
    auth.current_caller.set(request[SESSION_KEY].caller)


def error_json(error: ApiError) -> dict[str, Any]:
    """An ApiError as the console's JSON shows it: the gRPC status it would have."""
    return {
        "code": error.code.name,
        "reason": reason_name(error.reason),
        "message": error.message,
    }


def _violations(error: ApiError) -> list[dict[str, str]]:
    return [{"field": v.field, "description": v.description} for v in error.violations]


async def _read_request(request: web.Request) -> send_service_pb2.SendButtonTemplateRequest:
    """The posted SendButtonTemplateRequest JSON; a problem with it is a violation of the
    field ``json``."""
    raw = await request.content.read(_MAX_REQUEST_BYTES + 1)
    if len(raw) > _MAX_REQUEST_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=_MAX_REQUEST_BYTES, actual_size=request.content_length or len(raw)
        )
    message = send_service_pb2.SendButtonTemplateRequest()
    try:
        json_format.Parse(raw.decode(), message)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise _JsonProblem(str(exc)) from None
    return message


class _JsonProblem(Exception):
    pass


def _connection(ctx: ConsoleContext) -> Connection:
    return Connection(
        target=ctx.grpc_target,
        tls=ctx.settings.grpc.tls.enabled,
        auth=bool(ctx.settings.callers),
    )


async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    accounts = [a.id for a in ctx.settings.accounts]
    return ctx.render(
        request,
        "compose.html",
        limits={
            "text": validation.TEXT_MAX,
            "title": validation.TITLE_MAX,
            "payload": validation.PAYLOAD_MAX,
            "url": validation.URL_MAX,
            "buttons": validation.BUTTONS_MAX,
        },
        accounts=accounts,
        recipient=EXAMPLE_RECIPIENT,
    )


async def _validate(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    try:
        send = await _read_request(request)
    except _JsonProblem as exc:
        return web.json_response(
            {"violations": [{"field": "json", "description": str(exc)}], "error": None}
        )
    _as_caller(request)
    check = send_service_pb2.ValidateButtonTemplateRequest(
        account_id=send.account_id,
        recipient_id=send.recipient_id,
        template=send.template,
        tag=send.tag,
    )
    answer: dict[str, Any] = {
        "violations": [],
        "error": None,
        "graph": None,
        "snippets": all_snippets(send, _connection(ctx)),
    }
    try:
        graph = ctx.sends.validate_button_template(check)
    except ApiError as error:
        answer["violations"] = _violations(error)
        answer["error"] = error_json(error)
    else:
        answer["graph"] = {
            "method": graph.method,
            "url": graph.url,
            "body": json.loads(graph.body_json),
        }
    return web.json_response(answer)


async def _send(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
    if ctx.sandbox is None:
        raise web.HTTPNotFound(text="the console sends only in sandbox mode")
    try:
        send = await _read_request(request)
    except _JsonProblem as exc:
        return web.json_response(
            {"violations": [{"field": "json", "description": str(exc)}], "error": None}
        )
    if not send.request_id:
        send.request_id = str(uuid.uuid4())
    _as_caller(request)
    # The deadline a gRPC caller without one gets.
    timeout = ctx.settings.graph.default_timeout_seconds
    try:
        sent = await ctx.sends.send_button_template(send, timeout)
    except Exception as exc:
        # What the RPC would answer (errors.api_error, the one mapping: a storage outage is
        # UNAVAILABLE); a bug propagates, and aiohttp logs it with its trace.
        error = api_error(exc)
        if error is None:
            raise
        return web.json_response({"violations": _violations(error), "error": error_json(error)})
    return web.json_response(
        {
            "violations": [],
            "error": None,
            "sent": {
                "message_id": sent.message_id,
                "recipient_id": sent.recipient_id,
                "request_id": send.request_id,
            },
        }
    )


PAGE = Page(
    slug="compose",
    title="Compose & preview",
    order=10,
    routes=(
        Route("GET", "", _page),
        Route("POST", "/validate", _validate),
        Route("POST", "/send", _send),
    ),
)
