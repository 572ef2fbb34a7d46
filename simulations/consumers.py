from channels.generic.websocket import AsyncJsonWebsocketConsumer

from simsched.broadcast import FLEET_GROUP
from simsched.groups import local_groups
from simsched.socket_auth import CLOSE_UNAUTHENTICATED, is_signed_in


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """WS /ws/fleet: every machine and simulation status change, for the fleet dashboard."""

    async def connect(self):
        self.joined = False
        await self.accept()
        if not is_signed_in(self.scope):
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        if not await local_groups().add(FLEET_GROUP, self):
            return
        self.joined = True
        await self.send_json({"type": "hello"})

    async def disconnect(self, code):
        if self.joined:
            await local_groups().discard(FLEET_GROUP, self)

    async def fleet_machine(self, event):
        await self.send_json({"type": "machine", "machine": event["machine"]})

    async def fleet_simulation(self, event):
        await self.send_json({"type": "simulation", "simulation": event["simulation"]})

    async def fleet_simulation_deleted(self, event):
        await self.send_json({"type": "simulation_deleted", "id": event["id"]})
