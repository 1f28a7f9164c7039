"""The console's pages: each module here is one page, found by :func:`discover`.

A page is a :class:`Page` named ``PAGE`` in its own module: its URL segment, its title in
the navigation, whether it applies to this process (the conversation needs the sandbox),
and its routes. A route handler gets the request and the :class:`ConsoleContext`, which
holds what igbutton's parts offer the console: the settings, the postback store (the
engine-neutral ``PostbackStore`` contract, which a page may call like any other part of
igbutton), the send servicer and the sandbox. Adding a page is adding a module (and its
template under ``templates/``, and its script under ``static/`` if it has one), e.g.::

    async def _page(request: web.Request, ctx: ConsoleContext) -> web.StreamResponse:
        info = await ctx.store.group_info(request.query["group"])
        return ctx.render(request, "groups.html", info=info)

    PAGE = Page(slug="groups", title="Groups", order=40, routes=(Route("GET", "", _page),))

Every route is behind the console's login and CSRF check (``site.py``); a handler that
changes state is a POST, and its form carries ``csrf_token`` (the template has it).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web

from igbutton_server.config import Settings
from igbutton_server.console.security import Session
from igbutton_server.sandbox import Sandbox
from igbutton_server.send.api import SendServiceServicer
from igbutton_server.storage.postbacks import PostbackStore

SESSION_KEY = web.RequestKey("igbutton_console_session", Session)
"""Where the console's middleware puts the request's session (``request[SESSION_KEY]``)."""


@dataclass(frozen=True)
class ConsoleContext:
    """What the console's pages may use."""

    settings: Settings
    store: PostbackStore
    sends: SendServiceServicer
    sandbox: Sandbox | None
    templates: jinja2.Environment
    grpc_target: str
    """host:port of this igbutton's gRPC port, as the snippets name it."""
    pages: Sequence[Page] = field(default_factory=tuple)
    """Every page available in this process, in navigation order (filled in by the site)."""

    def render(
        self, request: web.Request, template: str, *, status: int = 200, **values: Any
    ) -> web.Response:
        """A page from ``templates/``, autoescaped, with the navigation and CSRF token."""
        session = request.get(SESSION_KEY)
        html = self.templates.get_template(template).render(
            pages=self.pages,
            path=request.path,
            csrf_token=session.csrf_token if session is not None else "",
            caller=session.caller if session is not None else None,
            # Before an admin logged in (with callers configured) the page shows no navigation.
            navigation=not self.settings.callers
            or (session is not None and session.caller is not None),
            sandbox=self.sandbox is not None,
            **values,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


Handler = Callable[[web.Request, ConsoleContext], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One route of a page, relative to the page's URL (``""`` is the page itself)."""

    method: str
    path: str
    handler: Handler


def _always(_: ConsoleContext) -> bool:
    return True


@dataclass(frozen=True)
class Page:
    """One console page, at ``/console/<slug>``."""

    slug: str
    title: str
    order: int
    """Position in the navigation, smallest first."""
    routes: Sequence[Route]
    available: Callable[[ConsoleContext], bool] = _always
    """Whether this process serves the page (False: not routed, not in the navigation)."""


def discover() -> list[Page]:
    """Every page module's ``PAGE``, in navigation order."""
    pages = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        page = getattr(module, "PAGE", None)
        if isinstance(page, Page):
            pages.append(page)
    return sorted(pages, key=lambda p: (p.order, p.slug))
