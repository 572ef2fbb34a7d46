import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from convergence import selectors, services
from convergence.curves import LossCurve
from simsched.broadcast import simulation_group
from simsched.exceptions import ConflictError, ForbiddenError, NotFoundError
from simsched.groups import local_groups, recent_memberships
from simsched.socket_auth import (
    CLOSE_CONFLICT,
    CLOSE_FORBIDDEN,
    CLOSE_GONE,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    scope_user,
)
from simulations import services as simulation_services
from simulations.models import Simulation
from simulations.permissions import agent_machine_id, can_read_logs, can_read_simulation

logger = logging.getLogger(__name__)


class ConvergenceConsumer(AsyncJsonWebsocketConsumer):
    """WS /ws/convergence/{id}: a snapshot, then every committed point and status change."""

    async def connect(self):
        self.simulation_id = int(self.scope["url_route"]["kwargs"]["simulation_id"])
        self.group = simulation_group(self.simulation_id)
        self.joined = False
        self.sent_live = None  # while catching up: the (metric, step) sent live since joining
        self.user = scope_user(self.scope)
        self.reads_all_logs = None  # known at the first lines (an agent's are checked each time)
        await self.accept()
        if not can_read_simulation(self.user):
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        # Join before reading the snapshot, so nothing committed in between is missed
        # (clients drop points they already have, by step).
        if not await local_groups().add(self.group, self):
            return
        self.joined = True
        catch_up = recent_memberships.enabled(get_channel_layer())
        if catch_up:
            self.sent_live = set()
        positions = await database_sync_to_async(selectors.series_positions)(
            simulation_id=self.simulation_id
        )
        snapshot = await database_sync_to_async(selectors.convergence_snapshot)(
            simulation_id=self.simulation_id
        )
        if snapshot is None:
            return await self.close(code=CLOSE_NOT_FOUND)
        await self.send_json(snapshot)
        if catch_up:
            self.catching_up = asyncio.create_task(self._catch_up(positions))

    async def _catch_up(self, positions: dict[int, int]) -> None:
        """Writers may skip a point's broadcast for a moment after this socket joined (their
        "nobody watches" answer is up to SIMSCHED_MEMBERSHIP_CACHE_SECONDS old): once those
        answers have expired, send what was stored since the snapshot and not sent live."""
        await asyncio.sleep(recent_memberships.catch_up_after())
        try:
            stored = await database_sync_to_async(selectors.points_from)(
                simulation_id=self.simulation_id, positions=positions
            )
        except Exception:
            logger.exception("catching up simulation %s failed", self.simulation_id)
            return
        finally:
            sent, self.sent_live = self.sent_live, None
        points = [p for p in stored if (p.get("metric"), p["step"]) not in sent]
        if points:
            await self.convergence_points({"simulation_id": self.simulation_id, "points": points})

    async def disconnect(self, code):
        task = getattr(self, "catching_up", None)
        if task is not None:
            task.cancel()
        if getattr(self, "joined", False):
            await local_groups().discard(self.group, self)

    async def convergence_points(self, event):
        if self.sent_live is not None:
            self.sent_live.update((p.get("metric"), p["step"]) for p in event["points"])
        await self.send_json(
            {"type": "points", "simulation_id": event["simulation_id"], "points": event["points"]}
        )

    async def _reads_logs(self) -> bool:
        if self.reads_all_logs is None:
            self.reads_all_logs = await database_sync_to_async(agent_machine_id)(self.user) is None
        if self.reads_all_logs:
            return True  # a person or staff: reading the simulation is enough (checked above)
        # An agent reads the lines of its machine's simulation only, and the machine may change.
        return await database_sync_to_async(self._agent_reads_logs)()

    def _agent_reads_logs(self) -> bool:
        simulation = Simulation.objects.only("machine_id").filter(pk=self.simulation_id).first()
        return simulation is not None and can_read_logs(self.user, simulation)

    async def simulation_deleted(self, event):
        """The simulation was deleted: say so, then close with 4410 (gone)."""
        await self.send_json({"type": "deleted", "simulation_id": event["id"]})
        await self.close(code=CLOSE_GONE)

    async def simulation_status(self, event):
        simulation = event["simulation"]
        await self.send_json(
            {
                "type": "status",
                "simulation_id": simulation["id"],
                "status": simulation["status"],
                "simulation": simulation,
            }
        )

    async def simulation_logs(self, event):
        """New stdout/stderr lines; `truncated` ones are fetched from /simulations/{id}/logs.
        Only to a reader `GET /simulations/{id}/logs` would answer (`can_read_logs`)."""
        if not await self._reads_logs():
            return
        await self.send_json(
            {
                "type": "logs",
                "simulation_id": event["simulation_id"],
                "last_seq": event["last_seq"],
                "truncated": event["truncated"],
                "lines": event["lines"],
            }
        )


class SimulatedRunConsumer(AsyncJsonWebsocketConsumer):
    """WS /ws/convergence/{id}/run: while open, the server runs the simulation itself.

    Opening marks it running (placing a pending one on a machine first), a loop stores and
    broadcasts a realistic loss curve at `?rate=` points per second, and closing finishes it.
    """

    TICK_SECONDS = 0.1

    async def connect(self):
        self.simulation_id = int(self.scope["url_route"]["kwargs"]["simulation_id"])
        self.task = None
        await self.accept()
        if not scope_user(self.scope).is_authenticated:
            return await self.close(code=CLOSE_UNAUTHENTICATED)
        try:  # who may run it is the service's question (simulations.permissions)
            await database_sync_to_async(simulation_services.simulated_run_begin)(
                simulation_id=self.simulation_id, user=self.scope["user"]
            )
        except NotFoundError:
            return await self.close(code=CLOSE_NOT_FOUND)
        except ForbiddenError:
            return await self.close(code=CLOSE_FORBIDDEN)
        except ConflictError as exc:
            await self.send_json({"type": "error", "code": exc.code, "message": exc.message})
            return await self.close(code=CLOSE_CONFLICT)
        await self.send_json(
            {"type": "run", "simulation_id": self.simulation_id, "status": "running"}
        )
        self.task = asyncio.create_task(self._run(self._rate()))

    def _rate(self) -> float:
        from urllib.parse import parse_qs

        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            rate = float(query.get("rate", [settings.SIMSCHED_SIMULATED_RATE])[0])
        except ValueError:
            rate = settings.SIMSCHED_SIMULATED_RATE
        return min(max(rate, 1.0), 1000.0)

    async def _run(self, rate: float):
        interval = max(self.TICK_SECONDS, 1.0 / rate)
        per_tick = max(1, round(rate * interval))
        curve = LossCurve(self.simulation_id, total_steps=int(rate * 300))
        step = await database_sync_to_async(services.next_free_step)(self.simulation_id)
        try:
            while True:
                status = await database_sync_to_async(services.simulated_run_tick)(
                    simulation_id=self.simulation_id, curve=curve, first_step=step, count=per_tick
                )
                step += per_tick
                if status != Simulation.Status.RUNNING:
                    await self.send_json(
                        {"type": "run", "simulation_id": self.simulation_id, "status": status}
                    )
                    return await self.close(code=1000)
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("simulated run of simulation %s stopped", self.simulation_id)
            await self.close(code=1011)

    async def disconnect(self, code):
        if self.task is None:
            return
        self.task.cancel()
        await database_sync_to_async(simulation_services.simulated_run_end)(
            simulation_id=self.simulation_id
        )
