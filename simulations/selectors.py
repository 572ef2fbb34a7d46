"""Reads of simulations that are more than a filter."""

from collections import Counter
from datetime import UTC
from decimal import Decimal
from typing import NamedTuple

from django.db import connection
from django.db.models import Q
from django.utils.dateparse import parse_datetime

from machines.models import Machine
from simsched.db import dictfetchone, is_storable_id
from simsched.exceptions import NotFoundError
from simulations.budgets import BudgetBook
from simulations.models import Simulation

REQUIREMENTS = (
    ("gpus", "required_gpus", "gpu_count", "GPUs"),
    ("memory", "required_memory", "memory", "GB of memory"),
    ("cpu_cores", "required_cpu_cores", "cpu_cores", "CPU cores"),
)


def fits(machine: Machine, simulation: Simulation) -> bool:
    return all(
        getattr(machine, capacity) >= getattr(simulation, need)
        for _, need, capacity, _ in REQUIREMENTS
    )


def machine_active_simulation(*, machine_id: int) -> Simulation | None:
    """The simulation scheduled on or running on the machine, if any (at most one)."""
    return (
        Simulation.objects.select_related("machine", "owner")
        .filter(machine_id=machine_id, status__in=Simulation.ACTIVE)
        .first()
    )


def queue_ahead(simulation: Simulation) -> int:
    """Pending simulations the scheduler considers before this one."""
    p, c = simulation.priority, simulation.created_at
    ahead = (
        Q(priority__gt=p)
        | Q(priority=p, created_at__lt=c)
        | Q(priority=p, created_at=c, id__lt=simulation.pk)
    )
    return Simulation.objects.filter(ahead, status=Simulation.Status.PENDING).count()


def _no_fit_reason(simulation: Simulation, fleet: list[Machine]) -> dict:
    missing, parts = [], []
    for key, need, capacity, label in REQUIREMENTS:
        largest = max((getattr(m, capacity) for m in fleet), default=0)
        if getattr(simulation, need) > largest:
            missing.append(key)
            parts.append(f"{getattr(simulation, need)} {label} (the most is {largest})")
    if parts:
        message = "No machine in the fleet has " + " or ".join(parts) + "."
    else:
        message = (
            "No single machine in the fleet has all of the GPUs, memory and CPU cores it needs."
        )
        missing = [key for key, *_ in REQUIREMENTS]
    return {"code": "no_machine_fits", "message": message, "missing": missing}


def _wait_reason(
    simulation: Simulation, fleet: list[Machine], budgets=None, *, queue: bool = True
) -> dict:
    if simulation.pinned_machine_id is not None:
        pinned = next((m for m in fleet if m.pk == simulation.pinned_machine_id), None)
        if pinned.status == Machine.Status.MAINTENANCE:
            return {
                "code": "pinned_machine_in_maintenance",
                "message": f"Its pinned machine {pinned.name} is in maintenance.",
            }
        if not fits(pinned, simulation):  # the machine was made smaller after pinning
            return {
                "code": "pinned_machine_too_small",
                "message": f"Its pinned machine {pinned.name} is too small for it.",
            }
        candidates = [pinned]
    else:
        candidates = [m for m in fleet if fits(m, simulation)]
        if not candidates:
            return _no_fit_reason(simulation, fleet)
    in_service = [m for m in candidates if m.status != Machine.Status.MAINTENANCE]
    if not in_service:
        return {
            "code": "fitting_machines_in_maintenance",
            "message": f"All {len(candidates)} machine(s) that fit are in maintenance.",
        }
    if budgets is not None:
        over_budget = budgets.refusal(simulation, min(m.hourly_cost for m in in_service))
        if over_budget:
            return over_budget
    if any(m.status == Machine.Status.AVAILABLE for m in in_service):
        return {"code": "assigning", "message": "A fitting machine is free; it is being assigned."}
    if not queue:
        return {"code": "fitting_machines_busy"}
    ahead = queue_ahead(simulation)
    return {
        "code": "fitting_machines_busy",
        "message": f"All {len(in_service)} machine(s) that fit are busy; "
        + (
            f"{ahead} simulation(s) are ahead of it in the queue."
            if ahead
            else "it is next in line."
        ),
        "fitting_machines": len(in_service),
        "ahead_in_queue": ahead,
    }


