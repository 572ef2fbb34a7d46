"""Who may do what to a simulation. The one place that knows it: viewsets, consumers, dashboard
views, the admin and services all ask these functions.

- Anyone signed in (a person or a token) reads every simulation.
- A person creates simulations; an agent token never does.
- A simulation's owner or staff change it (name, priority, requirements, pinning, status,
  cancel, the dashboard's simulated run) and delete it. One without an owner (seeded, or its
  owner was deleted) is changed by staff only.
- An agent token acts only on the simulation placed on its own machine, and only through the
  agent endpoints (start, heartbeat, finish, fail, claim) and point writes.
- Points are written by the agent of the simulation's machine, its owner or staff.
- A simulation's `env` is secret: its owner, staff and the agent of its machine (which launches
  the command) see it; nobody else, in no list.
- Its log lines are read like the simulation, except that an agent reads only its own
  machine's; only the agent of its machine ships them.
"""

from typing import NamedTuple

from rest_framework.permissions import SAFE_METHODS, BasePermission

from machines.permissions import agent_machine_id, is_agent, is_operator, is_person

__all__ = [
    "AgentOfSimulationMachine",
    "AgentOrStaff",
    "CanReadOrShipLogs",
    "IsAgent",
    "SimulationPermission",
    "agent_machine_id",
    "can_change_simulation",
    "can_create_simulation",
    "can_drive_simulation",
    "can_read_logs",
    "can_read_simulation",
    "can_trip_nan_guard",
    "can_report_for",
    "report_scope",
    "can_see_env",
    "is_agent",
    "is_operator",
    "is_person",
]

ERR_CHANGE = "Only the simulation's owner or staff may change it."
ERR_AGENT_WRITES = "Agent tokens may only report for their own machine's simulation."
ERR_DRIVE = "Only the agent of the simulation's machine (or staff) may do this."
ERR_AGENTS_ONLY = "This endpoint is for machine agents (use the machine's agent token)."
ERR_REPORT = "You may not report points for this simulation."
ERR_LOGS = "Only the agent of the simulation's machine may do this."


def _owns(user, simulation) -> bool:
    return simulation.owner_id is not None and simulation.owner_id == user.pk


def can_read_simulation(user, simulation=None) -> bool:
    """Anyone signed in reads any simulation (`simulation` lets the rule narrow later)."""
    return user is not None and user.is_authenticated


def can_create_simulation(user) -> bool:
    return is_person(user)


def can_change_simulation(user, simulation) -> bool:
    """Edit, change status, cancel, delete, run it from the dashboard: its owner or staff."""
    return is_operator(user) or (is_person(user) and _owns(user, simulation))


def can_drive_simulation(user, simulation) -> bool:
    """The agent endpoints (start, finish, fail): the agent of its machine, or staff."""
    if is_operator(user):
        return True
    machine_id = agent_machine_id(user)
    return machine_id is not None and machine_id == simulation.machine_id


class ReportScope(NamedTuple):
    """The simulations a caller may write points for: all of them, the one on its machine, or
    its own. A point write checks it inside its own SQL statement (convergence/stores.py:
    `any OR machine_id = machine_id OR owner_id = owner_id`, where NULL matches nothing)."""

    any: bool
    machine_id: int | None
    owner_id: int | None

    def allows(self, simulation) -> bool:
        return (
            self.any
            or (self.machine_id is not None and self.machine_id == simulation.machine_id)
            or (self.owner_id is not None and self.owner_id == simulation.owner_id)
        )


def report_scope(user) -> ReportScope:
    """Point writes: the agent of its machine, its owner (a person), or staff."""
    if is_operator(user):
        return ReportScope(True, None, None)
    return ReportScope(False, agent_machine_id(user), user.pk if is_person(user) else None)


def can_report_for(user, simulation) -> bool:
    """Point writes (`report_scope`). `simulation` needs only `owner_id` and `machine_id` (the
    point write reads just those)."""
    return report_scope(user).allows(simulation)


class SimulationPermission(BasePermission):
    """The simulation API: reads for anyone signed in, creation for people, changes and
    deletion for the owner or staff."""

    message = ERR_CHANGE

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS:
            return can_read_simulation(request.user)
        if is_agent(request.user):
            self.message = ERR_AGENT_WRITES
            return False
        return can_create_simulation(request.user)

    def has_object_permission(self, request, view, obj):
        if request.method in SAFE_METHODS:
            return can_read_simulation(request.user, obj)
        return can_change_simulation(request.user, obj)


class AgentOfSimulationMachine(BasePermission):
    """start / finish / fail: the agent of the simulation's machine, or staff."""

    message = ERR_DRIVE

    def has_permission(self, request, view):
        return is_agent(request.user) or is_operator(request.user)

    def has_object_permission(self, request, view, obj):
        return can_drive_simulation(request.user, obj)


class AgentOrStaff(BasePermission):
    """heartbeat: any agent may ask (one of another machine is told to stop), or staff."""

    message = ERR_DRIVE

    def has_permission(self, request, view):
        return is_agent(request.user) or is_operator(request.user)


class IsAgent(BasePermission):
    message = ERR_AGENTS_ONLY

    def has_permission(self, request, view):
        return is_agent(request.user)


def can_trip_nan_guard(user, simulation) -> bool:
    """A refused non-finite value stops the run only when the run itself sent it: the agent of
    its machine or its owner (not staff or anyone else testing the endpoint)."""
    machine_id = agent_machine_id(user)
    if machine_id is not None:
        return machine_id == simulation.machine_id
    return is_person(user) and _owns(user, simulation)


def can_see_env(user, simulation) -> bool:
    """The secret env: its owner, staff, and the agent of the machine that holds it now, which
    launches it. Not that machine's agent once the run has ended or moved, nor before it is
    placed there: the commands an agent runs hold its token (`SIMSCHED_TOKEN`), and the
    machine's earlier and later runs are other people's."""
    if user is None or not user.is_authenticated:
        return False
    machine_id = agent_machine_id(user)
    if machine_id is not None:
        return (
            simulation.machine_id is not None
            and machine_id == simulation.machine_id
            and simulation.status in simulation.ACTIVE
        )
    return is_operator(user) or (is_person(user) and _owns(user, simulation))


def can_read_logs(user, simulation) -> bool:
    if not can_read_simulation(user, simulation):
        return False
    machine_id = agent_machine_id(user)
    return machine_id is None or machine_id == simulation.machine_id


def can_ship_logs(user, simulation) -> bool:
    machine_id = agent_machine_id(user)
    return machine_id is not None and machine_id == simulation.machine_id


class CanReadOrShipLogs(BasePermission):
    """GET /simulations/{id}/logs: `can_read_logs`; POST: `can_ship_logs`."""

    message = ERR_LOGS

    def has_object_permission(self, request, view, obj):
        if request.method in SAFE_METHODS:
            return can_read_logs(request.user, obj)
        return can_ship_logs(request.user, obj)
