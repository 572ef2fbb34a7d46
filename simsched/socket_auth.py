"""WebSocket authentication: the session cookie for browsers, `Authorization: Token <key>`
or `?token=<key>` for scripts, and browsers only from allowed origins.

A refused socket is accepted and closed at once with a close code a client can read
(4401 not signed in, 4403 origin not allowed), before any data is sent. The consumers use the
other codes here: 4404 no such simulation, 4409 a conflict, 4410 the simulation was deleted.
"""

from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_CONFLICT = 4409
CLOSE_GONE = 4410


async def close_with(send, code: int) -> None:
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code})


@database_sync_to_async
def _user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    # The agent's machine too: the permission policy asks for it, and consumers must not query.
    token = Token.objects.select_related("user", "user__agent_machine").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


def _token_from_scope(scope) -> str | None:
    headers = dict(scope.get("headers", []))
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("token "):
        return auth[6:].strip()
    query = parse_qs(scope.get("query_string", b"").decode())
    return query.get("token", [None])[0]


class TokenAuthMiddleware:
    """Sets scope['user'] from a DRF token when one is given; otherwise keeps the session user."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        key = _token_from_scope(scope)
        if key:
            user = await _user_for_token(key)
            if user is None:
                await receive()  # the client's websocket.connect
                return await close_with(send, CLOSE_UNAUTHENTICATED)
            scope = dict(scope, user=user)
        return await self.app(scope, receive, send)


def _allowed_origin(origin: str) -> bool:
    parsed = urlparse(origin)
    if f"{parsed.scheme}://{parsed.netloc}" in settings.CORS_ALLOWED_ORIGINS:
        return True
    host = parsed.hostname or ""
    if parsed.hostname and ":" in parsed.hostname:
        host = f"[{parsed.hostname}]"
    return any(
        pattern == "*" or host == pattern or (pattern.startswith(".") and host.endswith(pattern))
        for pattern in settings.ALLOWED_HOSTS
    )


class OriginMiddleware:
    """Browsers always send Origin: it must be an allowed host or CORS origin. Clients without
    one (scripts, agents) are not browsers and must authenticate with a token."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        origin = dict(scope.get("headers", [])).get(b"origin")
        if origin is not None and not _allowed_origin(origin.decode("latin-1")):
            await receive()
            return await close_with(send, CLOSE_FORBIDDEN)
        return await self.app(scope, receive, send)


def SocketAuthStack(app):  # noqa: N802 - reads like Channels' AuthMiddlewareStack
    return OriginMiddleware(AuthMiddlewareStack(TokenAuthMiddleware(app)))


def scope_user(scope):
    """The socket's user, AnonymousUser when nobody signed in."""
    return scope.get("user") or AnonymousUser()


def is_signed_in(scope) -> bool:
    """The fleet socket's rule: anyone who may read the fleet (machines.permissions)."""
    from machines.permissions import can_read_fleet

    return can_read_fleet(scope_user(scope))
