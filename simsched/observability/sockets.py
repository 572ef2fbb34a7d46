"""Counts open WebSocket connections at the ASGI level: one more when the application accepts
a socket, one fewer when its connection ends, whichever consumer served it."""

from simsched.observability.metrics import WEBSOCKETS


class CountedSockets:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        accepted = False

        async def counting_send(message):
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                WEBSOCKETS.inc()
            await send(message)

        try:
            return await self.app(scope, receive, counting_send)
        finally:
            if accepted:
                WEBSOCKETS.dec()
