"""The scheduler's periodic pass: take machines back from silent agents, from runs past their
max_duration or stalled, end preemptions whose grace is over, ask low-priority preemptible runs
to make room for waiting higher-priority ones, and assign what waits.

Depends on the services and the scheduler, never the other way round.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from convergence.selectors import simulation_point_stats
from machines.models import Machine
from simulations import guards, services
from simulations.budgets import BudgetBook
from simulations.models import Simulation
from simulations.scheduler import QUEUE_ORDER, assign_pending
from simulations.selectors import fits

logger = logging.getLogger(__name__)

S = Simulation.Status
PREEMPTION_QUEUE_HEAD = 100


def reap_silent(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Scheduled or running simulations whose agent stayed silent past the timeout are requeued
    (up to SIMSCHED_MAX_RETRIES times) or failed; either way their machine is freed."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT)
    stale = Simulation.objects.filter(status__in=Simulation.ACTIVE, last_heartbeat_at__lt=cutoff)
    result = {"requeued": [], "failed": []}
    for simulation in stale.order_by("id"):
        reason = f"Agent silent for more than {settings.SIMSCHED_HEARTBEAT_TIMEOUT}s."
        with transaction.atomic():
            current = Simulation.objects.select_for_update(no_key=True).get(pk=simulation.pk)
            if current.status not in Simulation.ACTIVE or current.last_heartbeat_at >= cutoff:
                continue  # it spoke up, or ended, since we looked
            if current.is_preempting:  # its agent stopped as asked: not a failed attempt
                services.simulation_end_preemption(simulation=current)
                result["requeued"].append(current.pk)
            elif current.attempts < settings.SIMSCHED_MAX_RETRIES:
                services.simulation_requeue(simulation=current, reason=reason)
                result["requeued"].append(current.pk)
            else:
                services.simulation_fail(simulation=current, reason=reason)
                result["failed"].append(current.pk)
    return result


def time_out_overdue(*, now: datetime | None = None) -> list[int]:
    """Running simulations past their max_duration end timed_out. Returns their ids."""
    now = now or timezone.now()
    running = Simulation.objects.filter(status=S.RUNNING, max_duration__isnull=False).only(
        "max_duration", "started_at", "finished_at"
    )
    overdue = [s for s in running if (now - s.started_at).total_seconds() >= s.max_duration]
    if not overdue:
        return []
    last_steps = simulation_point_stats([s.pk for s in overdue])
    timed_out = []
    for simulation in overdue:
        step = last_steps.get(simulation.pk, {}).get("last_step")
        if services.simulation_time_out(simulation=simulation, step=step) is not None:
            timed_out.append(simulation.pk)
    return timed_out


def end_preemptions(*, now: datetime | None = None) -> list[int]:
    """Preempted runs whose grace is over are requeued, freeing their machine for the waiter."""
    now = now or timezone.now()
    preempting = Simulation.objects.filter(
        status__in=Simulation.ACTIVE, preempt_requested_at__isnull=False
    ).only("preempt_requested_at", "preempt_grace")
    ended = []
    for simulation in preempting:
        if simulation.preempt_requested_at + timedelta(seconds=simulation.preempt_grace) <= now:
            if services.simulation_end_preemption(simulation=simulation) is not None:
                ended.append(simulation.pk)
    return ended


def _victims() -> list[Simulation]:
    """Runs that may be preempted now: preemptible, holding a busy machine, not being already."""
    return list(
        Simulation.objects.filter(
            status__in=Simulation.ACTIVE,
            preemptible=True,
            preempt_requested_at__isnull=True,
            machine__status=Machine.Status.BUSY,
        ).select_related("machine")
    )


def _waiting(lowest_victim_priority: int) -> list[Simulation]:
    """The head of the queue that outranks some victim and has no preemption under way."""
    being_freed = Simulation.objects.filter(
        preempted_for=OuterRef("pk"),
        status__in=Simulation.ACTIVE,
        preempt_requested_at__isnull=False,
    )
    return list(
        Simulation.objects.filter(status=S.PENDING, priority__gt=lowest_victim_priority)
        .exclude(Exists(being_freed))
        .order_by(*QUEUE_ORDER)[:PREEMPTION_QUEUE_HEAD]
    )


def _fits_on(waiting: Simulation, machine: Machine) -> bool:
    return waiting.pinned_machine_id in (None, machine.pk) and fits(machine, waiting)


def _victim_order(victim: Simulation) -> tuple:
    """The cheapest machine first; then the lowest priority; then the run that started last
    (the least work to redo)."""
    return (victim.machine.hourly_cost, victim.priority, -victim.scheduled_at.timestamp())


def preempt_for_waiting() -> list[tuple[int, int]]:
    """For each waiting simulation, highest priority first, that no free machine takes but that
    fits on machines held by lower-priority preemptible runs, ask the run on the cheapest such
    machine to stop. The waiter is placed by ordinary assignment once that machine is free, so
    a machine never holds two. Returns (victim, waiting) id pairs."""
    victims = _victims()
    if not victims:
        return []
    waiting = _waiting(min(v.priority for v in victims))
    if not waiting:
        return []
    free = list(
        Machine.objects.filter(status=Machine.Status.AVAILABLE).exclude(
            simulations__status__in=Simulation.ACTIVE
        )
    )
    budgets = BudgetBook()
    budgets.load({w.owner_id for w in waiting})
    requested = []
    for waiter in waiting:
        if any(_fits_on(waiter, machine) for machine in free):
            continue  # assignment will place it (or its budget keeps it waiting)
        candidates = [
            v for v in victims if v.priority < waiter.priority and _fits_on(waiter, v.machine)
        ]
        if not candidates:
            continue
        victim = min(candidates, key=_victim_order)
        if budgets.refusal(waiter, victim.machine.hourly_cost):
            continue
        if services.simulation_preempt(simulation=victim, waiting=waiter) is not None:
            victims.remove(victim)
            budgets.charge(waiter, victim.machine.hourly_cost)
            requested.append((victim.pk, waiter.pk))
    if requested:
        logger.info("preempting %d simulation(s)", len(requested))
    return requested


def scheduler_pass(*, now: datetime | None = None) -> dict[str, list]:
    """One pass of `manage.py scheduler`; returns what each step did."""
    reaped = reap_silent(now=now)
    return {
        **reaped,
        "timed_out": time_out_overdue(now=now),
        "stalled": guards.guards_on_tick(now=now),
        "preempted": end_preemptions(now=now),
        "preempting": preempt_for_waiting(),
        "assigned": assign_pending(),
    }
