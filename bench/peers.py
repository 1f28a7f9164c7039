"""The seed's button template sent the way each library's users send it, to the sandbox.

igbutton's own clients and the libraries a Python team would use instead:

- ``igbutton_async``: :class:`igbutton.AsyncClient` with its defaults (a ``request_id`` on
  every send, so every send is idempotent and claims a record in igbutton's store);
- ``igbutton_sync``: :class:`igbutton.Client`, the same defaults, shared by a thread pool;
- ``fbmessenger``: ``fbmessenger.MessengerClient(token).send(ButtonTemplate(...).to_dict())``;
- ``pymessenger``: ``pymessenger.Bot(token).send_button_message(...)``;
- ``aiohttp``: a direct ``session.post(..., json=body)`` to the Graph API, parsing the JSON.

fbmessenger and pymessenger hard-code ``https://graph.facebook.com/v{api_version}`` in
their constructors, but keep it in the public instance attribute ``graph_url`` that every
send formats its URL from (``{graph_url}/me/messages``): setting that attribute after
construction points them at the sandbox without patching either library. The sandbox
resolves ``me`` to the account of the access token, as Meta does.

fbmessenger 6.0.0 (its latest release, 2018) installs on Python 3.11 but its templates test
``isinstance(buttons, collections.Iterable)``, an alias Python 3.10 removed: building any
template raises AttributeError. Its users on 3.10+ restore the alias
(``collections.Iterable = collections.abc.Iterable``) before importing it, and so does
:func:`fbmessenger_send`. Its ``MessengerClient.send`` always adds
``notification_type`` (a Messenger-only field), which Instagram's API, and so the sandbox,
refuses with ``(#100) Unsupported parameters: notification_type``; an Instagram team
overrides ``send`` without it (:func:`instagram_messenger_client`: the library's own method
less that field, on its session, URL and auth arguments).
"""

from __future__ import annotations

import collections
import collections.abc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

import igbutton
from bench import payloads

SyncSend = Callable[[], None]
AsyncSend = Callable[[], Awaitable[None]]

THREAD_LIBRARIES = ("fbmessenger", "pymessenger", "igbutton_sync")
"""The libraries whose users call them from a pool of threads."""


class SendFailed(Exception):
    """A send the sandbox did not accept (its answer has no message_id)."""


def _check(answer: Any) -> None:
    if not isinstance(answer, dict) or "message_id" not in answer:
        raise SendFailed(str(answer)[:200])


def _buttons() -> list[igbutton.Button]:
    return [
        igbutton.UrlButton("Visit Instagram", payloads.URL),
        igbutton.PostbackButton("postback button", payloads.PAYLOAD),
    ]


def graph_base(sandbox_url: str) -> str:
    """What the libraries' ``graph_url`` becomes: the sandbox with the Graph version."""
    return f"{sandbox_url}/{payloads.GRAPH_VERSION}"


def instagram_messenger_client() -> type[Any]:
    """fbmessenger's MessengerClient with ``send`` less ``notification_type`` (see above)."""
    import fbmessenger

    class InstagramMessengerClient(fbmessenger.MessengerClient):  # type: ignore[misc]
        """fbmessenger's client with ``send`` as in the library, less ``notification_type``."""

        def send(
            self,
            payload: dict[str, Any],
            recipient_id: str,
            messaging_type: str = "RESPONSE",
            timeout: float | None = None,
            tag: str | None = None,
        ) -> Any:
            """POST ``{graph_url}/me/messages`` with the library's session and auth arguments."""
            body: dict[str, Any] = {
                "messaging_type": messaging_type,
                "recipient": {"id": recipient_id},
                "message": payload,
            }
            if tag:
                body["tag"] = tag
            response = self.session.post(
                f"{self.graph_url}/me/messages", params=self.auth_args, json=body, timeout=timeout
            )
            return response.json()

    return InstagramMessengerClient


