"""Writes to simulations: creation, edits and every lifecycle transition."""

import json
from decimal import Decimal
from typing import NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from machines.events import machine_changed
from machines.models import Machine
from simsched.db import is_storable_id
from simsched.exceptions import ConflictError, ForbiddenError, NotFoundError
from simulations import events, guard_rules
from simulations.models import Simulation
from simulations.permissions import can_change_simulation
from simulations.scheduler import assign_pending, request_assignment
from simulations.selectors import fits, simulation_wait_reasons

ERR_TRANSITION = "A {current} simulation cannot become {target}."
ERR_NOT_PENDING = "Requirements and pinning can only change while the simulation is pending."
ERR_LAUNCH_NOT_PENDING = (
    "command, env and working_dir can only change while the simulation is pending."
)
ERR_PINNED_TOO_SMALL = "The pinned machine does not satisfy the simulation's requirements."
ERR_DELETE_ACTIVE = "The simulation holds a machine; cancel it before deleting it."
ERR_MACHINE_NOT_FOUND = "Machine {machine_id} does not exist."
ERR_STATUS_BY_SCHEDULER = "Status '{target}' is set by the scheduler, not by hand."
ERR_RUN_FORBIDDEN = "Only the simulation's owner or staff may run it."

ERR_PREEMPTED = "Preempted by a higher-priority simulation; requeued to resume later."
ERR_TIMED_OUT = "Ran for its max_duration of {seconds}s."

REQUIREMENT_FIELDS = ("required_gpus", "required_memory", "required_cpu_cores", "pinned_machine")
# What the agent launches: fixed once the simulation leaves the queue, like the requirements.
LAUNCH_FIELDS = ("command", "env", "working_dir")
LIMIT_FIELDS = ("max_duration", "guards", "preemptible", "preempt_grace")
# `owner` is changed by staff in the admin; the API's serializer never passes it.
EDITABLE_FIELDS = (
    "name",
    "priority",
    "owner",
    *REQUIREMENT_FIELDS,
    *LAUNCH_FIELDS,
    *LIMIT_FIELDS,
)
# Simulation rows are locked FOR NO KEY UPDATE: it does not wait for (or deadlock with) point
# writes, which hold a KEY SHARE lock on the row through their foreign key.
LOCK = {"no_key": True}


class HeartbeatAnswer(NamedTuple):
    stop: bool
    preempt: bool


def _check_pinned_fits(simulation: Simulation) -> None:
    pinned = simulation.pinned_machine
    if pinned is not None and not fits(pinned, simulation):
        raise ConflictError(ERR_PINNED_TOO_SMALL, code="pinned_machine_too_small")


@transaction.atomic
def simulation_create(
    *,
    name: str,
    owner=None,
    priority: int = 0,
    required_gpus: int = 0,
    required_memory: int = 1,
    required_cpu_cores: int = 0,
    pinned_machine: Machine | None = None,
    max_duration: int | None = None,
    guards: dict | None = None,
    preemptible: bool = False,
    preempt_grace: int = 120,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    working_dir: str = "",
) -> Simulation:
    simulation = Simulation(
        name=name,
        owner=owner,
        priority=priority,
        required_gpus=required_gpus,
        required_memory=required_memory,
        required_cpu_cores=required_cpu_cores,
        pinned_machine=pinned_machine,
        max_duration=max_duration,
        guards=guard_rules.normalize_guards(guards, defaults=guard_rules.default_guards()),
        preemptible=preemptible,
        preempt_grace=preempt_grace,
        command=command or [],
        env=env or {},
        working_dir=working_dir,
    )
    simulation.full_clean()
    _check_pinned_fits(simulation)
    simulation.save()
    events.simulation_changed(simulation)
    request_assignment()
    return simulation


