"""Per-request observability, as the first middleware: a request id for the log lines, and for
write requests their duration and the points they stored, by endpoint (the route's name)."""

import time

from django.conf import settings

from simsched.observability import logs
from simsched.observability.metrics import record_write

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Route names of the point writes, and how to read how many points a success stored.
SINGLE_POINT_ENDPOINTS = frozenset({"convergence-add-point", "convergence-add-bare-sql"})
BATCH_ENDPOINTS = frozenset({"convergence-add-points"})
# A single-point body this small is kept, so log lines can name its simulation.
SMALL_BODY_BYTES = 4096


class ObservabilityMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        logs.bind_request(request)
        started = time.perf_counter()
        response = self.get_response(request)
        response[logs.REQUEST_ID_HEADER] = request.request_id
        if request.method in WRITE_METHODS:
            self._count_write(request, response, time.perf_counter() - started)
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        if match.url_name in SINGLE_POINT_ENDPOINTS and request.method == "POST":
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return None
            # Never past the upload limit: reading it here would turn DRF's 413 into a 400.
            if length <= min(SMALL_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0):
                request.body  # noqa: B018 - kept for the log lines; DRF reads it from there
        return None

    def _count_write(self, request, response, seconds: float) -> None:
        match = getattr(request, "resolver_match", None)
        endpoint = (match.url_name if match is not None else None) or "unmatched"
        points = 0
        if endpoint in SINGLE_POINT_ENDPOINTS and response.status_code == 201:
            points = 1
        elif endpoint in BATCH_ENDPOINTS and response.status_code == 200:
            stored = getattr(response, "data", None)
            if isinstance(stored, dict) and stored.get("stored"):
                points = stored["stored"]
        record_write(endpoint, seconds, points)
