"""Who may write a run's points, once its series exist: on PostgreSQL the write checks the
caller's `report_scope` inside its own statement instead of reading the simulation first, so
these cases run where that statement is the whole write."""

import pytest
from rest_framework.test import APIClient

from convergence.models import ConvergencePoint
from simulations.models import Simulation
from tests.convergence.conftest import store_points
from tests.factories import agent_client, make_machine, make_simulation, make_user, token_client

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED = {"staff": 201, "owner": 201, "own_agent": 201, "other": 403, "other_agent": 403}


@pytest.fixture
def world(user):
    machine, elsewhere = make_machine(name="own-box"), make_machine(name="other-box")
    simulation = make_simulation(name="scoped", owner=user)
    Simulation.objects.filter(pk=simulation.pk).update(machine=machine, status="running")
    store_points(simulation.pk, {0: 1.0})
    clients = {
        "staff": token_client(make_user("ops", staff=True)),
        "owner": token_client(user),
        "own_agent": agent_client(machine),
        "other": token_client(make_user("stranger")),
        "other_agent": agent_client(elsewhere),
    }
    return simulation, clients


@pytest.mark.parametrize("actor", sorted(EXPECTED))
@pytest.mark.parametrize("with_step", [True, False], ids=["step", "no-step"])
def test_a_point_write_to_an_existing_series_follows_the_policy(world, actor, with_step):
    simulation, clients = world
    body = {"simulation_id": simulation.pk, "loss_value": 0.5}
    if with_step:
        body["step"] = 7

    response = clients[actor].post("/convergence/data", body, format="json")

    assert response.status_code == EXPECTED[actor], response.content
    stored = ConvergencePoint.objects.filter(simulation=simulation).count()
    assert stored == (2 if EXPECTED[actor] == 201 else 1)
    if EXPECTED[actor] == 403:
        assert response.json()["error"]["code"] == "permission_denied"


def test_an_unknown_simulation_is_a_404_for_everyone(world):
    _, clients = world
    for client in clients.values():
        body = {"simulation_id": 10**12, "step": 0, "loss_value": 0.5}
        assert client.post("/convergence/data", body, format="json").status_code == 404


def test_anonymous_writes_are_401(world):
    simulation, _ = world
    body = {"simulation_id": simulation.pk, "step": 7, "loss_value": 0.5}
    assert APIClient().post("/convergence/data", body, format="json").status_code == 401
