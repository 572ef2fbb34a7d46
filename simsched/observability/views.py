"""`GET /metrics` in the Prometheus text format."""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from simsched.exceptions import error_body
from simsched.observability.collectors import DatabaseCollector
from simsched.observability.metrics import record_pool_use, scrape_registry

ERR_TOKEN = "Send the metrics token: Authorization: Bearer <METRICS_TOKEN>."
ERR_LOOPBACK = "Metrics are served on loopback only; set METRICS_TOKEN to scrape from elsewhere."


def _from_loopback(request) -> bool:
    """The peer is this host and no proxy relayed the request for someone else."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _allowed(request) -> JsonResponse | None:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {token}".encode()):
            response = JsonResponse(error_body("not_authenticated", ERR_TOKEN), status=401)
            response["WWW-Authenticate"] = "Bearer"
            return response
    elif not _from_loopback(request):
        return JsonResponse(error_body("permission_denied", ERR_LOOPBACK), status=403)
    return None


def metrics(request):
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body("method_not_allowed", "Use GET."), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    refused = _allowed(request)
    if refused is not None:
        return refused
    record_pool_use()
    body = generate_latest(scrape_registry([DatabaseCollector()]))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
