import io

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class LimitedJSONParser(JSONParser):
    """Strict JSON (no NaN/Infinity literals) under a hard size limit.

    DRF reads the raw request stream, which bypasses Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
    so the limit is enforced here: on the declared length first, then on what is read.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_REQUEST_BYTES
        request = parser_context["request"]
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
