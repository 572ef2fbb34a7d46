"""simsched's URLs plus two empty 200s: one through Django alone, one through DRF with the API's
authentication and permission (what every API request pays before its view does any work)."""

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response
from rest_framework.views import APIView

from simsched.urls import handler400, handler404, handler500  # noqa: F401
from simsched.urls import urlpatterns as simsched_urlpatterns


@csrf_exempt
def django_empty(request):
    return HttpResponse(b"{}", content_type="application/json")


class DRFEmpty(APIView):
    def post(self, request):
        return Response({})


urlpatterns = [
    path("floor/django", django_empty),
    path("floor/drf", DRFEmpty.as_view()),
    *simsched_urlpatterns,
]
