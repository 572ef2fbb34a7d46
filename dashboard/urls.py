from django.urls import path

from dashboard.views import dashboard, simulation_page

urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("dashboard/simulations/<int:simulation_id>", simulation_page, name="simulation-page"),
]
