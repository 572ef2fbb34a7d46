"""Writes to the fleet."""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.deletion import ProtectedError

from machines.events import machine_changed
from machines.models import Machine
from simsched.exceptions import ApplicationError, ConflictError
from simulations.models import Simulation
from simulations.scheduler import request_assignment
from simulations.selectors import fits

ERR_BUSY_BY_HAND = "'busy' is set by the scheduler; set 'available' or 'maintenance'."
ERR_SHRINK = "Machine {name} would no longer fit the simulations running on or pinned to it."
ERR_DELETE_WITH_SIMULATIONS = "Machine {name} has simulations; it cannot be deleted."
ERR_NAME_TAKEN = "Machine with this Name already exists."  # as full_clean words it
AGENT_USERNAME = "agent-{name}"


def _save_unique(machine: Machine) -> None:
    """full_clean checked the name is free, but a concurrent write may take it before this
    insert commits: the database's unique constraint then says no, and so do we, as a 400."""
    try:
        with transaction.atomic():  # a savepoint: the outer transaction stays usable
            machine.save()
    except IntegrityError:
        taken = Machine.objects.filter(name=machine.name).exclude(pk=machine.pk).exists()
        if not taken:
            raise
        raise ApplicationError(ERR_NAME_TAKEN, fields={"name": [ERR_NAME_TAKEN]}) from None


@transaction.atomic
def machine_create(**fields) -> Machine:
    machine = Machine(**fields)
    if machine.status == Machine.Status.BUSY:
        raise ApplicationError(ERR_BUSY_BY_HAND, fields={"status": [ERR_BUSY_BY_HAND]})
    machine.full_clean()
    _save_unique(machine)
    machine_changed(machine)
    request_assignment()
    return machine


@transaction.atomic
def machine_update(*, machine: Machine, data: dict) -> Machine:
    """Edits; a `status` in `data` goes through machine_set_status, as /status does."""
    data = dict(data)
    status = data.pop("status", None)
    if status == Machine.Status.BUSY:
        raise ApplicationError(ERR_BUSY_BY_HAND, fields={"status": [ERR_BUSY_BY_HAND]})
    machine = Machine.objects.select_for_update().get(pk=machine.pk)
    for field, value in data.items():
        setattr(machine, field, value)
    machine.full_clean()
    _check_still_fits(machine)
    _save_unique(machine)
    machine_changed(machine)
    request_assignment()  # more capacity may fit waiting work
    if status is not None:
        machine = machine_set_status(machine=machine, status=status)
    return machine


def _check_still_fits(machine: Machine) -> None:
    """A machine cannot shrink below what its current or pinned simulations need."""
    depending = Simulation.objects.filter(
        Q(machine=machine, status__in=Simulation.ACTIVE)
        | Q(pinned_machine=machine, status=Simulation.Status.PENDING)
    )
    too_big = [s.pk for s in depending if not fits(machine, s)]
    if too_big:
        raise ConflictError(
            ERR_SHRINK.format(name=machine.name),
            code="machine_too_small",
            details={"simulations": too_big},
        )


@transaction.atomic
def machine_set_status(*, machine: Machine, status: str) -> Machine:
    """Operators move machines between available and maintenance. A busy machine put into
    maintenance drains: it keeps its simulation and takes no new one. Back to available, it
    takes work again at once (or stays busy while its simulation runs)."""
    if status == Machine.Status.BUSY:
        raise ApplicationError(ERR_BUSY_BY_HAND, fields={"status": [ERR_BUSY_BY_HAND]})
    machine = Machine.objects.select_for_update().get(pk=machine.pk)
    occupied = Simulation.objects.filter(machine=machine, status__in=Simulation.ACTIVE).exists()
    if status == Machine.Status.AVAILABLE and occupied:
        status = Machine.Status.BUSY
    if machine.status != status:
        machine.status = status
        machine.save(update_fields=["status", "updated_at"])
        machine_changed(machine)
    if status == Machine.Status.AVAILABLE:
        request_assignment()
    return machine


def machine_delete(*, machine: Machine) -> None:
    """The machine's agent account goes with it: without its machine, the agent token would
    pass for a person's and could create simulations."""
    try:
        with transaction.atomic():
            # Read it afresh: the agent account may have been made after `machine` was loaded.
            agent_user_id = (
                Machine.objects.select_for_update()
                .values_list("agent_user_id", flat=True)
                .get(pk=machine.pk)
            )
            machine.delete()
            if agent_user_id is not None:
                get_user_model().objects.filter(pk=agent_user_id).delete()
    except ProtectedError as exc:
        raise ConflictError(
            ERR_DELETE_WITH_SIMULATIONS.format(name=machine.name), code="machine_in_use"
        ) from exc


def _free_agent_username(machine: Machine) -> str:
    """agent-<name>, or agent-<name>-<id> when a person already has that username."""
    users = get_user_model().objects
    username = AGENT_USERNAME.format(name=machine.name)[:150]
    if users.filter(username=username).exists():
        username = f"{username[:130]}-{machine.pk}"
    return username


@transaction.atomic
def machine_agent_user(*, machine: Machine):
    """The account the machine's agent authenticates as, created on first use."""
    machine = Machine.objects.select_for_update().get(pk=machine.pk)
    if machine.agent_user_id is None:
        user = get_user_model().objects.create_user(username=_free_agent_username(machine))
        user.set_unusable_password()
        user.save(update_fields=["password"])
        machine.agent_user = user
        machine.save(update_fields=["agent_user", "updated_at"])
    return machine.agent_user
