import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsched.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from convergence.routing import websocket_urlpatterns as convergence_sockets  # noqa: E402
from simsched.socket_auth import SocketAuthStack  # noqa: E402
from simulations.routing import websocket_urlpatterns as simulation_sockets  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SocketAuthStack(URLRouter([*convergence_sockets, *simulation_sockets])),
    }
)