def fbmessenger_send(sandbox_url: str) -> SyncSend:
    """One MessengerClient (with its own requests.Session) sending the seed's template."""
    if not hasattr(collections, "Iterable"):
        collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]
    from fbmessenger import elements, templates

    client = instagram_messenger_client()(
        payloads.ACCESS_TOKEN, api_version=payloads.GRAPH_VERSION.removeprefix("v")
    )
    client.graph_url = graph_base(sandbox_url)

    def send() -> None:
        # Built per message, as an application does (its text and buttons vary).
        template = templates.ButtonTemplate(
            text=payloads.TEXT,
            buttons=[
                elements.Button("web_url", title="Visit Instagram", url=payloads.URL),
                elements.Button("postback", title="postback button", payload=payloads.PAYLOAD),
            ],
        )
        _check(client.send(template.to_dict(), payloads.RECIPIENT_ID, timeout=10))

    return send


def pymessenger_send(sandbox_url: str) -> SyncSend:
    """A pymessenger Bot sending the seed's template (``requests.post``, no session)."""
    import pymessenger

    bot = pymessenger.Bot(payloads.ACCESS_TOKEN, api_version=payloads.GRAPH_VERSION[1:])
    bot.graph_url = graph_base(sandbox_url)
    buttons = [
        {"type": "web_url", "url": payloads.URL, "title": "Visit Instagram"},
        {"type": "postback", "payload": payloads.PAYLOAD, "title": "postback button"},
    ]

    def send() -> None:
        _check(bot.send_button_message(payloads.RECIPIENT_ID, payloads.TEXT, buttons))

    return send


def igbutton_sync_send(client: igbutton.Client) -> SyncSend:
    """igbutton's blocking client with its defaults (a request_id per send)."""
    buttons = _buttons()

    def send() -> None:
        client.send_button_template(
            payloads.RECIPIENT_ID, payloads.TEXT, buttons, account_id=payloads.ACCOUNT_ID
        )

    return send


def igbutton_async_send(client: igbutton.AsyncClient) -> AsyncSend:
    """igbutton's asyncio client with its defaults (a request_id per send)."""
    buttons = _buttons()

    async def send() -> None:
        await client.send_button_template(
            payloads.RECIPIENT_ID, payloads.TEXT, buttons, account_id=payloads.ACCOUNT_ID
        )

    return send


def aiohttp_send(session: aiohttp.ClientSession, sandbox_url: str) -> AsyncSend:
    """A direct Graph API call as a team writes it with aiohttp: JSON in, JSON out."""
    url = f"{graph_base(sandbox_url)}/{payloads.ACCOUNT_ID}/messages"
    headers = {"Authorization": f"Bearer {payloads.ACCESS_TOKEN}"}
    body = {
        "recipient": {"id": payloads.RECIPIENT_ID},
        "message": {
            "attachment": {
                "type": "template",
                "payload": {
                    "template_type": "button",
                    "text": payloads.TEXT,
                    "buttons": [
                        {"type": "web_url", "url": payloads.URL, "title": "Visit Instagram"},
                        {
                            "type": "postback",
                            "payload": payloads.PAYLOAD,
                            "title": "postback button",
                        },
                    ],
                },
            }
        },
    }

    async def send() -> None:
        async with session.post(url, json=body, headers=headers) as response:
            response.raise_for_status()
            _check(await response.json())

    return send


def thread_send(
    library: str, *, sandbox_url: str | None, client: igbutton.Client | None
) -> SyncSend:
    """The per-thread send of a thread-pool library (each thread calls this once)."""
    if library == "fbmessenger":
        assert sandbox_url is not None
        return fbmessenger_send(sandbox_url)
    if library == "pymessenger":
        assert sandbox_url is not None
        return pymessenger_send(sandbox_url)
    if library == "igbutton_sync":
        assert client is not None
        return igbutton_sync_send(client)
    raise ValueError(f"unknown thread library {library!r}")
