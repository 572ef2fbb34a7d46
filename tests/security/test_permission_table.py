"""The permission policy as a table: every write operation × every kind of caller.

Each row asserts the status code, and, when the call is refused, that nothing at all changed
(machines, simulations, points, accounts, tokens). The world of every row:

- `owner` owns `simulation`, placed (scheduled) on machine A, and `pending`, which fits nowhere;
- `own_agent` is machine A's agent, `other_agent` machine B's (B is idle);
- `other` is another engineer, `staff` an operator, `anonymous` sends no credentials.

Machine rows change machine A, except delete, which removes the idle machine B (A holds a
simulation, so deleting it is a 409 for everyone allowed to try).
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from convergence.selectors import simulation_point_stats
from machines.models import Machine
from machines.services import machine_agent_user
from simsched.asgi import application
from simulations.models import Simulation
from simulations.services import simulation_start
from tests.factories import make_machine, make_simulation, token_client

pytestmark = pytest.mark.django_db(transaction=True)

ACTORS = ["anonymous", "other", "owner", "staff", "own_agent", "other_agent"]
SOCKET_TIMEOUT = 10


@dataclass
class World:
    machine_a: Machine
    machine_b: Machine
    simulation: Simulation
    pending: Simulation
    users: dict


def _person(username: str, *, staff: bool = False):
    """Token-only accounts: no password to hash, so a row costs milliseconds, not a second."""
    return get_user_model().objects.create_user(
        username=username, is_staff=staff, is_superuser=staff
    )


def _build_world() -> World:
    owner = _person("table-owner")
    users = {
        "anonymous": None,
        "other": _person("table-other"),
        "owner": owner,
        "staff": _person("table-staff", staff=True),
    }
    machine_a, machine_b = make_machine(name="table-a"), make_machine(name="table-b")
    simulation = make_simulation(name="table-run", owner=owner, pinned_machine=machine_a)
    simulation.refresh_from_db()
    assert simulation.status == Simulation.Status.SCHEDULED
    pending = make_simulation(name="table-waiting", owner=owner, required_gpus=10_000)
    users["own_agent"] = machine_agent_user(machine=machine_a)
    users["other_agent"] = machine_agent_user(machine=machine_b)
    for user in users.values():
        if user is not None:
            Token.objects.get_or_create(user=user)
    return World(machine_a, machine_b, simulation, pending, users)


def _snapshot(world: World) -> tuple:
    """Everything a write could touch."""
    simulation_ids = list(Simulation.objects.values_list("id", flat=True))
    return (
        list(Machine.objects.order_by("pk").values()),
        list(Simulation.objects.order_by("pk").values()),
        simulation_point_stats(simulation_ids),
        list(get_user_model().objects.order_by("pk").values_list("pk", "username", "is_staff")),
        sorted(Token.objects.values_list("key", "user_id")),
    )


def _client(user) -> APIClient:
    return APIClient() if user is None else token_client(user)


def _simulated_run(world: World, user) -> int:
    """Open the dashboard's simulated-run socket; 200 if the run began (then close it), else
    the socket's close code."""
    headers = []
    if user is not None:
        key = Token.objects.get(user=user).key
        headers = [(b"authorization", f"Token {key}".encode())]

    async def run() -> int:
        path = f"/ws/convergence/{world.simulation.pk}/run?rate=50"
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
        assert connected
        message = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        if message["type"] == "websocket.close":
            return message["code"]
        await communicator.disconnect(timeout=SOCKET_TIMEOUT)
        return 200

    return async_to_sync(run)()


@dataclass
class Operation:
    name: str
    call: Callable  # (world, client, user) -> status code
    expected: dict  # actor -> status code
    prepare: Callable | None = None  # (world) -> None, before the snapshot
    # Actors for whom a 2xx is, by the rules, a no-op (told to stop, nothing to claim).
    succeeds_without_change: frozenset = frozenset()


def _http(method: str, path: Callable, body: Callable | None = None) -> Callable:
    def call(world, client, user):
        data = body(world) if body else {}
        return getattr(client, method)(path(world), data, format="json").status_code

    return call


def _start(world: World) -> None:
    simulation_start(simulation=world.simulation)


def _machine_put_body(world: World) -> dict:
    return {"name": "table-a", "cpu": "AMD EPYC 9754", "memory": 512, "cpu_cores": 96}


def _point(world: World) -> dict:
    return {"simulation_id": world.simulation.pk, "step": 0, "loss_value": 1.5}


# Expected answers, one line per kind of outcome.
STAFF_ONLY = {"anonymous": 401, "other": 403, "owner": 403, "own_agent": 403, "other_agent": 403}
PEOPLE = {"anonymous": 401, "own_agent": 403, "other_agent": 403}
OWNER_OR_STAFF = {"anonymous": 401, "other": 403, "own_agent": 403, "other_agent": 403}
AGENT_OR_STAFF = {"anonymous": 401, "other": 403, "owner": 403, "other_agent": 403}
REPORTERS = {"anonymous": 401, "other": 403, "other_agent": 403}


def _sim(suffix: str = "") -> Callable:
    return lambda world: f"/simulations/{world.simulation.pk}{suffix}"


