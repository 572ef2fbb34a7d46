"""What viewers are told when a simulation changes: the fleet page and the simulation's page."""

from simsched.broadcast import FLEET_GROUP, broadcast, simulation_group
from simulations.models import Simulation


def simulation_payload(simulation: Simulation) -> dict:
    machine = simulation.machine
    return {
        "id": simulation.pk,
        "name": simulation.name,
        "status": simulation.status,
        "priority": simulation.priority,
        "machine": machine.pk if machine else None,
        "machine_name": machine.name if machine else None,
        "scheduled_at": _iso(simulation.scheduled_at),
        "started_at": _iso(simulation.started_at),
        "finished_at": _iso(simulation.finished_at),
        "failure_reason": simulation.failure_reason,
        "stopped_by": simulation.stopped_by,
        "stop_step": simulation.stop_step,
        "stop_reason": simulation.stop_reason,
        "saved_hours": _decimal(simulation.saved_hours),
        "saved_cost": _decimal(simulation.saved_cost),
        "preempting": simulation.is_preempting,
    }


def _decimal(value):
    return str(value) if value is not None else None


def _iso(value):
    return value.isoformat() if value else None


def simulation_changed(simulation: Simulation) -> None:
    payload = simulation_payload(simulation)
    broadcast(FLEET_GROUP, {"type": "fleet.simulation", "simulation": payload})
    broadcast(simulation_group(simulation.pk), {"type": "simulation.status", "simulation": payload})


def simulation_deleted(simulation_id: int) -> None:
    broadcast(FLEET_GROUP, {"type": "fleet.simulation_deleted", "id": simulation_id})
    # Its viewers are told, then closed with 4410 (gone) by the consumer.
    broadcast(simulation_group(simulation_id), {"type": "simulation.deleted", "id": simulation_id})