def simulation_create_bare_sql(*, machine_id: int, name: str, owner=None) -> int:
    """Bare SQL by design (the original API's raw insert): a pending simulation pinned to a machine.

    Returns the new simulation's id.
    """
    if not is_storable_id(machine_id):
        raise NotFoundError(ERR_MACHINE_NOT_FOUND.format(machine_id=machine_id))
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("""SELECT id FROM machines WHERE id = %s""", [machine_id])
        if cursor.fetchone() is None:
            raise NotFoundError(ERR_MACHINE_NOT_FOUND.format(machine_id=machine_id))
        cursor.execute(
            """
            INSERT INTO simulations (
                name, owner_id, status, pinned_machine_id, priority, required_gpus,
                required_memory, required_cpu_cores, accrued_cost, attempts, failure_reason,
                command, env, working_dir, created_at, updated_at, guards, guard_state,
                stopped_by, stop_reason, preemptible, preempt_grace, preemptions
            )
            VALUES (
                %s, %s, %s, %s, 0, 0, 1, 0, 0, 0, '', '[]', '{}', '', %s, %s, %s, '{}', '', '',
                %s, 120, 0
            )
            RETURNING id
            """,
            [
                name,
                getattr(owner, "pk", None),
                Simulation.Status.PENDING,
                machine_id,
                now,
                now,
                json.dumps(guard_rules.default_guards()),
                False,
            ],
        )
        simulation_id = cursor.fetchone()[0]
        events.simulation_changed(
            Simulation.objects.select_related("machine").get(pk=simulation_id)
        )
        request_assignment()
    return simulation_id


@transaction.atomic
def simulation_update(*, simulation: Simulation, data: dict) -> Simulation:
    simulation = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    changes = {field: data[field] for field in EDITABLE_FIELDS if field in data}
    if "guards" in changes:
        changes["guards"] = guard_rules.normalize_guards(
            changes["guards"], defaults=guard_rules.default_guards()
        )
        if changes["guards"] != simulation.guards:
            simulation.guard_state = {}  # what the old guards remembered no longer applies
            transaction.on_commit(lambda pk=simulation.pk: guard_rules.forget(pk))
            guard_rules.forget(simulation.pk)
    requirement_change = any(
        getattr(simulation, field) != changes[field]
        for field in REQUIREMENT_FIELDS
        if field in changes
    )
    if requirement_change and simulation.status != Simulation.Status.PENDING:
        raise ConflictError(ERR_NOT_PENDING, details={"current_status": simulation.status})
    launch_change = any(
        getattr(simulation, field) != changes[field] for field in LAUNCH_FIELDS if field in changes
    )
    if launch_change and simulation.status != Simulation.Status.PENDING:
        raise ConflictError(ERR_LAUNCH_NOT_PENDING, details={"current_status": simulation.status})
    for field, value in changes.items():
        setattr(simulation, field, value)
    simulation.full_clean()
    _check_pinned_fits(simulation)
    simulation.save()
    events.simulation_changed(simulation)
    if "status" in data and data["status"] != simulation.status:
        simulation = simulation_set_status(simulation=simulation, status=data["status"])
    elif requirement_change:
        request_assignment()
    return simulation


def simulation_set_status(*, simulation: Simulation, status: str) -> Simulation:
    """A status change asked for by a person (PUT/PATCH): routed to the matching transition."""
    by_hand = {
        Simulation.Status.RUNNING: simulation_start,
        Simulation.Status.FINISHED: simulation_finish,
        Simulation.Status.FAILED: simulation_fail,
        Simulation.Status.CANCELLED: simulation_cancel,
    }
    if status not in by_hand:
        raise ConflictError(
            ERR_STATUS_BY_SCHEDULER.format(target=status),
            details={"current_status": simulation.status},
        )
    return by_hand[status](simulation=simulation)


def _locked_for_transition(simulation: Simulation, target: str) -> Simulation:
    locked = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if not locked.can_become(target):
        raise ConflictError(
            ERR_TRANSITION.format(current=locked.status, target=target),
            code="invalid_transition",
            details={"current_status": locked.status},
        )
    return locked


def _release_machine(machine_id: int | None) -> None:
    """A simulation no longer holds this machine: a busy machine becomes available again,
    one in maintenance stays there (it has drained)."""
    if machine_id is None:
        return
    machine = Machine.objects.select_for_update().get(pk=machine_id)
    if machine.status == Machine.Status.BUSY:
        machine.status = Machine.Status.AVAILABLE
        machine.save(update_fields=["status", "updated_at"])
        machine_changed(machine)
    request_assignment()


@transaction.atomic
def simulation_start(*, simulation: Simulation) -> Simulation:
    simulation = _locked_for_transition(simulation, Simulation.Status.RUNNING)
    now = timezone.now()
    simulation.status = Simulation.Status.RUNNING
    simulation.started_at = now
    simulation.last_heartbeat_at = now
    simulation.save(update_fields=["status", "started_at", "last_heartbeat_at", "updated_at"])
    events.simulation_changed(simulation)
    return simulation


