"""API token checks for every route and socket.

Off on loopback without a token. With `LATENTCAST_API_TOKEN` set, each request needs either the
token as `Authorization: Bearer ...`, or a short-lived token (`POST /v1/tokens`) that browsers
can carry where they cannot set headers: `?token=` in the URL (opening the demo page) or the
cookie the server sets when the page is opened that way (the page's own files and socket).
The long-lived token is never accepted in a URL, where it would end up in logs and history.

Each request remembers which short-lived token let it in (`token_owner`): a short-lived token
holds at most `max_sessions_per_token` sessions at once, so one leaked browser token cannot take
every slot. The API token (an app's backend) and a server without tokens are bounded only by
`max_sessions`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "latentcast_token"
_PREFIX = "lc1"
_OWNER = "token_owner"  # in the request's state: the short-lived token that let it in, if one did


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenRequired(RuntimeError):
    pass


def check_bind(host: str, api_token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not api_token:
        raise TokenRequired(f"refusing to bind {host}: set LATENTCAST_API_TOKEN (or bind 127.0.0.1) so that "
                            "the server is not open to anyone on the network")


class TokenAuthority:
    """Checks the API token and issues short-lived tokens signed with it (stateless: an HMAC of
    the expiry, so any worker holding the API token can verify them)."""

    def __init__(self, api_token: str | None):
        self.api_token = api_token
        self._key = hashlib.sha256(b"latentcast short-lived token\0" + api_token.encode()).digest() if api_token else b""

    @property
    def enabled(self) -> bool:
        return bool(self.api_token)

    def issue(self, ttl_s: float) -> tuple[str, float]:
        expires = int(time.time() + ttl_s)
        body = f"{expires}.{secrets.token_urlsafe(9)}"
        return f"{_PREFIX}.{body}.{self._sign(body)}", float(expires)

    def short_lived_valid(self, token: str) -> bool:
        prefix, _, rest = token.partition(".")
        body, _, signature = rest.rpartition(".")
        if prefix != _PREFIX or not body or not hmac.compare_digest(signature, self._sign(body)):
            return False
        expires = body.split(".", 1)[0]
        return expires.isdigit() and int(expires) > time.time()

    def is_api_token(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.api_token.encode())

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class AuthMiddleware:
    """ASGI middleware so that static files, docs, REST and sockets are all covered alike."""

    def __init__(self, app: ASGIApp, authority: TokenAuthority):
        self.app = app
        self.authority = authority

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.authority.enabled or scope.get("method") == "OPTIONS":
            # OPTIONS is a CORS preflight, which browsers send without credentials; the routes
            # that answer it (WHIP, WHEP) only describe themselves.
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query_token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        bearer = headers.get("authorization", "")
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        cookie_token = cookie.value if cookie else ""
        bearer_token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
        if bearer_token and self.authority.is_api_token(bearer_token):
            await self.app(scope, receive, send)
        elif bearer_token and self.authority.short_lived_valid(bearer_token):
            await self.app(_owned_by(scope, bearer_token), receive, send)
        elif query_token and self.authority.short_lived_valid(query_token):
            await self.app(_owned_by(scope, query_token), receive,
                           self._setting_cookie(send, query_token) if scope["type"] == "http" else send)
        elif cookie_token and self.authority.short_lived_valid(cookie_token) and _same_origin(headers):
            await self.app(_owned_by(scope, cookie_token), receive, send)
        else:
            await _deny(scope, receive, send)

    @staticmethod
    def _setting_cookie(send: Send, token: str) -> Send:
        """Let the page's own requests (scripts, styles) through after it was opened with ?token=."""
        max_age = max(0, int(token.split(".")[1]) - int(time.time()))
        cookie = f"{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)

        return send_with_cookie


def _owned_by(scope: Scope, token: str) -> Scope:
    scope.setdefault("state", {})[_OWNER] = token
    return scope


def token_owner(connection: HTTPConnection) -> str | None:
    """The short-lived token a request or socket came in with (None: the API token, or no auth):
    whose sessions count against `max_sessions_per_token`."""
    return connection.scope.get("state", {}).get(_OWNER)


def _same_origin(headers: dict[str, str]) -> bool:
    """A cookie rides along on cross-site socket handshakes too: accept it only from our own pages."""
    origin = headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == headers.get("host")


async def _deny(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()  # the websocket.connect event comes first
        await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})  # answered as HTTP 403
        return
    body = json.dumps({"error": {"code": "unauthorized", "message": "missing or invalid API token: send "
                                 "'Authorization: Bearer <token>' (or ?token= with a short-lived token from POST /v1/tokens)"}}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="latentcast"'),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
