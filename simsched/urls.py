from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from simsched import api_router
from simsched.observability.views import metrics
from simsched.views import HealthView

urlpatterns = [
    path("", include("dashboard.urls")),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
    re_path(r"^health/?$", HealthView.as_view(), name="health"),
    re_path(r"^metrics/?$", metrics, name="metrics"),
    re_path(r"^schema/?$", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^docs/?$", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^redoc/?$", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    *api_router.urlpatterns,
]

handler400 = "simsched.views.bad_request"
handler404 = "simsched.views.not_found"
handler500 = "simsched.views.server_error"
