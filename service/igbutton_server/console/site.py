"""The console as an aiohttp application, mounted at ``/console`` on the operations port.

Every request passes one middleware that gives it a session (a new anonymous one when the
browser has none), sends those without an admin login to the login form (pages) or answers
401 (everything else: the event stream, the JSON calls, POSTs), and refuses a POST
without its session's CSRF token. Every response, errors and the event stream included,
carries :data:`~igbutton_server.console.security.SECURITY_HEADERS`.
"""

from __future__ import annotations

import functools
import urllib.parse
from importlib import resources

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler as AiohttpHandler

from igbutton_server.config import Settings
from igbutton_server.console import pages as page_registry
from igbutton_server.console.pages import SESSION_KEY, ConsoleContext, Handler, Page
from igbutton_server.console.security import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    Session,
    Sessions,
    csrf_ok,
    same_origin,
)
from igbutton_server.sandbox import Sandbox
from igbutton_server.send.api import SendServiceServicer
from igbutton_server.storage.postbacks import PostbackStore

PREFIX = "/console"
"""Where the console is mounted on the operations port."""

_PUBLIC_ROUTES = frozenset({"login", "login-post", "static"})
"""Routes served without an admin login: the login form and the static files (the
console's own code and styles, which hold no data)."""
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})

SESSIONS_KEY = web.AppKey("igbutton_console_sessions", Sessions)


def console_url(settings: Settings, http_port: int) -> str:
    """The console's address on the operations port, for the start-up log."""
    host = settings.http.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{http_port}{PREFIX}/"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("igbutton_server.console", "templates"),
        # Every value is escaped unless a template says otherwise (none does).
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


async def _csrf_given(request: web.Request) -> str | None:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in _FORM_TYPES:
        value = (await request.post()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return given


def _wants_html(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def _session_middleware(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
    sessions = request.app[SESSIONS_KEY]
    session = sessions.read(request.cookies.get(COOKIE))
    new_cookie: str | None = None
    if session is None:
        new_cookie, session = sessions.new_cookie(None)
    request[SESSION_KEY] = session
    try:
        _admit(request, sessions, session)
        if request.method not in _SAFE_METHODS and (
            not same_origin(request) or not csrf_ok(session, await _csrf_given(request))
        ):
            raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page and retry")
        response = await handler(request)
    except web.HTTPException as exc:
        _keep_session(exc, sessions, new_cookie)
        raise
    _keep_session(response, sessions, new_cookie)
    return response


def _admit(request: web.Request, sessions: Sessions, session: Session) -> None:
    """Raise unless this request may go on: a public route, or an admin's session."""
    if not sessions.login_required or session.caller is not None:
        return
    if request.match_info.route.name in _PUBLIC_ROUTES:
        return
    if _wants_html(request):
        target = urllib.parse.quote(request.path_qs, safe="")
        raise web.HTTPSeeOther(f"{PREFIX}/login?next={target}")
    raise web.HTTPUnauthorized(
        text="log in to the console with an admin caller token first",
        headers={"WWW-Authenticate": 'Cookie realm="igbutton console"'},
    )


def _keep_session(response: web.StreamResponse, sessions: Sessions, new_cookie: str | None) -> None:
    # A login sets its own cookie; a prepared stream can no longer take one.
    if new_cookie is not None and not response.prepared and COOKIE not in response.cookies:
        sessions.set_cookie(response, new_cookie)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if request.match_info.route.name != "static":
        response.headers.setdefault("Cache-Control", "no-store")


def _safe_next(value: str | None) -> str:
    """A path inside the console to go back to after login; anything else goes home."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//"):
        return value
    return f"{PREFIX}/"


def _bind(handler: Handler, ctx: ConsoleContext) -> AiohttpHandler:
    @functools.wraps(handler)
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, ctx)

    return bound


def build_console_app(
    settings: Settings,
    store: PostbackStore,
    sends: SendServiceServicer,
    sandbox: Sandbox | None,
    grpc_port: int,
) -> web.Application:
    """The console's aiohttp application, to mount at :data:`PREFIX`; ``grpc_port`` is the
    bound gRPC port."""
    sessions = Sessions(settings.callers, settings.console)
    host = settings.grpc.listen.rpartition(":")[0] or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    ctx = ConsoleContext(settings, store, sends, sandbox, _environment(), f"{host}:{grpc_port}")
    available = [page for page in page_registry.discover() if page.available(ctx)]
    # The context is frozen; the navigation is known only once every page was asked.
    object.__setattr__(ctx, "pages", tuple(available))

    app = web.Application(middlewares=[_session_middleware])
    app[SESSIONS_KEY] = sessions
    app.on_response_prepare.append(_security_headers)

    async def home(_: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(f"{PREFIX}/{available[0].slug}")

    async def login_form(request: web.Request) -> web.StreamResponse:
        if not sessions.login_required:
            raise web.HTTPSeeOther(f"{PREFIX}/")
        return ctx.render(
            request, "login.html", next=_safe_next(request.query.get("next")), problem=""
        )

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token, target = form.get("token"), form.get("next")
        target = _safe_next(target if isinstance(target, str) else None)
        caller = sessions.admin_by_token(token) if isinstance(token, str) else None
        if caller is None:
            return ctx.render(
                request,
                "login.html",
                status=401,
                next=target,
                problem="That is not the token of a caller with admin = true.",
            )
        value, _ = sessions.new_cookie(caller)
        response = web.HTTPSeeOther(target)
        sessions.set_cookie(response, value)
        raise response

    async def logout(_: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther(f"{PREFIX}/login" if sessions.login_required else PREFIX)
        sessions.clear_cookie(response)
        raise response

    app.router.add_get("/", home, name="home")
    app.router.add_get("/login", login_form, name="login")
    app.router.add_post("/login", login, name="login-post")
    app.router.add_post("/logout", logout, name="logout")
    static = resources.files("igbutton_server.console") / "static"
    app.router.add_static("/static", str(static), name="static")
    for page in available:
        _add_page(app, page, ctx)
    return app


def _add_page(app: web.Application, page: Page, ctx: ConsoleContext) -> None:
    for index, route in enumerate(page.routes):
        app.router.add_route(
            route.method,
            f"/{page.slug}{route.path}",
            _bind(route.handler, ctx),
            # The page itself is named by its slug (url_for); its other routes after it.
            name=page.slug if index == 0 else f"{page.slug}-route{index}",
        )
