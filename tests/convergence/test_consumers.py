"""The live sockets: WS /ws/convergence/{id}, WS /ws/convergence/{id}/run and WS /ws/fleet.

Everything goes through `simsched.asgi.application` and the configured channel layer (in-memory
without REDIS_URL, Redis with it); writes go through the HTTP API, as agents' do. Timeouts are
generous: these tests wait for messages, they do not time them.
"""

from datetime import datetime, timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from convergence.models import ConvergencePoint
from simsched.asgi import application
from simulations import services as simulation_services
from simulations.models import Simulation
from tests.convergence.conftest import BASE_TIME, store_points
from tests.factories import agent_client, make_machine, make_simulation

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10
QUIET = 0.5  # how long "no further message" is listened for

SIMULATION_KEYS = {
    "id",
    "name",
    "status",
    "priority",
    "machine",
    "machine_name",
    "scheduled_at",
    "started_at",
    "finished_at",
    "failure_reason",
    # what stopped it (simulations/guards.py) and a preemption under way
    "stopped_by",
    "stop_step",
    "stop_reason",
    "saved_hours",
    "saved_cost",
    "preempting",
}


def untimed(points: list[dict]) -> list[dict]:
    """Live points without their `timestamp`, after checking each carries a stored time."""
    for point in points:
        assert datetime.fromisoformat(point["timestamp"]).tzinfo is not None, point
    return [{k: v for k, v in point.items() if k != "timestamp"} for point in points]


def db(function, *args, **kwargs):
    """Run a blocking call (ORM, APIClient) from the test's event loop."""
    return database_sync_to_async(function)(*args, **kwargs)


@pytest.fixture
def auth(user):
    token, _ = Token.objects.get_or_create(user=user)
    return [(b"authorization", f"Token {token.key}".encode())]


async def open_socket(path: str, auth) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=auth)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def open_viewer(simulation_id: int, auth) -> tuple[WebsocketCommunicator, dict]:
    communicator = await open_socket(f"/ws/convergence/{simulation_id}", auth)
    snapshot = await communicator.receive_json_from(timeout=TIMEOUT)
    assert snapshot["type"] == "snapshot", snapshot
    return communicator, snapshot


