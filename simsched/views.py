"""Site-wide views: health and JSON error pages."""

import asyncio

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from simsched.exceptions import error_body

CHECK_TIMEOUT_SECONDS = 2.0


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure means down
        connection.close()  # recover on the next request
        return {"ok": False, "backend": connection.vendor, "error": str(exc)[:200]}
    return {"ok": True, "backend": connection.vendor}


async def _ping_layer(layer) -> None:
    await asyncio.wait_for(
        layer.group_send("health", {"type": "health.ping"}), CHECK_TIMEOUT_SECONDS
    )


def _check_channel_layer() -> dict:
    layer = get_channel_layer()
    backend = type(layer).__name__
    try:
        async_to_sync(_ping_layer)(layer)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "backend": backend, "error": str(exc)[:200] or type(exc).__name__}
    return {"ok": True, "backend": backend}


class HealthView(APIView):
    """Is the service able to store and push data? 200 when everything is up, 503 otherwise."""

    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        responses={
            (200, "application/json"): inline_serializer(
                "Health", {"status": serializers.CharField(), "checks": serializers.DictField()}
            ),
            (503, "application/json"): inline_serializer(
                "HealthDown", {"status": serializers.CharField(), "checks": serializers.DictField()}
            ),
        }
    )
    def get(self, request):
        checks = {"database": _check_database(), "channel_layer": _check_channel_layer()}
        down = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "down" if down else "ok", "checks": checks}
        if down:
            body["down"] = down
        return Response(body, status=503 if down else 200)


def not_found(request, exception=None):
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def server_error(request):
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


def bad_request(request, exception=None):
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)