def simulation_wait_reasons(simulations) -> dict[int, dict]:
    """Why each pending simulation in `simulations` is still waiting."""
    pending = [s for s in simulations if s.status == Simulation.Status.PENDING]
    if not pending:
        return {}
    fleet = list(
        Machine.objects.only(
            "id", "name", "status", "gpu_count", "memory", "cpu_cores", "hourly_cost"
        )
    )
    budgets = BudgetBook()
    budgets.load({s.owner_id for s in pending})
    reasons = {s.pk: _wait_reason(s, fleet, budgets) for s in pending}
    reasons.update(_preempting_for([s.pk for s in pending]))
    return reasons


def _preempting_for(simulation_ids: list[int]) -> dict[int, dict]:
    victims = Simulation.objects.filter(
        preempted_for_id__in=simulation_ids,
        status__in=Simulation.ACTIVE,
        preempt_requested_at__isnull=False,
    ).select_related("machine")
    return {
        v.preempted_for_id: {
            "code": "preempting",
            "message": f"Preempting {v.name} on {v.machine.name}; "
            "it is placed there once that run has stopped.",
        }
        for v in victims
    }


def pending_wait_reason_codes() -> Counter:
    """How many pending simulations wait for each reason code (without their queue positions,
    which cost a query each): for the metrics scrape."""
    pending = list(
        Simulation.objects.filter(status=Simulation.Status.PENDING).only(
            "id", "pinned_machine_id", "required_gpus", "required_memory", "required_cpu_cores"
        )
    )
    if not pending:
        return Counter()
    fleet = list(Machine.objects.only("id", "name", "status", "gpu_count", "memory", "cpu_cores"))
    return Counter(_wait_reason(s, fleet, queue=False)["code"] for s in pending)


class WriteAccess(NamedTuple):
    owner_id: int | None
    machine_id: int | None


def simulation_write_access(*, simulation_id) -> WriteAccess | None:
    """Bare SQL: who may write a simulation's points, read on every point write, where building
    the ORM query costs more than running it. None for an unknown simulation."""
    simulation_id = int(simulation_id)
    if not is_storable_id(simulation_id):
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT owner_id, machine_id FROM simulations WHERE id = %s", [simulation_id]
        )
        row = cursor.fetchone()
    return WriteAccess(*row) if row is not None else None


def simulation_detailed(*, simulation_id: int) -> dict:
    """Bare SQL by design (the original API's joined read): a simulation with its machine."""
    if not is_storable_id(simulation_id):
        raise NotFoundError(f"Simulation {simulation_id} does not exist.")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT s.id, s.name, s.status, s.priority, s.required_gpus, s.required_memory,
                s.required_cpu_cores, s.created_at, s.updated_at, s.scheduled_at, s.started_at,
                s.finished_at, s.last_heartbeat_at, s.attempts, s.failure_reason, s.hourly_cost,
                s.pinned_machine_id,
                m.id AS machine_id, m.name AS machine_name, m.cpu AS machine_cpu,
                m.gpu AS machine_gpu, m.memory AS machine_memory,
                m.cpu_cores AS machine_cpu_cores, m.gpu_count AS machine_gpu_count,
                m.hourly_cost AS machine_hourly_cost, m.status AS machine_status
            FROM simulations AS s
            LEFT JOIN machines AS m ON m.id = s.machine_id
            WHERE s.id = %s
            """,
            [simulation_id],
        )
        row = dictfetchone(cursor)
    if row is None:
        raise NotFoundError(f"Simulation {simulation_id} does not exist.")
    for key, value in row.items():
        if key.endswith("_at") and isinstance(value, str):  # SQLite returns text
            row[key] = parse_datetime(value).replace(tzinfo=UTC)
    for key in ("hourly_cost", "machine_hourly_cost"):  # SQLite returns floats
        if row[key] is not None:
            row[key] = Decimal(str(row[key])).quantize(Decimal("0.01"))
    machine_fields = [key for key in row if key.startswith("machine_")]
    machine = {key.removeprefix("machine_"): row.pop(key) for key in machine_fields}
    machine["hourly_cost"] = (
        str(machine["hourly_cost"]) if machine["hourly_cost"] is not None else None
    )
    row["machine"] = machine if machine["id"] is not None else None
    return row
