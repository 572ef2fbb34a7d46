"""The short way of the hot path: `POST /convergence/data` from an agent, served without
Django's request handling around the same service.

An agent reports a point every few milliseconds, and py-spy shows Django and DRF around the
view (the request object, the middleware chain, content negotiation, the view's dispatch, the
response object) costing as much CPU as the write itself. `PointWriteShortcut` serves the
common request, a token-authenticated JSON point from a non-browser client, with the pieces
that decide anything, called directly and in the same order as the view calls them:

- the token through `CachedTokenAuthentication` (DRF's `IsAuthenticated` is what it implies),
- the body through `parse_point`, the view's validator,
- the write through `services.point_add(..., reporter=user)`, which applies the report
  permission policy inside its statement, as for the view,
- a refusal by the service through `api_exception_handler`: the one error shape,
- the answer through DRF's `JSONRenderer` and `point_representation`, with the headers Django's
  middleware would add (tests/convergence/test_point_shortcut.py compares both ways' answers),
- the write's duration and points into the same Prometheus metrics, the request id into the
  response and the log lines.

Everything else goes the long way with the body it has read, unchanged: a request with a query
string, a cookie-only or browser client (`Origin`, an `Accept` other than JSON), a body whose
length is not declared as one positive number within the upload limit (DRF reads no body
without one), an unknown host, a plain-HTTP request where HTTPS is required, and every request
whose token or body is refused before the write: Django then answers it with all its rules
(the 401's header, the nan guard's reaction to a non-finite value, the 413). Headers are read
as Django reads them, a repeated one's values joined by commas. Nothing is written before that
decision, so answering it twice is never a second write; a refusal or a crash after it is
answered here, as the view's exception handler or Django's handler500 would answer it.
`SIMSCHED_INGEST_SHORTCUT=0` turns it off.
"""

import asyncio
import contextvars
import json
import time

from django.conf import settings
from django.core import signals
from django.http.request import split_domain_port, validate_host
from django.utils.log import log_response
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer

from convergence import services
from convergence.serializers import parse_point, point_representation
from simsched.authentication import CachedTokenAuthentication
from simsched.exceptions import api_exception_handler
from simsched.observability import logs
from simsched.observability.metrics import record_write
from simsched.views import server_error

PATHS = frozenset({"/convergence/data", "/convergence/data/"})
ENDPOINT = "convergence-add-point"  # the route's name, as the metrics label it
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
ACCEPTED = frozenset({None, b"*/*", b"application/json"})


class PointWriteShortcut:
    """ASGI middleware in front of Django's handler. The write runs in a request thread of
    `threads` (`simsched.asgi_http.ReusedRequestThreads`), with that thread's database
    connection, handed to it directly: none of asgiref's bookkeeping for a thread-sensitive
    call, which py-spy puts at a sixth of the event loop's time per point."""

    def __init__(self, app, *, threads):
        self.app = app
        self.threads = threads
        self.authentication = CachedTokenAuthentication()
        self.renderer = JSONRenderer()

    async def __call__(self, scope, receive, send):
        found = self._token(scope) if settings.SIMSCHED_INGEST_SHORTCUT else None
        if found is None:
            return await self.app(scope, receive, send)
        key, headers, length = found
        body, complete = await _read_body(receive, length)
        if body is None:  # the client left
            return None
        answer = None  # a body other than declared: the long way decides
        if complete and len(body) == length:
            context = contextvars.copy_context()  # the broadcasts' loop sender, for one
            with self.threads.borrowed() as thread:
                answer = await asyncio.get_running_loop().run_in_executor(
                    thread, context.run, self._write, scope, headers, key, body
                )
        if answer is None:
            return await self.app(scope, _replay(body, complete, receive), send)
        status, headers, content = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return None

    def _token(self, scope) -> tuple[str, dict, int] | None:
        """The token, headers and declared body length of a request the short way may serve,
        else None."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in PATHS
            or scope.get("query_string")
            or scope.get("root_path")
        ):
            return None
        headers = _headers_of(scope)
        length = _declared_length(headers)
        if (
            headers.get(b"content-type") not in JSON_TYPES
            or b"transfer-encoding" in headers
            or length is None
            or headers.get(b"accept") not in ACCEPTED
            or b"origin" in headers
            or settings.USE_X_FORWARDED_HOST  # Django's host rules then take more than Host
            or not _allowed_host(headers.get(b"host", b""))
            or (settings.SECURE_SSL_REDIRECT and not _secure(scope, headers))
        ):
            return None
        words = headers.get(b"authorization", b"").split()
        if len(words) != 2 or words[0].lower() != b"token":
            return None
        try:
            return words[1].decode("ascii"), headers, length
        except UnicodeDecodeError:
            return None

    def _write(self, scope, headers: dict, key: str, body: bytes):
        """In the request's thread: (status, headers, body), or None for the long way."""
        started = time.perf_counter()
        signals.request_started.send(sender=self.__class__, scope=scope)
        try:
            request = logs.bind_shortcut(headers.get(b"x-request-id", b""), scope["path"])
            try:
                try:
                    user, _token = self.authentication.authenticate_credentials(key)
                    fields = parse_point(json.loads(body.decode("utf-8")))
                except (APIException, ValueError, RecursionError):
                    return None  # refused before any write: Django answers with all its rules
                request.user, request.simulation_id = user, fields["simulation_id"]
                point, created = services.point_add(**fields, reporter=user)
            except Exception as exc:  # noqa: BLE001 - answered as the view's handler would
                status, content, extra = self._error(exc, scope["path"])
            else:
                status = 201 if created else 200
                content, extra = self.renderer.render(point_representation(point)), []
            record_write(ENDPOINT, time.perf_counter() - started, 1 if status == 201 else 0)
            answer_headers = _headers(scope, headers, request.request_id, content, extra, status)
            return status, answer_headers, content
        finally:
            signals.request_finished.send(sender=self.__class__)

    def _error(self, exc: Exception, path: str) -> tuple[int, bytes, list]:
        """The view's answer to a refusal (the API's exception handler), or Django's to a crash
        (handler500, logged with its traceback). Never the long way: the write may be done."""
        response = api_exception_handler(exc, {})
        if response is None:
            response = server_error(None)
            log_response("%s: %s", response.reason_phrase, path, response=response, exception=exc)
            return response.status_code, response.content, []
        log_response("%s: %s", response.reason_phrase, path, response=response)
        status = response.status_code
        extra = [  # what the handler set (Retry-After); the content type is ours
            (name.lower().encode(), value.encode())
            for name, value in response.items()
            if name.lower() != "content-type"
        ]
        return status, self.renderer.render(response.data), extra


