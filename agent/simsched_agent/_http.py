"""One keep-alive HTTP connection to the server, JSON in and out (one per thread)."""

import http.client
import json
import ssl
from urllib.parse import urlsplit


class Unreachable(Exception):
    """The server did not answer: connection refused or reset, timeout, DNS."""


# Answers that say "try again later", as opposed to "this request is wrong".
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


def retryable(status: int) -> bool:
    return status in RETRYABLE or status >= 500


_DEFAULT_PORTS = {"http": 80, "https": 443}


def server_url(url: str) -> str:
    """The server as Api reaches it, one spelling per server: the scheme and host in lower
    case, no default port, no trailing slash (`http://H:80/` is `http://h`). Raises
    ValueError for anything but an http(s) URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = "" if parts.port in (None, _DEFAULT_PORTS[scheme]) else f":{parts.port}"
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}"


class Api:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0):
        parts = urlsplit(server_url(url))
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {
            "Authorization": f"Token {token}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, timeout=None):
        """(status, parsed JSON body or None) for a JSON `body` (or `raw` JSON bytes).
        Raises Unreachable when no answer came."""
        data = raw if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (1, 2):
            connection = self._open(timeout)
            try:
                connection.request(method, self._prefix + path, body=data, headers=self._headers)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the server had closed: one fresh try (writes are
                # idempotent, so a resend is safe).
                stale = isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError)
                if attempt == 1 and stale:
                    continue
                raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = None
            return response.status, payload
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, timeout: float | None) -> http.client.HTTPConnection:
        timeout = self.timeout if timeout is None else timeout
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout
                )
        else:
            self._connection.timeout = timeout
            if self._connection.sock is not None:
                self._connection.sock.settimeout(timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
