from channels.generic.websocket import AsyncJsonWebsocketConsumer

from simsched.broadcast import FLEET_GROUP
from simsched.socket_auth import CLOSE_UNAUTHENTICATED, is_signed_in


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """WS /ws/fleet: every machine and simulation status change, for the fleet dashboard."""

    async def connect(self):
        self.joined = False
        await self.accept()
        if not is_signed_in(self.scope):
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        self.joined = True
        await self.send_json({"type": "hello"})

    async def disconnect(self, code):
        if self.joined:
            await self.channel_layer.group_discard(FLEET_GROUP, self.channel_name)

    async def fleet_machine(self, event):
        await self.send_json({"type": "machine", "machine": event["machine"]})

    async def fleet_simulation(self, event):
        await self.send_json({"type": "simulation", "simulation": event["simulation"]})

    async def fleet_simulation_deleted(self, event):
        await self.send_json({"type": "simulation_deleted", "id": event["id"]})