def _end(simulation: Simulation, target: str, *, reason: str = "", **stop) -> Simulation:
    """Into a final state; `stop` (stopped_by, stop_step, stop_reason, saved_*) when a guard or
    a limit ended it."""
    simulation = _locked_for_transition(simulation, target)
    simulation.status = target
    simulation.finished_at = timezone.now()
    simulation.failure_reason = reason[:500]
    simulation.preempt_requested_at = None
    for field, value in stop.items():
        setattr(simulation, field, value)
    fields = ["status", "finished_at", "failure_reason", "preempt_requested_at", *stop]
    simulation.save(update_fields=[*fields, "updated_at"])
    _release_machine(simulation.machine_id)
    events.simulation_changed(simulation)
    return simulation


@transaction.atomic
def simulation_finish(*, simulation: Simulation) -> Simulation:
    return _end(simulation, Simulation.Status.FINISHED)


@transaction.atomic
def simulation_fail(*, simulation: Simulation, reason: str = "") -> Simulation:
    """A run being preempted that reports failure was stopped by the preemption (its agent
    killed it): it is requeued, not failed."""
    locked = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if locked.is_preempting:
        return simulation_requeue(simulation=locked, reason=ERR_PREEMPTED, preempted=True)
    return _end(locked, Simulation.Status.FAILED, reason=reason or "Reported failed.")


@transaction.atomic
def simulation_stop(
    *,
    simulation: Simulation,
    target: str,
    stopped_by: str,
    reason: str,
    step: int | None = None,
) -> Simulation | None:
    """A guard or a limit ends an active run: the machine is freed now and the agent learns it
    on its next heartbeat. Records what stopped it, at which step, and what of its max_duration
    it did not spend. Returns None when the run had already ended (it finished meanwhile)."""
    locked = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if locked.status not in Simulation.ACTIVE or not locked.can_become(target):
        return None
    saved_hours, saved_cost = locked.unspent_against_limit()
    if target == Simulation.Status.TIMED_OUT:  # it used its whole limit, by definition
        saved_hours = saved_cost = Decimal("0")
    failed = target != Simulation.Status.FINISHED
    return _end(
        locked,
        target,
        reason=reason if failed else "",
        stopped_by=stopped_by,
        stop_step=step,
        stop_reason=reason[:500],
        saved_hours=saved_hours,
        saved_cost=saved_cost,
    )


def simulation_time_out(*, simulation: Simulation, step: int | None = None) -> Simulation | None:
    """max_duration reached: the run ends timed_out (None when it had already ended)."""
    return simulation_stop(
        simulation=simulation,
        target=Simulation.Status.TIMED_OUT,
        stopped_by=Simulation.StoppedBy.MAX_DURATION,
        reason=ERR_TIMED_OUT.format(seconds=simulation.max_duration),
        step=step,
    )


def _over_time(simulation: Simulation) -> bool:
    return (
        simulation.status == Simulation.Status.RUNNING
        and simulation.max_duration is not None
        and (simulation.running_seconds or 0) >= simulation.max_duration
    )


@transaction.atomic
def simulation_cancel(*, simulation: Simulation) -> Simulation:
    """Works in every non-final state; the agent learns it from its next heartbeat."""
    return _end(simulation, Simulation.Status.CANCELLED)


@transaction.atomic
def simulation_requeue(
    *, simulation: Simulation, reason: str, preempted: bool = False
) -> Simulation:
    """Back to the queue after its agent went silent (a failed attempt) or after a preemption
    (not one); what the placement cost is kept, and so are its points."""
    simulation = _locked_for_transition(simulation, Simulation.Status.PENDING)
    released_machine_id = simulation.machine_id
    simulation.accrued_cost = simulation.cost
    simulation.status = Simulation.Status.PENDING
    if preempted:
        simulation.preemptions += 1
    else:
        simulation.attempts += 1
    simulation.preempt_requested_at = None
    simulation.preempted_for = None
    simulation.failure_reason = reason[:500]
    simulation.machine = None
    simulation.hourly_cost = None
    simulation.scheduled_at = simulation.started_at = simulation.last_heartbeat_at = None
    simulation.save()
    _release_machine(released_machine_id)
    events.simulation_changed(simulation)
    return simulation


