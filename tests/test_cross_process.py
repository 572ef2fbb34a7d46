"""Two daphne processes share the database and Redis: a viewer connected to one sees a point
written through the other, as behind a load balancer."""

import json

import pytest
from django.conf import settings
from django.db import connection
from websockets.sync.client import connect

from tests.convergence.test_consumers import untimed
from tests.factories import make_machine, make_simulation, make_user
from tests.security.helpers import token_key
from tests.servers import database_url, http, start_daphne

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def two_servers(transactional_db):
    layer = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": layer["hosts"][0],
        "REDIS_PREFIX": layer["prefix"],
    }
    servers = []
    try:
        servers = [start_daphne(env), start_daphne(env)]
        yield servers
    finally:
        for server in servers:
            server.stop()


def _next_message(ws, wanted: str) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] == wanted:
            return message


def test_a_viewer_on_one_server_sees_a_point_posted_to_the_other(two_servers):
    viewer_side, writer_side = two_servers
    owner = make_user("cross-owner")
    make_machine()
    simulation = make_simulation(owner=owner)
    token = token_key(owner)
    url = f"{viewer_side.ws_url}/ws/convergence/{simulation.pk}"
    with connect(url, additional_headers={"Authorization": f"Token {token}"}) as ws:
        assert _next_message(ws, "snapshot")["raw_points"] == 0
        posted = http(
            "POST",
            f"{writer_side.url}/convergence/data",
            token=token,
            body={"simulation_id": simulation.pk, "step": 0, "loss_value": 0.75},
        )
        assert posted.status == 201, posted.body
        live = _next_message(ws, "points")
    assert {**live, "points": untimed(live["points"])} == {
        "type": "points",
        "simulation_id": simulation.pk,
        "points": [{"step": 0, "loss": 0.75, "metric": "loss"}],
    }


def test_a_fleet_viewer_on_one_server_sees_a_simulation_created_on_the_other(two_servers):
    viewer_side, writer_side = two_servers
    token = token_key(make_user("cross-engineer"))
    with connect(
        f"{viewer_side.ws_url}/ws/fleet", additional_headers={"Authorization": f"Token {token}"}
    ) as ws:
        assert _next_message(ws, "hello") == {"type": "hello"}
        created = http("POST", f"{writer_side.url}/simulations/", token=token, body={"name": "x"})
        assert created.status == 201, created.body
        event = _next_message(ws, "simulation")
    assert event["simulation"]["id"] == created.json()["id"]