OPERATIONS = [
    # --- the fleet: staff only
    Operation(
        "machine create",
        _http("post", lambda w: "/machines/", lambda w: {"name": "new", "cpu": "c", "memory": 8}),
        {**STAFF_ONLY, "staff": 201},
    ),
    Operation(
        "machine update",
        _http("put", lambda w: f"/machines/{w.machine_a.pk}", _machine_put_body),
        {**STAFF_ONLY, "staff": 200},
    ),
    Operation(
        "machine patch",
        _http("patch", lambda w: f"/machines/{w.machine_a.pk}", lambda w: {"hourly_cost": "42"}),
        {**STAFF_ONLY, "staff": 200},
    ),
    Operation(
        "machine status",
        _http(
            "patch",
            lambda w: f"/machines/{w.machine_a.pk}/status",
            lambda w: {"status": "maintenance"},
        ),
        {**STAFF_ONLY, "staff": 200},
    ),
    Operation(
        "machine delete",
        _http("delete", lambda w: f"/machines/{w.machine_b.pk}"),
        {**STAFF_ONLY, "staff": 204},
    ),
    # --- simulations: people create; the owner or staff change and delete
    Operation(
        "simulation create",
        _http("post", lambda w: "/simulations/", lambda w: {"name": "new"}),
        {**PEOPLE, "other": 201, "owner": 201, "staff": 201},
    ),
    Operation(
        "simulation create-bare-sql",
        _http(
            "post",
            lambda w: f"/simulations/{w.machine_b.pk}/create-bare-sql",
            lambda w: {"name": "new"},
        ),
        {**PEOPLE, "other": 201, "owner": 201, "staff": 201},
    ),
    Operation(
        "simulation update",
        _http("put", _sim(), lambda w: {"name": "renamed", "priority": 1000}),
        {**OWNER_OR_STAFF, "owner": 200, "staff": 200},
    ),
    Operation(
        "simulation patch",
        _http("patch", _sim(), lambda w: {"priority": 1000}),
        {**OWNER_OR_STAFF, "owner": 200, "staff": 200},
    ),
    Operation(
        "simulation status",
        _http("patch", _sim(), lambda w: {"status": "cancelled"}),
        {**OWNER_OR_STAFF, "owner": 200, "staff": 200},
    ),
    Operation(
        "simulation status running",
        _http("patch", _sim(), lambda w: {"status": "running"}),
        {**OWNER_OR_STAFF, "owner": 200, "staff": 200},
    ),
    Operation(
        "simulation cancel",
        _http("post", _sim("/cancel")),
        {**OWNER_OR_STAFF, "owner": 200, "staff": 200},
    ),
    Operation(
        "simulation delete",
        _http("delete", lambda w: f"/simulations/{w.pending.pk}"),
        {**OWNER_OR_STAFF, "owner": 204, "staff": 204},
    ),
    Operation(
        "simulated run",
        lambda world, client, user: _simulated_run(world, user),
        {
            "anonymous": 4401,
            "other": 4403,
            "owner": 200,
            "staff": 200,
            "own_agent": 4403,
            "other_agent": 4403,
        },
    ),
    # --- the agent endpoints: the agent of the simulation's machine (or staff)
    Operation(
        "agent start",
        _http("post", _sim("/start")),
        {**AGENT_OR_STAFF, "own_agent": 200, "staff": 200},
    ),
    Operation(
        "agent heartbeat",
        _http("post", _sim("/heartbeat")),
        {**AGENT_OR_STAFF, "own_agent": 200, "staff": 200, "other_agent": 200},
        succeeds_without_change=frozenset({"other_agent"}),
    ),
    Operation(
        "agent finish",
        _http("post", _sim("/finish")),
        {**AGENT_OR_STAFF, "own_agent": 200, "staff": 200},
        prepare=_start,
    ),
    Operation(
        "agent fail",
        _http("post", _sim("/fail"), lambda w: {"reason": "boom"}),
        {**AGENT_OR_STAFF, "own_agent": 200, "staff": 200},
        prepare=_start,
    ),
    Operation(
        "agent claim",
        _http("post", lambda w: "/agent/claim"),
        {**STAFF_ONLY, "staff": 403, "own_agent": 200, "other_agent": 204},
        succeeds_without_change=frozenset({"other_agent"}),
    ),
    # --- point writes: the agent of its machine, its owner, or staff
    Operation(
        "points data",
        _http("post", lambda w: "/convergence/data", _point),
        {**REPORTERS, "owner": 201, "staff": 201, "own_agent": 201},
    ),
    Operation(
        "points add-bare-sql",
        _http(
            "post",
            lambda w: f"/convergence/{w.simulation.pk}/add-bare-sql",
            lambda w: {"step": 0, "loss_value": 1.5},
        ),
        {**REPORTERS, "owner": 201, "staff": 201, "own_agent": 201},
    ),
    Operation(
        "points batch",
        _http(
            "post",
            lambda w: f"/convergence/{w.simulation.pk}/points",
            lambda w: {"points": [{"step": 0, "loss_value": 1.5}]},
        ),
        {**REPORTERS, "owner": 200, "staff": 200, "own_agent": 200},
    ),
]

ROWS = [(operation, actor) for operation in OPERATIONS for actor in ACTORS]


def test_the_table_covers_every_operation_for_every_actor():
    assert all(set(operation.expected) == set(ACTORS) for operation in OPERATIONS)


@pytest.mark.parametrize(
    ("operation", "actor"), ROWS, ids=[f"{op.name} as {actor}" for op, actor in ROWS]
)
def test_permission_table(operation, actor):
    world = _build_world()
    if operation.prepare:
        operation.prepare(world)
    user = world.users[actor]
    before = _snapshot(world)

    status = operation.call(world, _client(user), user)

    assert status == operation.expected[actor]
    after = _snapshot(world)
    if 200 <= status < 300 and actor not in operation.succeeds_without_change:
        assert after != before, "an allowed write changed nothing"
    else:
        assert after == before, "a refused call changed something"
