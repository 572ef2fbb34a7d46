import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsched.settings")

from simsched.asgi_http import get_http_application  # noqa: E402

http_application = get_http_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from convergence.routing import websocket_urlpatterns as convergence_sockets  # noqa: E402
from simsched.broadcast import DeferredBroadcasts  # noqa: E402
from simsched.observability.sockets import CountedSockets  # noqa: E402
from simsched.socket_auth import SocketAuthStack  # noqa: E402
from simulations.routing import websocket_urlpatterns as simulation_sockets  # noqa: E402

application = DeferredBroadcasts(
    ProtocolTypeRouter(
        {
            "http": http_application,
            "websocket": CountedSockets(
                SocketAuthStack(URLRouter([*convergence_sockets, *simulation_sockets]))
            ),
        }
    )
)
