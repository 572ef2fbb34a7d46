from django.urls import path

from convergence.consumers import ConvergenceConsumer, SimulatedRunConsumer

websocket_urlpatterns = [
    path("ws/convergence/<int:simulation_id>", ConvergenceConsumer.as_asgi()),
    path("ws/convergence/<int:simulation_id>/run", SimulatedRunConsumer.as_asgi()),
]
