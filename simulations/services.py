"""Writes to simulations: creation, edits and every lifecycle transition."""

from django.db import connection, transaction
from django.utils import timezone

from machines.events import machine_changed
from machines.models import Machine
from simsched.db import is_storable_id
from simsched.exceptions import ConflictError, ForbiddenError, NotFoundError
from simulations import events
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

REQUIREMENT_FIELDS = ("required_gpus", "required_memory", "required_cpu_cores", "pinned_machine")
# What the agent launches: fixed once the simulation leaves the queue, like the requirements.
LAUNCH_FIELDS = ("command", "env", "working_dir")
# `owner` is changed by staff in the admin; the API's serializer never passes it.
EDITABLE_FIELDS = ("name", "priority", "owner", *REQUIREMENT_FIELDS, *LAUNCH_FIELDS)


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
                command, env, working_dir, created_at, updated_at
            )
            VALUES (%s, %s, %s, %s, 0, 0, 1, 0, 0, 0, '', '[]', '{}', '', %s, %s)
            RETURNING id
            """,
            [name, getattr(owner, "pk", None), Simulation.Status.PENDING, machine_id, now, now],
        )
        simulation_id = cursor.fetchone()[0]
        events.simulation_changed(
            Simulation.objects.select_related("machine").get(pk=simulation_id)
        )
        request_assignment()
    return simulation_id


@transaction.atomic
def simulation_update(*, simulation: Simulation, data: dict) -> Simulation:
    simulation = Simulation.objects.select_for_update().get(pk=simulation.pk)
    changes = {field: data[field] for field in EDITABLE_FIELDS if field in data}
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
    locked = Simulation.objects.select_for_update().get(pk=simulation.pk)
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


def _end(simulation: Simulation, target: str, *, reason: str = "") -> Simulation:
    simulation = _locked_for_transition(simulation, target)
    simulation.status = target
    simulation.finished_at = timezone.now()
    simulation.failure_reason = reason[:500]
    simulation.save(update_fields=["status", "finished_at", "failure_reason", "updated_at"])
    _release_machine(simulation.machine_id)
    events.simulation_changed(simulation)
    return simulation


@transaction.atomic
def simulation_finish(*, simulation: Simulation) -> Simulation:
    return _end(simulation, Simulation.Status.FINISHED)


@transaction.atomic
def simulation_fail(*, simulation: Simulation, reason: str = "") -> Simulation:
    return _end(simulation, Simulation.Status.FAILED, reason=reason or "Reported failed.")


@transaction.atomic
def simulation_cancel(*, simulation: Simulation) -> Simulation:
    """Works in every non-final state; the agent learns it from its next heartbeat."""
    return _end(simulation, Simulation.Status.CANCELLED)


@transaction.atomic
def simulation_requeue(*, simulation: Simulation, reason: str) -> Simulation:
    """Back to the queue after its agent went silent; what the placement cost is kept."""
    simulation = _locked_for_transition(simulation, Simulation.Status.PENDING)
    released_machine_id = simulation.machine_id
    simulation.accrued_cost = simulation.cost
    simulation.status = Simulation.Status.PENDING
    simulation.attempts += 1
    simulation.failure_reason = reason[:500]
    simulation.machine = None
    simulation.hourly_cost = None
    simulation.scheduled_at = simulation.started_at = simulation.last_heartbeat_at = None
    simulation.save()
    _release_machine(released_machine_id)
    events.simulation_changed(simulation)
    return simulation


@transaction.atomic
def simulation_heartbeat(*, simulation: Simulation, machine_id: int | None = None) -> bool:
    """Record that the agent on `machine_id` (None: staff) is alive; returns whether it should
    stop: the simulation has ended, or it is no longer placed on that agent's machine (it was
    requeued after the agent went silent)."""
    simulation = Simulation.objects.select_for_update().get(pk=simulation.pk)
    if machine_id is not None and simulation.machine_id != machine_id:
        return True
    if simulation.status in Simulation.ACTIVE:
        simulation.last_heartbeat_at = timezone.now()
        simulation.save(update_fields=["last_heartbeat_at", "updated_at"])
    return simulation.is_final


@transaction.atomic
def simulation_delete(*, simulation: Simulation) -> None:
    simulation = Simulation.objects.select_for_update().get(pk=simulation.pk)
    if simulation.status in Simulation.ACTIVE:
        raise ConflictError(ERR_DELETE_ACTIVE, details={"current_status": simulation.status})
    simulation_id = simulation.pk
    simulation.delete()
    events.simulation_deleted(simulation_id)


def simulation_claim(*, machine: Machine) -> Simulation | None:
    """The agent on `machine` asks for its work: the simulation reserved for it, if any."""
    with transaction.atomic():
        simulation = (
            Simulation.objects.select_for_update()
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
