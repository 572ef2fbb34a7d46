"""Structured logs: with LOG_FORMAT=json every line is one JSON object, and lines written while
a request is served carry its request id, its user and the simulation it is about.

The request id is the client's `X-Request-ID` when it sends a sane one (so a proxy's id links
its logs to ours), else a new one; the response carries it back.
"""

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

from django.core.signals import request_finished
from django.dispatch import receiver
from django.utils.functional import empty

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_request: contextvars.ContextVar = contextvars.ContextVar("simsched_log_request", default=None)


def bind_request(request) -> None:
    """Log lines in this context carry `request`'s fields until the request finishes (after
    Django has logged its 4xx or 5xx)."""
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    request.request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    _request.set(request)


class ShortcutRequest:
    """What the log lines read of a request served without a Django request object
    (convergence/asgi.py); its user and simulation are set once known."""

    method = "POST"
    resolver_match = None

    def __init__(self, request_id: str, path: str):
        self.request_id, self.path = request_id, path
        self.user = self.simulation_id = None


def bind_shortcut(sent: bytes, path: str) -> ShortcutRequest:
    """`bind_request` for such a request."""
    sent_id = sent.decode("latin1")
    request_id = sent_id if _SANE_REQUEST_ID.fullmatch(sent_id) else uuid.uuid4().hex
    request = ShortcutRequest(request_id, path)
    _request.set(request)
    return request


@receiver(request_finished, dispatch_uid="simsched-log-request-finished")
def _unbind_request(**kwargs) -> None:
    _request.set(None)


def _user(request) -> str | None:
    """The user as far as the request has authenticated it; never a query to find out."""
    user = request.__dict__.get("user")
    if user is None or getattr(user, "_wrapped", None) is empty:
        return None
    return getattr(user, "username", None) or None


def _simulation_id(request) -> int | None:
    """From the URL (`/convergence/{simulation_id}/…`, `/simulations/{pk}/…`), or from the
    small JSON body of a single-point write (its bytes are kept by the middleware)."""
    if isinstance(request, ShortcutRequest):
        return request.simulation_id
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    value = match.kwargs.get("simulation_id")
    if value is None and (match.url_name or "").startswith("simulation-"):
        value = match.kwargs.get("pk")
    if value is None and getattr(request, "_body", None):
        try:
            value = json.loads(request._body).get("simulation_id")
        except (ValueError, AttributeError, RecursionError):
            return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def request_fields() -> dict:
    """The fields of the request being served in this context ({} outside one)."""
    request = _request.get()
    if request is None:
        return {}
    fields = {"request_id": request.request_id, "method": request.method, "path": request.path}
    user = _user(request)
    if user is not None:
        fields["user"] = user
    simulation_id = _simulation_id(request)
    if simulation_id is not None:
        fields["simulation_id"] = simulation_id
    return fields


# A record's own attributes, and Django's `extra={"request": …}` (the fields above say it).
_SKIPPED = set(vars(logging.makeLogRecord({}))) | {"request", "message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields, anything
    passed in `extra`, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **request_fields(),
        }
        for key, value in vars(record).items():
            if key not in _SKIPPED and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