@transaction.atomic
def simulation_heartbeat(
    *, simulation: Simulation, machine_id: int | None = None
) -> HeartbeatAnswer:
    """Record that the agent on `machine_id` (None: staff) is alive; answers whether it should
    stop: the simulation has ended (cancelled, or stopped by a guard or its time limit), it is
    no longer placed on that agent's machine (it was requeued after the agent went silent), or
    it is being preempted (`preempt`: stop and expect to resume later)."""
    simulation = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if machine_id is not None and simulation.machine_id != machine_id:
        return HeartbeatAnswer(stop=True, preempt=False)
    if _over_time(simulation):
        simulation = simulation_time_out(simulation=simulation) or simulation
    elif simulation.status in Simulation.ACTIVE:
        simulation.last_heartbeat_at = timezone.now()
        simulation.save(update_fields=["last_heartbeat_at", "updated_at"])
    if simulation.is_preempting:
        return HeartbeatAnswer(stop=True, preempt=True)
    return HeartbeatAnswer(stop=simulation.is_final, preempt=False)


@transaction.atomic
def simulation_preempt(*, simulation: Simulation, waiting: Simulation) -> Simulation | None:
    """Ask `simulation` to give its machine to `waiting`: its next heartbeat answers stop with
    preempt, and after its preempt_grace (or as soon as its agent reports the end) it is
    requeued. None when it can no longer be preempted (it ended, or is already being)."""
    locked = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if locked.status not in Simulation.ACTIVE or locked.is_preempting or not locked.preemptible:
        return None
    locked.preempt_requested_at = timezone.now()
    locked.preempted_for = waiting
    locked.save(update_fields=["preempt_requested_at", "preempted_for", "updated_at"])
    events.simulation_changed(locked)
    return locked


@transaction.atomic
def simulation_end_preemption(*, simulation: Simulation) -> Simulation | None:
    """The preempted run's grace is over: requeue it, freeing the machine for the waiter.
    None when it ended some other way meanwhile."""
    locked = Simulation.objects.select_for_update(**LOCK).get(pk=simulation.pk)
    if not locked.is_preempting:
        return None
    return simulation_requeue(simulation=locked, reason=ERR_PREEMPTED, preempted=True)


@transaction.atomic
def simulation_delete(*, simulation: Simulation) -> None:
    simulation = Simulation.objects.select_for_update().get(pk=simulation.pk)  # deletes a key
    if simulation.status in Simulation.ACTIVE:
        raise ConflictError(ERR_DELETE_ACTIVE, details={"current_status": simulation.status})
    simulation_id = simulation.pk
    simulation.delete()
    events.simulation_deleted(simulation_id)


def simulation_claim(*, machine: Machine) -> Simulation | None:
    """The agent on `machine` asks for its work: the simulation reserved for it, if any."""
    with transaction.atomic():
        simulation = (
            Simulation.objects.select_for_update(**LOCK)
            .filter(machine=machine, status__in=Simulation.ACTIVE)
            .first()
        )
        if simulation is not None:
            simulation.last_heartbeat_at = timezone.now()
            simulation.save(update_fields=["last_heartbeat_at", "updated_at"])
        return simulation


def simulation_run_here(*, simulation: Simulation) -> Simulation:
    """Start a simulated run driven by the server (the dashboard's button): a pending
    simulation is placed first, then it runs on its machine. Refused (409) when it is already
    running elsewhere, has ended, or no machine can take it now."""
    if simulation.status == Simulation.Status.PENDING:
        assign_pending()
        simulation.refresh_from_db()
    if simulation.status == Simulation.Status.PENDING:
        reason = simulation_wait_reasons([simulation])[simulation.pk]
        raise ConflictError(f"Waiting for a machine: {reason['message']}", code="waiting")
    return simulation_start(simulation=simulation)


def simulated_run_begin(*, simulation_id: int, user) -> Simulation:
    """The dashboard's simulated run starts: who may, and on which machine."""
    simulation = Simulation.objects.filter(pk=simulation_id).first()
    if simulation is None:
        raise NotFoundError(f"Simulation {simulation_id} does not exist.")
    if not can_change_simulation(user, simulation):
        raise ForbiddenError(ERR_RUN_FORBIDDEN)
    return simulation_run_here(simulation=simulation)


def simulated_run_end(*, simulation_id: int) -> None:
    """The run's socket closed: a simulation it left running is finished."""
    simulation = Simulation.objects.filter(pk=simulation_id).first()
    if simulation is not None and simulation.status == Simulation.Status.RUNNING:
        try:
            simulation_finish(simulation=simulation)
        except ConflictError:
            pass  # it ended some other way meanwhile
