"""Who may do what to the fleet. The one place that knows it: viewsets, consumers, the admin and
services all ask these functions.

- Any signed-in person or token reads the fleet.
- Only staff change it (create, edit, status, delete). A machine's agent token is never staff,
  whatever its account says: agents act only through the agent endpoints and point writes.
"""

from rest_framework.permissions import SAFE_METHODS, BasePermission

ERR_FLEET_IS_FOR_STAFF = "Only staff may change the fleet."


def agent_machine_id(user) -> int | None:
    """The machine whose agent `user` is, or None for a person (or nobody)."""
    if user is None or not user.is_authenticated:
        return None
    # The reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError, for people.
    machine = getattr(user, "agent_machine", None)
    return machine.pk if machine else None


def is_agent(user) -> bool:
    return agent_machine_id(user) is not None


def is_person(user) -> bool:
    """Signed in, and not a machine's agent account."""
    return user is not None and user.is_authenticated and not is_agent(user)


def is_operator(user) -> bool:
    """Staff, signed in as a person (an agent account is never staff)."""
    return is_person(user) and bool(user.is_staff)


def can_read_fleet(user) -> bool:
    return user is not None and user.is_authenticated


def can_change_fleet(user) -> bool:
    return is_operator(user)


class FleetPermission(BasePermission):
    """Reads for anyone signed in; every write for staff."""

    message = ERR_FLEET_IS_FOR_STAFF

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS:
            return can_read_fleet(request.user)
        return can_change_fleet(request.user)
