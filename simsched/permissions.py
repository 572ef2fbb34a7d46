"""Who may do what. Agents authenticate as their machine's agent account."""

from rest_framework.permissions import SAFE_METHODS, BasePermission


def agent_machine_id(user) -> int | None:
    """The machine whose agent `user` is, or None for a person."""
    if not user or not user.is_authenticated:
        return None
    # The reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError, for people.
    machine = getattr(user, "agent_machine", None)
    return machine.pk if machine else None


def is_agent(user) -> bool:
    return agent_machine_id(user) is not None


class IsStaffOrReadOnly(BasePermission):
    """Fleet changes are for staff."""

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or bool(request.user and request.user.is_staff)


class IsPersonForWrites(BasePermission):
    """Creating and changing simulations is for signed-in people, not agent tokens."""

    message = "Agent tokens may only report for their own machine's simulations."

    def has_permission(self, request, view):
        return request.method in SAFE_METHODS or not is_agent(request.user)


class IsOwnerOrStaffForDelete(BasePermission):
    message = "Only the simulation's owner or staff may delete it."

    def has_object_permission(self, request, view, obj):
        if request.method != "DELETE":
            return True
        return request.user.is_staff or obj.owner_id == request.user.pk


class IsAgentOfMachineOrStaff(BasePermission):
    """Agent calls: the agent of the simulation's machine (or staff acting for it)."""

    message = "Only the agent of the simulation's machine may do this."

    def has_object_permission(self, request, view, obj):
        if request.user.is_staff:
            return True
        machine_id = agent_machine_id(request.user)
        return machine_id is not None and machine_id == obj.machine_id


class IsAgent(BasePermission):
    message = "This endpoint is for machine agents (use the machine's agent token)."

    def has_permission(self, request, view):
        return is_agent(request.user)


def can_write_points(user, simulation) -> bool:
    """Staff, the simulation's owner, or the agent of the machine it runs on."""
    if user.is_staff or (simulation.owner_id is not None and simulation.owner_id == user.pk):
        return True
    machine_id = agent_machine_id(user)
    if machine_id is not None:
        return machine_id == simulation.machine_id
    return simulation.owner_id is None


def can_control_simulation(user, simulation) -> bool:
    """Starting a simulated run from the dashboard: the owner or staff."""
    return bool(user.is_staff or simulation.owner_id in (None, user.pk)) and not is_agent(user)


def can_see_env(user, simulation) -> bool:
    """A simulation's env is secret: its owner, staff, and the agent that must launch it."""
    if not user or not user.is_authenticated:
        return False
    machine_id = agent_machine_id(user)
    if machine_id is not None:
        return simulation.machine_id is not None and machine_id == simulation.machine_id
    return bool(
        user.is_staff or (simulation.owner_id is not None and simulation.owner_id == user.pk)
    )


class CanReadOrShipLogs(BasePermission):
    """Logs: people signed in read them, an agent only its own machine's; only the agent of
    the simulation's machine ships them."""

    message = "Only the agent of the simulation's machine may do this."

    def has_object_permission(self, request, view, obj):
        machine_id = agent_machine_id(request.user)
        if request.method in SAFE_METHODS:
            return machine_id is None or machine_id == obj.machine_id
        return machine_id is not None and machine_id == obj.machine_id
