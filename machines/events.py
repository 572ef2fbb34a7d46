"""What the fleet dashboard is told when a machine changes."""

from machines.models import Machine
from simsched.broadcast import FLEET_GROUP, broadcast


def machine_payload(machine: Machine) -> dict:
    return {
        "id": machine.pk,
        "name": machine.name,
        "status": machine.status,
        "gpu_count": machine.gpu_count,
        "memory": machine.memory,
        "cpu_cores": machine.cpu_cores,
        "hourly_cost": str(machine.hourly_cost),
    }


def machine_changed(machine: Machine) -> None:
    broadcast(FLEET_GROUP, {"type": "fleet.machine", "machine": machine_payload(machine)})
