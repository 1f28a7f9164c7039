"""The sandbox's HTTP control API under ``/_sandbox/``, for the CLI and non-Python tests.

- ``GET /_sandbox/healthz`` -> 200
- ``GET /_sandbox/messages`` -> ``{"messages": [{message_id, account_id, recipient_id,
  accepted, status, body, path, received_at, token_generation}]}``
- ``POST /_sandbox/faults`` (Fault fields as JSON) -> 204; ``DELETE /_sandbox/faults`` -> 204;
  ``GET /_sandbox/faults`` -> ``{"faults": [{...Fault fields, "remaining"}]}``
- ``POST /_sandbox/reset`` -> 204
- ``POST /_sandbox/tap`` ``{"message_id", "button_index"?}`` -> 200 ``{mid, payload, title,
  webhook_status}``; 404 unknown message; 400 bad index or not a postback button; 409 no
  webhook configured.
- ``POST /_sandbox/test_delivery`` ``{"account_id"?, "payload"?}`` -> 200 ``{webhook_status}``:
  what the App Dashboard's Test button sends for ``messaging_postbacks`` (``changes`` form).
- ``GET /_sandbox/accounts/{id}`` -> ``{username, subscribed_fields, refreshes,
  refresh_calls, generation}`` (never a token); ``POST`` the same path with
  ``{"subscribed_fields": [...]}`` and/or ``{"username": ...}`` sets them (an empty list: the
  account is not subscribed, as before anyone enabled it) -> 204.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from igbutton_server.sandbox.faults import Fault

if TYPE_CHECKING:
    from igbutton_server.sandbox.server import Sandbox

_FAULT_FIELDS = frozenset(f.name for f in fields(Fault))
_FAULT_ADAPTER = TypeAdapter(Fault)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON object")
    if not isinstance(data, dict):
        return _error(400, "the body must be a JSON object")
    return data


def add_control_routes(app: web.Application, sandbox: Sandbox) -> None:
    """Serve the control API for ``sandbox`` on ``app``."""
    control = _Control(sandbox)
    app.router.add_get("/_sandbox/healthz", control.healthz)
    app.router.add_get("/_sandbox/messages", control.messages)
    app.router.add_post("/_sandbox/faults", control.add_fault)
    app.router.add_get("/_sandbox/faults", control.list_faults)
    app.router.add_delete("/_sandbox/faults", control.clear_faults)
    app.router.add_post("/_sandbox/reset", control.reset)
    app.router.add_post("/_sandbox/tap", control.tap)
    app.router.add_post("/_sandbox/test_delivery", control.test_delivery)
    app.router.add_get("/_sandbox/accounts/{account}", control.account)
    app.router.add_post("/_sandbox/accounts/{account}", control.set_account)


class _Control:
    """The control API's handlers, one per route, on one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def messages(self, _: web.Request) -> web.Response:
        listing = [
            {
                "message_id": r.message_id,
                "account_id": r.account_id,
                "recipient_id": r.recipient_id,
                "accepted": r.accepted,
                "status": r.status,
                "body": r.body,
                "path": r.path,
                "received_at": r.received_at,
                "token_generation": r.token_generation,
            }
            for r in self._sandbox.received
        ]
        return web.json_response({"messages": listing})

    async def add_fault(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        fault = _parse_fault(data)
        if isinstance(fault, web.Response):
            return fault
        self._sandbox.add_fault(fault)
        return web.Response(status=204)

    async def list_faults(self, _: web.Request) -> web.Response:
        listing = [{**asdict(fault), "remaining": left} for fault, left in self._sandbox.faults()]
        return web.json_response({"faults": listing})

    async def clear_faults(self, _: web.Request) -> web.Response:
        self._sandbox.clear_faults()
        return web.Response(status=204)

    async def reset(self, _: web.Request) -> web.Response:
        self._sandbox.reset()
        return web.Response(status=204)

    async def tap(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        args = _tap_args(data)
        if isinstance(args, web.Response):
            return args
        try:
            result = await self._sandbox.tap(*args)
        except LookupError as exc:
            return _error(404, str(exc.args[0]) if exc.args else "unknown message")
        except ValueError as exc:
            return _error(400, str(exc))
        except RuntimeError as exc:
            return _error(409, str(exc))
        return web.json_response(
            {
                "mid": result.mid,
                "payload": result.payload,
                "title": result.title,
                "webhook_status": result.webhook_status,
                "webhook_error": result.webhook_error,
            }
        )

    async def test_delivery(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        account = data.get("account_id", "0")
        payload = data.get("payload", "TEST_PAYLOAD")
        if not isinstance(account, str) or not isinstance(payload, str):
            return _error(400, "account_id and payload must be strings")
        try:
            status = await self._sandbox.send_test_delivery(account_id=account, payload=payload)
        except RuntimeError as exc:
            return _error(409, str(exc))
        return web.json_response({"webhook_status": status})

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self._sandbox.account_state(request.match_info["account"])))

    async def set_account(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        state = self._sandbox.account_state(request.match_info["account"])
        fields = data.get("subscribed_fields")
        if fields is not None:
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                return _error(400, "subscribed_fields must be a list of strings")
            state.subscribed_fields = list(dict.fromkeys(fields))
        username = data.get("username")
        if username is not None:
            if not isinstance(username, str):
                return _error(400, "username must be a string")
            state.username = username
        return web.Response(status=204)


def _parse_fault(data: dict[str, Any]) -> Fault | web.Response:
    """The Fault a POST /faults body describes, or the 400 response saying what is wrong."""
    unknown = sorted(set(data) - _FAULT_FIELDS)
    if unknown:
        return _error(400, f"unknown fault fields: {', '.join(unknown)}")
    try:
        return _FAULT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'fault'}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, f"invalid fault: {problems}")


def _tap_args(data: dict[str, Any]) -> tuple[str, int] | web.Response:
    """(message_id, button_index) of a POST /tap body, or the 400 response saying what is
    wrong."""
    message_id = data.get("message_id")
    index = data.get("button_index", 0)
    if not isinstance(message_id, str) or not message_id:
        return _error(400, "message_id (a non-empty string) is required")
    if not isinstance(index, int) or isinstance(index, bool):
        return _error(400, "button_index must be an integer")
    return message_id, index
