"""One error shape for every 4xx/5xx the API gives.

    {"error": {"code": "invalid", "message": "...", "fields": {"loss_value": ["..."]}}}

`fields` is present for validation errors, `details` for extra machine-readable context
(for example the current status on a 409).
"""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    """A business rule said no. Services raise these; the API turns them into the error shape."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields=None, details=None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields = fields
        self.details = details


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class NotFoundError(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"


class ConflictError(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class GoneError(ApplicationError):
    """The thing existed and was deliberately removed (raw points dropped by `compact`)."""

    status_code = status.HTTP_410_GONE
    default_code = "compacted"


def error_body(code: str, message: str, *, fields=None, details=None) -> dict:
    error = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    if details:
        error["details"] = details
    return {"error": error}


def _answer_errors_in_json(request) -> None:
    """A failed download (`?format=csv`) still answers in the one JSON error shape."""
    renderer = getattr(request, "accepted_renderer", None)
    if renderer is not None and renderer.format not in ("json", "api"):
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"


def api_exception_handler(exc, context):
    _answer_errors_in_json(context.get("request"))
    if isinstance(exc, ApplicationError):
        body = error_body(exc.code, exc.message, fields=exc.fields, details=exc.details)
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, RequestDataTooBig):
        # Django enforces DATA_UPLOAD_MAX_MEMORY_SIZE (= MAX_REQUEST_BYTES) when the body is read.
        exc = PayloadTooLarge(
            f"The request body is larger than {settings.MAX_REQUEST_BYTES} bytes."
        )
    if isinstance(exc, IntegrityError):
        # A constraint a service did not foresee (a race the service lost): the write is
        # refused, not a crash. Services turn the ones they know into precise errors.
        logger.warning("integrity error answered as 409: %s", exc)
        body = error_body("conflict", "The request conflicts with stored data; nothing changed.")
        return Response(body, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, OperationalError | InterfaceError) or type(exc) is DatabaseError:
        logger.error("database unavailable: %s", exc)
        body = error_body("database_unavailable", "The database is unavailable; retry shortly.")
        return Response(
            body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"}
        )

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid", "Invalid input.", fields=fields)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = error_body(str(code), str(detail))
    return response


class ForbiddenError(ApplicationError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "permission_denied"


class JsonNotFoundMiddleware:
    """Every 404 that is not already an API answer is the one JSON error shape, also with
    DEBUG on (Django then answers an unknown path with its HTML debug page, not handler404)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code != 404 or isinstance(response, Response):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        from simsched.views import not_found

        return not_found(request)
