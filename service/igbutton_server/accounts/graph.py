"""The Graph calls about an account itself: refresh its token, name it, read and set its
webhook subscription. Few and far between, so on a small session of their own, apart from
the send path's pool.

A token travels in the query only where Meta requires it (``refresh_access_token`` takes
``access_token`` as a parameter); elsewhere as the send path sends it (``graph.token_in``).
No exception text from aiohttp is kept (a URL in it could carry the query), and Meta's
error messages pass through ``redact`` before anyone sees them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from igbutton_server.config import GraphSettings
from igbutton_server.send.graph_errors import parse_graph_error

_MAX_ANSWER_BYTES = 1 << 16
REFRESH_PATH = "/refresh_access_token"


class AccountCallError(Exception):
    """A call about an account failed; ``code`` is Meta's Graph code when it answered one."""

    def __init__(
        self, message: str, *, code: int | None = None, subcode: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode

    @property
    def token_rejected(self) -> bool:
        """Meta said the token is invalid or expired (190): retrying cannot help."""
        return self.code == 190


@dataclass(frozen=True)
class Refreshed:
    """A refresh's answer."""

    token: str
    expires_in: int


class AccountGraph:
    """refresh_access_token, me, me/subscribed_apps."""

    def __init__(
        self, settings: GraphSettings, timeout: float, redact: Callable[[str], str]
    ) -> None:
        self._settings = settings
        self._timeout = timeout
        self._redact = redact
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "igbutton"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _versioned(self, path: str) -> str:
        return f"{self._settings.base_url}/{self._settings.api_version}{path}"

    def _auth(self, token: str) -> tuple[dict[str, str], dict[str, str]]:
        if self._settings.token_in == "header":  # noqa: S105 - a mode, not a secret
            return {"Authorization": f"Bearer {token}"}, {}
        return {}, {"access_token": token}

    async def _call(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        try:
            async with self._http().request(
                method, url, headers=headers, params=params, allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_ANSWER_BYTES)
                status = response.status
        except TimeoutError:
            raise AccountCallError("the Graph API did not answer in time") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise AccountCallError(f"cannot reach the Graph API ({type(exc).__name__})") from None
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if 200 <= status < 300 and isinstance(payload, dict):
            return payload
        error = parse_graph_error(payload)
        if error is not None:
            raise AccountCallError(
                self._redact(f"Graph error {error.code}: {error.message}"),
                code=error.code,
                subcode=error.subcode,
            )
        raise AccountCallError(f"the Graph API answered HTTP {status}")

    async def refresh(self, token: str) -> Refreshed:
        """GET /refresh_access_token?grant_type=ig_refresh_token (Meta: no version)."""
        answer = await self._call(
            "GET",
            self._settings.base_url + REFRESH_PATH,
            params={"grant_type": "ig_refresh_token", "access_token": token},
        )
        new = answer.get("access_token")
        expires_in = answer.get("expires_in")
        if not isinstance(new, str) or not new or not isinstance(expires_in, int | float):
            raise AccountCallError("the refresh answer has no access_token and expires_in")
        return Refreshed(new, int(expires_in))

    async def me(self, token: str) -> tuple[str, str]:
        """(user_id, username) of the token's account: GET /me?fields=user_id,username."""
        headers, params = self._auth(token)
        answer = await self._call(
            "GET",
            self._versioned("/me"),
            headers=headers,
            params={**params, "fields": "user_id,username"},
        )
        return str(answer.get("user_id") or answer.get("id") or ""), str(
            answer.get("username") or ""
        )

    async def subscribed_fields(self, token: str) -> list[str]:
        """The webhook fields the app is subscribed to for the account, as Meta reports
        them (GET /me/subscribed_apps; an empty ``data`` list: none)."""
        headers, params = self._auth(token)
        answer = await self._call(
            "GET", self._versioned("/me/subscribed_apps"), headers=headers, params=params
        )
        fields: list[str] = []
        for app in answer.get("data") or []:
            if isinstance(app, dict):
                fields.extend(str(f) for f in app.get("subscribed_fields") or [])
        return list(dict.fromkeys(fields))

    async def subscribe(self, token: str, fields: list[str]) -> None:
        """POST /me/subscribed_apps?subscribed_fields=..., which replaces the fields."""
        headers, params = self._auth(token)
        answer = await self._call(
            "POST",
            self._versioned("/me/subscribed_apps"),
            headers=headers,
            params={**params, "subscribed_fields": ",".join(fields)},
        )
        if answer.get("success") is not True:
            raise AccountCallError("Meta did not confirm the subscription")