def _headers_of(scope) -> dict[bytes, bytes]:
    """The request's headers as Django reads them: names lowercase (as ASGI sends them), a
    repeated header's values joined by commas."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers[name] = headers[name] + b"," + value if name in headers else value
    return headers


def _declared_length(headers: dict) -> int | None:
    """The body's declared length, when it is one positive number within the upload limit:
    DRF reads no body without one, and Django refuses a larger one with a 413."""
    sent = headers.get(b"content-length", b"")
    if not sent.isdigit():
        return None
    length = int(sent)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return length if 0 < length and (limit is None or length <= limit) else None


def _allowed_host(host: bytes) -> bool:
    """As `HttpRequest.get_host()` decides (ALLOWED_HOSTS)."""
    try:
        domain, _port = split_domain_port(host.decode("ascii"))
    except UnicodeDecodeError:
        return False
    return bool(domain) and validate_host(domain, _allowed_hosts())


def _allowed_hosts() -> list[str]:
    """`HttpRequest.get_host()`'s list: with DEBUG and no ALLOWED_HOSTS, the local names."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def _secure(scope, headers: dict) -> bool:
    """`HttpRequest.is_secure()`: the scheme, or the proxy's header when one is trusted."""
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        sent = headers.get(name)
        if sent is not None:
            return sent.split(b",")[0].strip().decode("latin1") == proxy[1]
    return scope.get("scheme") == "https"


def _headers(scope, headers: dict, request_id: str, content: bytes, extra: list, status) -> list:
    """The headers Django's middleware and DRF give this answer (SecurityMiddleware,
    XFrameOptionsMiddleware, ObservabilityMiddleware, django-cors-headers' Vary, DRF's Vary
    and Allow but on a crash, which Django answers past DRF)."""
    answer = [(b"content-type", b"application/json")]
    if status == 500:
        answer.append((b"vary", b"origin"))
    else:
        answer += [(b"vary", b"Accept, origin"), (b"allow", b"POST, OPTIONS")]
    answer += [
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"content-length", str(len(content)).encode()),
        *extra,
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        answer.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        answer.append((b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        policy = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()
        answer.append((b"cross-origin-opener-policy", policy))
    if settings.SECURE_HSTS_SECONDS and _secure(scope, headers):
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        answer.append((b"strict-transport-security", hsts.encode()))
    answer.append((logs.REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
    return answer


async def _read_body(receive, limit: int) -> tuple[bytes | None, bool]:
    """(body, complete): the whole body, or what came until it passed `limit` (the declared
    length; the long way reads the rest); None if the client disconnected."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        part = message.get("body", b"")
        parts.append(part)
        size += len(part)
        if not message.get("more_body", False):
            return b"".join(parts), True
        if size > limit:
            return b"".join(parts), False


def _replay(body: bytes, complete: bool, receive):
    """A `receive` that gives the body read so far, then whatever the client sends next."""
    pending = [{"type": "http.request", "body": body, "more_body": not complete}]

    async def replayed():
        if pending:
            return pending.pop()
        return await receive()

    return replayed
