from django.urls import path

from dashboard.views import compare_page, dashboard, simulation_page

urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("dashboard/simulations/<int:simulation_id>", simulation_page, name="simulation-page"),
    path("dashboard/compare", compare_page, name="compare-page"),
]
