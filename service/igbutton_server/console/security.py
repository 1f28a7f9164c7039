"""Who may use the console: signed session cookies, CSRF tokens and the response headers.

Sessions are stateless, so any replica with the same configuration accepts a login made
on another and nothing is kept per browser. A cookie names the caller, its expiry and a
random nonce, and carries an HMAC of them keyed with a digest of **that caller's token**:
nobody without the token can forge one, and rotating the token ends its sessions. The
token itself never leaves the login form. Every browser also gets an anonymous session
(no caller) before it logs in, keyed with a digest of every caller's token (or, in open
mode, a random key of this process), so that the login form is CSRF-protected too.

The CSRF token of a session is another HMAC of its nonce; every POST must carry it (the
``X-CSRF-Token`` header or a ``csrf_token`` form field), and a POST whose ``Origin`` is
not the console's own is refused as well. Cookies are HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from igbutton_server.auth import CallerAuth
from igbutton_server.config import Caller, ConsoleSettings

COOKIE = "igbutton_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        # Scripts only from the console's own static files: no inline script, no eval.
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
"""The console's Content-Security-Policy: nothing inline, nothing from elsewhere."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it Chromium sends "Origin: null" on form posts, which the
    # Origin check must refuse. same-origin sends nothing to other sites either.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
"""Headers on every console response."""

_VERSION = "v1"
_ANONYMOUS = ""


@dataclass(frozen=True)
class Session:
    """A browser's session: anonymous (``caller`` None) or logged in as an admin caller."""

    caller: Caller | None
    csrf_token: str
    expires: int
    """Unix seconds."""


def _key(label: bytes, material: bytes) -> bytes:
    return hashlib.sha256(b"igbutton console " + label + b"\0" + material).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks the console's session cookies and CSRF tokens."""

    def __init__(self, callers: Sequence[Caller], settings: ConsoleSettings) -> None:
        self._auth = CallerAuth(callers)
        self._settings = settings
        self._callers = {c.name: c for c in callers}
        if callers:
            # The same on every replica with this configuration, and secret to outsiders.
            tokens = sorted(c.token.get_secret_value() for c in callers if c.token is not None)
            self._anonymous_key = _key(b"anonymous", "\0".join(tokens).encode())
        else:
            self._anonymous_key = secrets.token_bytes(32)

    @property
    def login_required(self) -> bool:
        """Whether callers are configured, so that only an admin caller may use the console."""
        return self._auth.enabled

    def admin_by_token(self, token: str) -> Caller | None:
        """The admin caller with this token, or None (unknown token, or not an admin)."""
        caller = self._auth.by_token(token)
        return caller if caller is not None and caller.admin else None

    def _key_for(self, name: str) -> bytes | None:
        if name == _ANONYMOUS:
            return self._anonymous_key
        caller = self._callers.get(name)
        if caller is None or not caller.admin or caller.token is None:
            return None
        return _key(b"session", caller.token.get_secret_value().encode())

    @staticmethod
    def _mac(key: bytes, purpose: str, body: str) -> str:
        return _b64(hmac.new(key, f"{purpose}|{body}".encode(), hashlib.sha256).digest())

    def new_cookie(self, caller: Caller | None) -> tuple[str, Session]:
        """A fresh session for ``caller`` (None: anonymous), as the cookie value."""
        name = caller.name if caller is not None else _ANONYMOUS
        key = self._key_for(name)
        assert key is not None, "only admin callers get sessions"
        expires = int(time.time()) + self._settings.session_seconds
        body = ".".join((_VERSION, _b64(name.encode()), str(expires), secrets.token_urlsafe(16)))
        value = f"{body}.{self._mac(key, 'session', body)}"
        return value, Session(caller, self._mac(key, "csrf", body), expires)

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value stands for, or None if it is forged, stale or unknown."""
        if not value or len(value) > 1024:
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            return None
        body, mac = ".".join(parts[:4]), parts[4]
        try:
            name = _unb64(parts[1]).decode()
            expires = int(parts[2])
        except ValueError:
            return None
        key = self._key_for(name)
        if key is None or not hmac.compare_digest(mac, self._mac(key, "session", body)):
            return None
        if expires < time.time():
            return None
        caller = self._callers.get(name) if name != _ANONYMOUS else None
        return Session(caller, self._mac(key, "csrf", body), expires)

    def set_cookie(self, response: web.StreamResponse, value: str) -> None:
        """Attach the session cookie: HttpOnly, SameSite=Strict, only under /console."""
        response.set_cookie(
            COOKIE,
            value,
            max_age=self._settings.session_seconds,
            path="/console",
            httponly=True,
            samesite="Strict",
            secure=self._settings.secure_cookie,
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        """Remove the session cookie."""
        response.del_cookie(COOKIE, path="/console")


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether ``given`` is the session's CSRF token (constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), session.csrf_token.encode())


def same_origin(request: web.Request) -> bool:
    """False when the request names an Origin other than the console's own host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # old browsers and non-browser clients; the CSRF token still applies
    # The host only: behind a TLS-terminating proxy the browser's scheme is not ours.
    return urllib.parse.urlsplit(origin).netloc == request.host