async def close_code(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def next_of_type(communicator, kind: str) -> dict:
    """The next message of `kind`, skipping others (status echoes of unrelated changes)."""
    while True:
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        if message["type"] == kind:
            return message


async def statuses_until(communicator, final: str) -> list[str]:
    seen: list[str] = []
    while not seen or seen[-1] != final:
        seen.append((await next_of_type(communicator, "status"))["status"])
    return seen


def post(api, url: str, body=None):
    return db(api.post, url, body or {}, format="json")


# --- Snapshot -------------------------------------------------------------------------------


def at(step: int) -> str:
    """The ISO time `store_points` gave `step`, as the snapshot sends it."""
    return (BASE_TIME + timedelta(seconds=step)).isoformat()


async def test_the_first_message_is_a_snapshot_of_the_history(auth, simulation):
    await db(store_points, simulation.pk, {step: 1.0 / (step + 1) for step in range(10)})

    viewer, snapshot = await open_viewer(simulation.pk, auth)

    assert set(snapshot["simulation"]) == SIMULATION_KEYS
    assert snapshot["simulation"]["id"] == simulation.pk
    assert snapshot["simulation"]["status"] == "pending"
    assert snapshot["points"] == [
        {"step": s, "loss": 1.0 / (s + 1), "timestamp": at(s)} for s in range(10)
    ]
    assert snapshot["raw_points"] == 10
    assert snapshot["downsampled"] is False
    assert snapshot["last_step"] == 9
    await viewer.disconnect()


async def test_a_large_history_arrives_downsampled(auth, simulation):
    await db(store_points, simulation.pk, {step: 1.0 + (step % 97) for step in range(20_000)})

    viewer, snapshot = await open_viewer(simulation.pk, auth)

    assert snapshot["downsampled"] is True
    assert snapshot["raw_points"] == 20_000
    assert 0 < len(snapshot["points"]) < 20_000
    assert snapshot["points"][0] == {"step": 0, "loss": 1.0, "timestamp": at(0)}
    assert snapshot["points"][-1]["step"] == 19_999
    assert snapshot["last_step"] == 19_999
    await viewer.disconnect()


async def test_an_empty_simulation_has_an_empty_snapshot(auth, simulation):
    viewer, snapshot = await open_viewer(simulation.pk, auth)

    assert snapshot["points"] == []
    assert snapshot["raw_points"] == 0
    assert snapshot["downsampled"] is False
    await viewer.disconnect()


async def test_an_unknown_simulation_is_closed_with_4404(auth):
    communicator = await open_socket("/ws/convergence/987654", auth)

    assert await close_code(communicator) == 4404


# --- Points ---------------------------------------------------------------------------------


async def test_a_posted_point_arrives_as_one_points_message(api, auth, simulation):
    viewer, _ = await open_viewer(simulation.pk, auth)

    response = await post(
        api, "/convergence/data", {"simulation_id": simulation.pk, "loss_value": 0.5}
    )
    assert response.status_code == 201

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert {**message, "points": untimed(message["points"])} == {
        "type": "points",
        "simulation_id": simulation.pk,
        "points": [{"step": 0, "loss": 0.5, "metric": "loss"}],
    }
    assert await viewer.receive_nothing(timeout=QUIET)
    await viewer.disconnect()


async def test_a_resent_point_is_not_broadcast_again(api, auth, simulation):
    body = {"simulation_id": simulation.pk, "step": 3, "loss_value": 0.5}
    assert (await post(api, "/convergence/data", body)).status_code == 201
    viewer, snapshot = await open_viewer(simulation.pk, auth)
    [point] = snapshot["points"]
    assert (point["step"], point["loss"]) == (3, 0.5)

    assert (await post(api, "/convergence/data", body)).status_code == 200

    assert await viewer.receive_nothing(timeout=QUIET)
    await viewer.disconnect()


async def test_a_batch_of_500_points_arrives_as_one_message(api, auth, simulation):
    viewer, _ = await open_viewer(simulation.pk, auth)
    points = [{"step": s, "loss_value": 10.0 / (s + 1)} for s in reversed(range(500))]

    response = await post(api, f"/convergence/{simulation.pk}/points", {"points": points})
    assert response.json() == {"stored": 500, "duplicates": 0}

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "points"
    assert message["simulation_id"] == simulation.pk
    assert untimed(message["points"]) == [
        {"step": s, "loss": 10.0 / (s + 1), "metric": "loss"} for s in range(500)
    ]
    assert await viewer.receive_nothing(timeout=QUIET)
    await viewer.disconnect()


async def test_live_points_carry_the_time_they_were_measured(api, auth, simulation):
    viewer, _ = await open_viewer(simulation.pk, auth)
    points = [
        {"step": 1, "values": {"loss": 0.5, "lr": 0.01}, "timestamp": at(1)},
        {"step": 2, "loss_value": 0.4, "timestamp": at(2)},
    ]

    response = await post(api, f"/convergence/{simulation.pk}/points", {"points": points})
    assert response.json() == {"stored": 3, "duplicates": 0}

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert message["points"] == [
        {"step": 1, "loss": 0.5, "timestamp": at(1), "metric": "loss"},
        {"step": 1, "loss": 0.01, "timestamp": at(1), "metric": "lr"},
        {"step": 2, "loss": 0.4, "timestamp": at(2), "metric": "loss"},
    ]
    await viewer.disconnect()


async def test_an_overlapping_batch_broadcasts_only_the_new_points(api, auth, simulation):
    await db(store_points, simulation.pk, {s: 1.0 for s in range(10)})
    viewer, _ = await open_viewer(simulation.pk, auth)
    points = [{"step": s, "loss_value": 1.0} for s in range(5, 15)]

    response = await post(api, f"/convergence/{simulation.pk}/points", {"points": points})
    assert response.json() == {"stored": 5, "duplicates": 5}

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert [p["step"] for p in message["points"]] == [10, 11, 12, 13, 14]
    await viewer.disconnect()


async def test_a_rejected_batch_broadcasts_nothing(api, auth, simulation):
    await db(store_points, simulation.pk, {5: 0.5})
    viewer, _ = await open_viewer(simulation.pk, auth)
    points = [{"step": s, "loss_value": 0.9} for s in range(10)]

    response = await post(api, f"/convergence/{simulation.pk}/points", {"points": points})
    assert response.status_code == 409

    assert await viewer.receive_nothing(timeout=QUIET)
    await viewer.disconnect()


async def test_a_bare_sql_point_is_broadcast(api, auth, simulation):
    viewer, _ = await open_viewer(simulation.pk, auth)

    url = f"/convergence/{simulation.pk}/add-bare-sql"
    response = await post(api, url, {"step": 7, "loss_value": 0.25})
    assert response.status_code == 201

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert {**message, "points": untimed(message["points"])} == {
        "type": "points",
        "simulation_id": simulation.pk,
        "points": [{"step": 7, "loss": 0.25, "metric": "loss"}],
    }
    await viewer.disconnect()


async def test_viewers_of_another_simulation_get_nothing(api, auth, simulation, user):
    other = await db(make_simulation, owner=user)
    viewer, _ = await open_viewer(other.pk, auth)

    body = {"simulation_id": simulation.pk, "loss_value": 0.5}
    assert (await post(api, "/convergence/data", body)).status_code == 201

    assert await viewer.receive_nothing(timeout=QUIET)
    await viewer.disconnect()


# --- Status ---------------------------------------------------------------------------------


async def test_status_changes_arrive_as_status_messages(api, staff_api, auth, simulation):
    viewer, snapshot = await open_viewer(simulation.pk, auth)
    assert snapshot["simulation"]["status"] == "pending"

    machine_body = {
        "name": "h100-box",
        "cpu": "EPYC",
        "gpu": "H100",
        "memory": 512,
        "cpu_cores": 64,
        "gpu_count": 8,
        "hourly_cost": "25.00",
    }
    assert (await post(staff_api, "/machines/", machine_body)).status_code == 201
    scheduled = await next_of_type(viewer, "status")
    assert scheduled["status"] == "scheduled"
    assert scheduled["simulation_id"] == simulation.pk
    assert set(scheduled["simulation"]) == SIMULATION_KEYS
    assert scheduled["simulation"]["machine_name"] == "h100-box"

    machine = await db(lambda: Simulation.objects.get(pk=simulation.pk).machine)
    agent = await db(agent_client, machine)
    assert (await post(agent, f"/simulations/{simulation.pk}/start")).status_code == 200
    assert await statuses_until(viewer, "running") == ["running"]

    assert (await post(agent, f"/simulations/{simulation.pk}/finish")).status_code == 200
    finished = await next_of_type(viewer, "status")
    assert finished["status"] == "finished"
    assert finished["simulation"]["finished_at"] is not None
    await viewer.disconnect()


async def test_a_cancel_arrives_as_a_status_message(api, auth, simulation):
    viewer, _ = await open_viewer(simulation.pk, auth)

    assert (await post(api, f"/simulations/{simulation.pk}/cancel")).status_code == 200

    message = await next_of_type(viewer, "status")
    assert message["status"] == "cancelled"
    assert message["simulation"]["id"] == simulation.pk
    await viewer.disconnect()


# --- Fleet ----------------------------------------------------------------------------------


async def test_the_fleet_socket_receives_machine_and_simulation_updates(api, staff_api, auth):
    fleet = await open_socket("/ws/fleet", auth)
    assert await fleet.receive_json_from(timeout=TIMEOUT) == {"type": "hello"}

    machine_body = {
        "name": "a100-box",
        "cpu": "Xeon",
        "gpu": "A100",
        "memory": 256,
        "cpu_cores": 32,
        "gpu_count": 4,
        "hourly_cost": "12.50",
    }
    machine = (await post(staff_api, "/machines/", machine_body)).json()
    message = await next_of_type(fleet, "machine")
    assert message["machine"]["id"] == machine["id"]
    assert message["machine"]["name"] == "a100-box"
    assert message["machine"]["status"] == "available"

    created = (await post(api, "/simulations/", {"name": "fleet-run"})).json()
    simulation_statuses, machine_statuses = [], []
    while "scheduled" not in simulation_statuses or "busy" not in machine_statuses:
        update = await fleet.receive_json_from(timeout=TIMEOUT)
        if update["type"] == "simulation":
            assert update["simulation"]["id"] == created["id"]
            simulation_statuses.append(update["simulation"]["status"])
        elif update["type"] == "machine":
            assert update["machine"]["id"] == machine["id"]
            machine_statuses.append(update["machine"]["status"])
    assert simulation_statuses[0] in {"pending", "scheduled"}

    assert (await post(api, f"/simulations/{created['id']}/cancel")).status_code == 200
    cancelled = await next_of_type(fleet, "simulation")
    assert cancelled["simulation"]["status"] == "cancelled"
    response = await db(api.delete, f"/simulations/{created['id']}")
    assert response.status_code == 204
    deleted = await next_of_type(fleet, "simulation_deleted")
    assert deleted == {"type": "simulation_deleted", "id": created["id"]}
    await fleet.disconnect()


# --- Simulated run --------------------------------------------------------------------------


async def collect_points(viewer, until_final: str) -> tuple[list[int], list[str]]:
    """Points and statuses a viewer receives until the simulation reaches `until_final`."""
    steps, statuses = [], []
    while not statuses or statuses[-1] != until_final:
        message = await viewer.receive_json_from(timeout=TIMEOUT)
        if message["type"] == "points":
            steps += [p["step"] for p in message["points"]]
        elif message["type"] == "status":
            statuses.append(message["status"])
    return steps, statuses


async def test_a_simulated_run_streams_points_until_its_socket_closes(auth, user, simulation):
    await db(make_machine)
    await db(simulation.refresh_from_db)
    viewer, _ = await open_viewer(simulation.pk, auth)

    run = await open_socket(f"/ws/convergence/{simulation.pk}/run?rate=50", auth)
    started = await run.receive_json_from(timeout=TIMEOUT)
    assert started == {"type": "run", "simulation_id": simulation.pk, "status": "running"}
    assert await db(lambda: Simulation.objects.get(pk=simulation.pk).status) == "running"

    received: list[int] = []
    while len(received) < 25:
        message = await viewer.receive_json_from(timeout=TIMEOUT)
        if message["type"] == "points":
            received += [p["step"] for p in message["points"]]
    await run.disconnect(timeout=TIMEOUT)

    rest, statuses = await collect_points(viewer, "finished")
    received += rest
    assert statuses[-1] == "finished"
    stored = await db(
        lambda: list(
            ConvergencePoint.objects.filter(simulation_id=simulation.pk)
            .order_by("step")
            .values_list("step", flat=True)
        )
    )
    assert received == stored == list(range(len(stored)))
    assert await db(lambda: Simulation.objects.get(pk=simulation.pk).status) == "finished"
    await viewer.disconnect()


async def test_a_finished_simulation_cannot_be_run_again(auth, simulation):
    await db(make_machine)
    await db(simulation.refresh_from_db)
    await db(simulation_services.simulation_start, simulation=simulation)
    await db(simulation_services.simulation_finish, simulation=simulation)

    run = await open_socket(f"/ws/convergence/{simulation.pk}/run?rate=50", auth)

    error = await run.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error"
    assert error["message"]
    assert await close_code(run) == 4409
    assert await db(lambda: Simulation.objects.get(pk=simulation.pk).status) == "finished"


async def test_a_running_simulation_cannot_be_run_from_a_second_socket(auth, simulation):
    await db(make_machine)
    await db(simulation.refresh_from_db)
    await db(simulation_services.simulation_start, simulation=simulation)

    run = await open_socket(f"/ws/convergence/{simulation.pk}/run?rate=50", auth)

    assert (await run.receive_json_from(timeout=TIMEOUT))["type"] == "error"
    assert await close_code(run) == 4409
    assert await db(lambda: Simulation.objects.get(pk=simulation.pk).status) == "running"
    count = await db(ConvergencePoint.objects.filter(simulation_id=simulation.pk).count)
    assert count == 0


async def test_a_run_waiting_for_a_machine_is_refused_with_4409(auth, user):
    simulation = await db(make_simulation, owner=user, required_gpus=10_000)

    run = await open_socket(f"/ws/convergence/{simulation.pk}/run?rate=50", auth)

    error = await run.receive_json_from(timeout=TIMEOUT)
    assert error["type"] == "error"
    assert await close_code(run) == 4409
    assert await db(lambda: Simulation.objects.get(pk=simulation.pk).status) == "pending"


async def test_running_an_unknown_simulation_is_closed_with_4404(auth):
    run = await open_socket("/ws/convergence/987654/run?rate=50", auth)

    assert await close_code(run) == 4404
