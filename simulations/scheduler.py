"""Putting waiting simulations on machines.

Assignment runs in one transaction that locks the available machines and the queue head with
`SELECT ... FOR UPDATE SKIP LOCKED`, so any number of processes may assign at once without
waiting on each other; on SQLite the transaction takes the write lock when it begins
(`transaction_mode=IMMEDIATE`), so assigners are serialized. The partial unique constraint
`one_active_simulation_per_machine` refuses a double booking even if this code were wrong.
Owners' budgets are locked the same way while they are charged, so no two assigners start work
that together exceeds a budget. (The periodic part, which takes machines back, is
`simulations.housekeeping`.)
"""

import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from machines.events import machine_changed
from machines.models import Machine
from simulations import events
from simulations.budgets import BudgetBook
from simulations.models import Simulation
from simulations.selectors import fits

logger = logging.getLogger(__name__)

QUEUE_CHUNK_MAX = 500
QUEUE_ORDER = ("-priority", "created_at", "id")


@dataclass(frozen=True)
class Assignment:
    simulation_id: int
    machine_id: int


def request_assignment() -> None:
    """Work or capacity appeared: assign once the current transaction has committed."""
    transaction.on_commit(assign_pending, robust=True)


def _cheapest_fit(simulation: Simulation, free: list[Machine]) -> Machine | None:
    """`free` is ordered cheapest first."""
    for machine in free:
        if simulation.pinned_machine_id not in (None, machine.pk):
            continue
        if fits(machine, simulation):
            return machine
    return None


def _after(simulation: Simulation) -> Q:
    """Everything behind `simulation` in queue order (keyset pagination)."""
    p, c = simulation.priority, simulation.created_at
    return (
        Q(priority__lt=p)
        | Q(priority=p, created_at__gt=c)
        | Q(priority=p, created_at=c, id__gt=simulation.pk)
    )


def _queue(free: list[Machine]):
    capacity = {
        "required_gpus__lte": max(m.gpu_count for m in free),
        "required_memory__lte": max(m.memory for m in free),
        "required_cpu_cores__lte": max(m.cpu_cores for m in free),
    }
    pinnable = Q(pinned_machine__isnull=True) | Q(pinned_machine_id__in=[m.pk for m in free])
    return (
        Simulation.objects.select_for_update(skip_locked=True)
        .filter(status=Simulation.Status.PENDING, **capacity)
        .filter(pinnable)
        .order_by(*QUEUE_ORDER)
    )


def assign_pending() -> list[Assignment]:
    """Highest priority first, oldest first within a priority, each to the cheapest free
    machine that satisfies its request. Returns what was assigned."""
    with transaction.atomic():
        free = list(
            Machine.objects.select_for_update(skip_locked=True)
            .filter(status=Machine.Status.AVAILABLE)
            .exclude(simulations__status__in=Simulation.ACTIVE)
            .order_by("hourly_cost", "id")
        )
        if not free:
            return []
        assigned: list[tuple[Simulation, Machine]] = []
        budgets = BudgetBook(lock=True)
        last = None
        while free:
            queue = _queue(free)
            if last is not None:
                queue = queue.filter(_after(last))
            # Lock only about as much of the queue head as the free machines can take, so other
            # assigners skipping locked rows do not jump far ahead in priority.
            chunk = list(queue[: min(QUEUE_CHUNK_MAX, 4 * len(free) + 16)])
            if not chunk:
                break
            budgets.load({s.owner_id for s in chunk})
            for simulation in chunk:
                machine = _cheapest_fit(simulation, free)
                if machine is not None and budgets.refusal(simulation, machine.hourly_cost):
                    continue  # over its owner's budget or GPU cap: it waits
                if machine is not None:
                    budgets.charge(simulation, machine.hourly_cost)
                    free.remove(machine)
                    assigned.append((simulation, machine))
                    if not free:
                        break
            last = chunk[-1]
        _reserve(assigned)
    return [Assignment(s.pk, m.pk) for s, m in assigned]


def _reserve(assigned: list[tuple[Simulation, Machine]]) -> None:
    if not assigned:
        return
    now = timezone.now()
    for simulation, machine in assigned:
        simulation.status = Simulation.Status.SCHEDULED
        simulation.machine = machine
        simulation.hourly_cost = machine.hourly_cost
        simulation.scheduled_at = now
        simulation.last_heartbeat_at = now
        simulation.updated_at = now
        machine.status = Machine.Status.BUSY
    Simulation.objects.bulk_update(
        [s for s, _ in assigned],
        ["status", "machine", "hourly_cost", "scheduled_at", "last_heartbeat_at", "updated_at"],
    )
    Machine.objects.filter(pk__in=[m.pk for _, m in assigned]).update(
        status=Machine.Status.BUSY, updated_at=now
    )
    for simulation, machine in assigned:
        events.simulation_changed(simulation)
        machine_changed(machine)
    logger.info("assigned %d simulation(s)", len(assigned))
